//! Parameter groups, clipping under autodiff, token-weighted accumulation, registry errors and
//! schedule records.
#![allow(clippy::unwrap_used)]

use burn::lr_scheduler::LrScheduler;
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use lmflow_optim::Error;
use lmflow_optim::clip::{NormType, clip_grad_norm, grad_norm};
use lmflow_optim::groups::ParamGroupsConfig;
use lmflow_optim::registry::{OPTIMIZER_NAMES, OptimizerConfig};
use lmflow_optim::schedule::{ScheduleConfig, ScheduleKind};

#[derive(Module, Debug)]
struct Lin {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
struct Norm {
    gamma: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
struct Net {
    attn: Lin,
    norm: Norm,
    lora_b: Lin,
}

fn lin(device: &Device, seed: f32) -> Lin {
    Lin {
        weight: Param::from_data(
            TensorData::new((0..6).map(|i| seed + i as f32 * 0.1).collect(), [2, 3]),
            device,
        ),
        bias: Param::from_data(TensorData::new(vec![seed, -seed], [2]), device),
    }
}

fn net(device: &Device) -> Net {
    Net {
        attn: lin(device, 0.5),
        norm: Norm {
            gamma: Param::from_data(TensorData::new(vec![1.0f32, 1.0, 1.0], [3]), device),
        },
        lora_b: lin(device, -0.3),
    }
}

fn vals<const D: usize>(p: &Param<Tensor<D>>) -> Vec<f32> {
    p.val().into_data().try_to_vec::<f32>().expect("f32")
}

/// Gradients of `sum(x @ W^T + b)` and `sum(gamma)`: every gradient is known in closed form.
fn backward(net: &Net) -> GradientsParams {
    let device = net.attn.weight.val().device();
    let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [1, 3]), &device);
    let out = |l: &Lin| {
        (x.clone().matmul(l.weight.val().transpose()) + l.bias.val().unsqueeze::<2>()).sum()
    };
    let loss = out(&net.attn) + out(&net.lora_b) + net.norm.gamma.val().sum();
    GradientsParams::from_grads(loss.backward(), net)
}

