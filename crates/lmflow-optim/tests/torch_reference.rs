//! Optimizer trajectories, schedules and clipping against the PyTorch fixtures written by
//! `tests/fixtures/optim.py`.
#![allow(clippy::unwrap_used)]

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use lmflow_optim::clip::{NormType, clip_grad_norm};
use lmflow_optim::registry::{BuiltOptimizer, OptimizerConfig};
use lmflow_optim::schedule::ScheduleConfig;
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/optim/");
/// Relative tolerance (f32); values below 1 in magnitude are compared absolutely.
const TOL: f32 = 1e-5;

#[derive(Module, Debug)]
struct Toy {
    w: Param<Tensor<2>>,
    b: Param<Tensor<1>>,
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}{name}")).expect("fixture file");
    serde_json::from_str(&text).expect("fixture json")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn toy(init: &Value, device: &Device) -> Toy {
    Toy {
        w: Param::from_data(TensorData::new(floats(&init[0]), [3, 4]), device),
        b: Param::from_data(TensorData::new(floats(&init[1]), [4]), device),
    }
}

fn grads(toy: &Toy, g: &Value) -> GradientsParams {
    let device = Device::flex();
    let mut grads = GradientsParams::new();
    grads.register(
        toy.w.id,
        Tensor::<2>::from_data(TensorData::new(floats(&g[0]), [3, 4]), &device),
    );
    grads.register(
        toy.b.id,
        Tensor::<1>::from_data(TensorData::new(floats(&g[1]), [4]), &device),
    );
    grads
}

fn values(toy: &Toy) -> [Vec<f32>; 2] {
    [
        toy.w.val().into_data().try_to_vec::<f32>().expect("f32"),
        toy.b.val().into_data().try_to_vec::<f32>().expect("f32"),
    ]
}

/// Largest error scaled by `max(1, |expected|)`.
fn max_err(actual: &[Vec<f32>; 2], expected: &Value) -> f32 {
    let mut worst = 0f32;
    for (a, e) in actual
        .iter()
        .zip([floats(&expected[0]), floats(&expected[1])])
    {
        assert_eq!(a.len(), e.len());
        for (x, y) in a.iter().zip(e) {
            let err = (x - y).abs() / y.abs().max(1.0);
            worst = worst.max(if err.is_nan() { f32::INFINITY } else { err });
        }
    }
    worst
}

fn build(case: &Value) -> BuiltOptimizer {
    let mut cfg = case["config"].clone();
    cfg["lr"] = case["lr"].clone();
    OptimizerConfig::from_value(cfg)
        .expect("registry config")
        .build()
        .expect("build")
}

/// Runs steps `range` of a case, returning the worst error against the trajectory.
fn run_steps(
    case: &Value,
    optim: &mut BuiltOptimizer,
    mut model: Toy,
    range: std::ops::Range<usize>,
) -> (Toy, f32) {
    let lr = case["lr"].as_f64().expect("lr");
    let mut worst = 0f32;
    for step in range {
        let g = grads(&model, &case["grads"][step]);
        model = optim.step(lr, model, g);
        for h in case["hessian_updates"].as_array().expect("array") {
            if h["after_step"].as_u64() == Some(step as u64) {
                let g = grads(&model, &h["grads"]);
                model = optim.update_hessian(model, g).expect("hessian");
            }
        }
        worst = worst.max(max_err(&values(&model), &case["trajectory"][step]));
    }
    (model, worst)
}

#[test]
fn optimizer_trajectories_match_pytorch() {
    let device = Device::flex().autodiff();
    let cases = load("optimizers.json");
    let mut failures = Vec::new();
    for case in cases.as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let mut optim = build(case);
        let (model, worst) = run_steps(case, &mut optim, toy(&case["init"], &device), 0..20);
        if worst > TOL {
            failures.push(format!("{name}: {worst:e}"));
        }
        if case["eval_params"].is_array() {
            let x = optim.eval_params(model);
            let err = max_err(&values(&x), &case["eval_params"]);
            if err > TOL {
                failures.push(format!("{name} eval point: {err:e}"));
            }
            let y = optim.train_params(x);
            let err = max_err(&values(&y), &case["trajectory"][19]);
            if err > TOL {
                failures.push(format!("{name} back to train point: {err:e}"));
            }
        }
    }
    assert!(failures.is_empty(), "trajectories differ: {failures:#?}");
}