#[test]
fn no_decay_for_biases_and_norm_weights() {
    let device = Device::flex().autodiff();
    let model = net(&device);
    let before = (
        vals(&model.attn.weight),
        vals(&model.attn.bias),
        vals(&model.norm.gamma),
    );
    let cfg = OptimizerConfig::from_json(r#"{"name": "dummy", "lr": 0.1, "weight_decay": 0.5}"#)
        .expect("config");
    let mut optim = cfg
        .build_with_groups(&ParamGroupsConfig::default())
        .expect("build");
    let grads = backward(&model);
    let model = optim.step(0.1, model, grads);
    // Decayed: weight * (1 - lr * wd); excluded: unchanged.
    for (a, b) in vals(&model.attn.weight).iter().zip(&before.0) {
        assert!((a - b * 0.95).abs() < 1e-6, "{a} vs {}", b * 0.95);
    }
    assert_eq!(vals(&model.attn.bias), before.1);
    assert_eq!(vals(&model.norm.gamma), before.2);

    let groups = ParamGroupsConfig::default();
    assert!(
        groups
            .is_no_decay("layers.0.input_layernorm.weight")
            .expect("regex")
    );
    assert!(groups.is_no_decay("model.norm.weight").expect("regex"));
    assert!(groups.is_no_decay("h.0.ln_1.gamma").expect("regex"));
    assert!(groups.is_no_decay("attn.q_proj.bias").expect("regex"));
    assert!(
        !groups
            .is_no_decay("layers.0.mlp.down_proj.weight")
            .expect("regex")
    );
    assert!(
        !groups
            .is_no_decay("model.normalizer_proj.weight")
            .expect("regex")
    );
}

#[test]
fn lora_plus_ratio_scales_the_b_matrices() {
    let device = Device::flex().autodiff();
    let model = net(&device);
    let attn_before = vals(&model.attn.weight);
    let b_before = vals(&model.lora_b.weight);
    let cfg = OptimizerConfig::from_json(r#"{"name": "sgd", "lr": 0.01, "weight_decay": 0.1}"#)
        .expect("config");
    let mut optim = cfg
        .build_with_groups(&ParamGroupsConfig::default().with_lora_plus(4.0))
        .expect("build");
    let grads = backward(&model);
    let model = optim.step(0.01, model, grads);
    // d loss / dW = x for every row; SGD with L2 decay: W -= lr * ratio * (x + wd * W).
    let x = [1.0f32, 2.0, 3.0];
    for (ratio, before, after) in [
        (1.0f32, attn_before, vals(&model.attn.weight)),
        (4.0, b_before, vals(&model.lora_b.weight)),
    ] {
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let expected = b - 0.01 * ratio * (x[i % 3] + 0.1 * b);
            assert!(
                (a - expected).abs() < 1e-6,
                "ratio {ratio}: {a} vs {expected}"
            );
        }
    }
    // The B bias is in the LoRA+ group but excluded from decay.
    let bias = vals(&model.lora_b.bias);
    assert!((bias[0] - (-0.3 - 0.04)).abs() < 1e-6, "{bias:?}");
}

#[test]
fn clipping_under_autodiff_returns_the_pre_clip_norm() {
    let device = Device::flex().autodiff();
    let model = net(&device);
    let mut grads = backward(&model);
    // Gradients: two [2,3] weights with rows x = (1, 2, 3), two biases of ones, gamma of ones.
    let expected = (2.0f64 * 2.0 * 14.0 + 4.0 + 3.0).sqrt();
    let norm = clip_grad_norm(&model, &mut grads, 1.0, NormType::P(2.0)).expect("clip");
    assert!(
        (norm - expected).abs() < 1e-4 * expected,
        "{norm} vs {expected}"
    );
    let after = grad_norm(&model, &grads, NormType::P(2.0));
    assert!((after - 1.0).abs() < 1e-4, "clipped norm {after}");
    assert!(clip_grad_norm(&model, &mut grads, 1.0, NormType::P(0.0)).is_err());
}

#[test]
fn registry_errors_name_the_problem() {
    match OptimizerConfig::from_json(r#"{"name": "adamm"}"#) {
        Err(Error::UnknownOptimizer { name, supported }) => {
            assert_eq!(name, "adamm");
            for n in OPTIMIZER_NAMES {
                assert!(supported.contains(n));
            }
        }
        other => panic!("expected an unknown-name error, got {other:?}"),
    }
    let err = OptimizerConfig::from_json(r#"{"name": "yogi", "betaz": [0.9, 0.9]}"#)
        .expect_err("unknown field");
    assert!(err.to_string().contains("betaz"), "{err}");
    // Every listed name builds with its defaults.
    for name in OPTIMIZER_NAMES {
        let cfg = OptimizerConfig::from_json(&format!(r#"{{"name": "{name}"}}"#)).expect(name);
        assert_eq!(cfg.name(), *name);
        cfg.build().expect(name);
    }
    for bad in [
        r#"{"name": "adabound", "lr": 0.0}"#,
        r#"{"name": "sgd_schedule_free", "momentum": 0.0}"#,
        r#"{"name": "adamw", "lr": -1.0}"#,
    ] {
        let cfg = OptimizerConfig::from_json(bad).expect("parses");
        assert!(cfg.build().is_err(), "{bad} should be rejected");
    }
    let cfg = OptimizerConfig::from_json(r#"{"name": "sophiag"}"#).expect("sophia");
    assert_eq!(cfg.lr(), 1e-4);
    let mut built = OptimizerConfig::from_json(r#"{"name": "adamw"}"#)
        .expect("adamw")
        .build()
        .expect("build");
    let device = Device::flex().autodiff();
    let model = net(&device);
    let grads = backward(&model);
    assert!(built.update_hessian(model, grads).is_err());
}

#[test]
fn schedule_config_errors_and_record() {
    let err = ScheduleConfig::from_json(r#"{"name": "cosinus"}"#).expect_err("bad name");
    assert!(err.to_string().contains("cosine_with_restarts"), "{err}");
    let wsd = ScheduleConfig::from_json(r#"{"name": "warmup_stable_decay"}"#).expect("parse");
    assert!(wsd.init(1e-3, 10).is_err());
    let poly = ScheduleConfig::from_json(r#"{"name": "polynomial", "lr_end": 0.1}"#).expect("p");
    assert!(poly.init(1e-3, 10).is_err());

    let mut cfg = ScheduleConfig::new(ScheduleKind::Linear);
    cfg.warmup_ratio = Some(0.1);
    let mut schedule = cfg.init(1.0, 20).expect("linear");
    assert_eq!(schedule.warmup_steps(), 2);
    let first: Vec<f64> = (0..5).map(|_| schedule.step()).collect();
    assert_eq!(first, vec![0.0, 0.5, 1.0, 17.0 / 18.0, 16.0 / 18.0]);
    let record = schedule.to_record();
    let mut resumed = cfg.init(1.0, 20).expect("linear");
    resumed.load_record(record);
    assert_eq!(resumed.step(), schedule.step());
}