#[test]
fn optimizer_state_resumes_exactly() {
    let device = Device::flex().autodiff();
    let cases = load("optimizers.json");
    for case in cases.as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let mut optim = build(case);
        let (model, _) = run_steps(case, &mut optim, toy(&case["init"], &device), 0..10);
        let bytes = optim.optimizer.into_bytes().expect("save");
        let mut restored = build(case);
        restored.optimizer = restored.optimizer.from_bytes(bytes).expect("load");
        let (continued, _) = run_steps(case, &mut optim, model.clone(), 10..20);
        let (resumed, worst) = run_steps(case, &mut restored, model, 10..20);
        assert_eq!(
            values(&continued),
            values(&resumed),
            "{name}: resumed run differs from the uninterrupted one"
        );
        assert!(
            worst <= TOL,
            "{name}: resumed run is off the reference ({worst:e})"
        );
    }
}

#[test]
fn schedules_match_get_scheduler() {
    for case in load("schedules.json").as_array().expect("cases") {
        let cfg = ScheduleConfig::from_json(&case["config"].to_string()).expect("schedule config");
        let lr = case["lr"].as_f64().expect("lr");
        let total = case["num_training_steps"].as_u64().expect("steps") as usize;
        let schedule = cfg.init(lr, total).expect("schedule");
        for (step, expected) in case["lrs"].as_array().expect("lrs").iter().enumerate() {
            let expected = expected.as_f64().expect("lr");
            let actual = schedule.lr(step);
            assert!(
                (actual - expected).abs() <= 1e-12 + 1e-9 * expected.abs(),
                "{}: step {step}: {actual} != {expected}",
                case["config"]
            );
        }
    }
}

#[test]
fn global_norm_clipping_matches_clip_grad_norm() {
    let device = Device::flex().autodiff();
    for case in load("clipping.json").as_array().expect("cases") {
        let model = toy(&serde_json::json!([vec![0.0; 12], vec![0.0; 4]]), &device);
        let mut g = grads(&model, &case["grads"]);
        let norm_type = match &case["norm_type"] {
            Value::String(s) if s == "inf" => NormType::Inf,
            v => NormType::P(v.as_f64().expect("norm type")),
        };
        let max_norm = case["max_norm"].as_f64().expect("max norm");
        let total = clip_grad_norm(&model, &mut g, max_norm, norm_type).expect("clip");
        let expected = case["total_norm"].as_f64().expect("total");
        assert!(
            (total - expected).abs() <= 1e-5 * expected,
            "{norm_type:?}: {total} != {expected}"
        );
        let clipped = [
            g.get::<2>(model.w.id)
                .expect("w grad")
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32"),
            g.get::<1>(model.b.id)
                .expect("b grad")
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32"),
        ];
        let err = max_err(&clipped, &case["clipped"]);
        assert!(err <= TOL, "{norm_type:?} max_norm {max_norm}: {err:e}");
    }
}

/// 8-bit AdamW against the f32 `torch.optim.AdamW` trajectory: the quantised moments keep the
/// parameters within a few percent of the displacement, and the state resumes exactly.
#[test]
fn adamw_8bit_tracks_f32_adamw() {
    let device = Device::flex().autodiff();
    let cases = load("optimizers.json");
    let case = cases
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == "adamw")
        .expect("adamw case");
    let mut eight_bit = case.clone();
    eight_bit["config"] = serde_json::json!({
        "name": "adamw_8bit", "weight_decay": 0.1, "block_size": 4, "min_8bit_size": 0
    });
    let mut optim = build(&eight_bit);
    let init = toy(&case["init"], &device);
    let start = values(&init);
    let (model, _) = run_steps(&eight_bit, &mut optim, init, 0..20);
    let end = values(&model);
    let reference = [
        floats(&case["trajectory"][19][0]),
        floats(&case["trajectory"][19][1]),
    ];
    let mut moved = 0f32;
    let mut off = 0f32;
    for t in 0..2 {
        for ((s, e), r) in start[t].iter().zip(&end[t]).zip(&reference[t]) {
            moved += (r - s).powi(2);
            off += (e - r).powi(2);
        }
    }
    let relative = (off / moved).sqrt();
    assert!(relative < 0.05, "8-bit AdamW is {relative} off f32 AdamW");
    eprintln!("8-bit AdamW relative deviation from f32 AdamW: {relative}");
    assert!(relative > 0.0, "the state is not quantised");

    // Exact resume of the quantised state.
    let mut optim = build(&eight_bit);
    let (model, _) = run_steps(&eight_bit, &mut optim, toy(&case["init"], &device), 0..10);
    let bytes = optim.optimizer.into_bytes().expect("save");
    let mut restored = build(&eight_bit);
    restored.optimizer = restored.optimizer.from_bytes(bytes).expect("load");
    let (a, _) = run_steps(&eight_bit, &mut optim, model.clone(), 10..20);
    let (b, _) = run_steps(&eight_bit, &mut restored, model, 10..20);
    assert_eq!(values(&a), values(&b));
}
