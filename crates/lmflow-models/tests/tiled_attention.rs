//! Tiled attention (`attention_tiled`) equals the materialised path (output and the gradients of
//! queries, keys and values within 1e-5 in f32) for causal, padding (left and right), sliding
//! window, packed segments, cached positions, grouped-query heads and tile sizes that do not
//! divide the length; a whole LoRA model gives the same loss and gradients with and without it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_models::attention::{MaskSpec, attention_bias, scaled_dot_product_attention};
use lmflow_models::attention_tiled::{AttentionImpl, TiledMask, tiled_attention};
use lmflow_models::{CausalLm, ForwardInput, ModelConfig};
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model};

/// Deterministic values in about [-1.5, 1.5].
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) as f32 / (1u64 << 31) as f32) * 3.0 - 1.5
        })
        .collect()
}

fn tensor(dims: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    Tensor::from_data(
        TensorData::new(values(dims.iter().product(), seed), dims),
        device,
    )
}

fn ints(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let (b, n) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat(), [b, n]), device)
}

fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    a.sub(b).abs().max().into_scalar::<f32>()
}

struct Case {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    past: usize,
    head_dim: usize,
    mask: Option<Vec<Vec<i64>>>,
    segments: Option<Vec<Vec<i64>>>,
    window: Option<usize>,
    tiles: (usize, usize),
}

impl Case {
    fn new(seq: usize, tiles: (usize, usize)) -> Self {
        Self {
            batch: 1,
            heads: 2,
            kv_heads: 2,
            seq,
            past: 0,
            head_dim: 8,
            mask: None,
            segments: None,
            window: None,
            tiles,
        }
    }
}

fn check(case: &Case) {
    let device = Device::flex().autodiff();
    let kv = case.past + case.seq;
    let (b, d) = (case.batch, case.head_dim);
    let q_dims = [b, case.heads, case.seq, d];
    let kv_dims = [b, case.kv_heads, kv, d];
    let scale = (d as f64).powf(-0.5);
    let mask = case.mask.as_ref().map(|m| ints(m, &device));
    let segments = case.segments.as_ref().map(|s| ints(s, &device));
    let weight = tensor(q_dims, 7, &device);

    let run = |tiled: bool| {
        let q = tensor(q_dims, 1, &device).require_grad();
        let k = tensor(kv_dims, 2, &device).require_grad();
        let v = tensor(kv_dims, 3, &device).require_grad();
        let out = if tiled {
            let spec = TiledMask::new(b, case.seq, case.past, mask.as_ref(), segments.as_ref())
                .unwrap()
                .with_tiles(case.tiles.0, case.tiles.1);
            tiled_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                &Arc::new(spec),
                case.window,
                scale,
            )
            .unwrap()
        } else {
            let spec = MaskSpec {
                attention_mask: mask.as_ref(),
                segment_ids: segments.as_ref(),
                sliding_window: case.window,
            };
            let bias = attention_bias(b, case.seq, case.past, &spec, &device).unwrap();
            scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), Some(&bias), scale)
        };
        let grads = out.clone().mul(weight.clone()).sum().backward();
        (
            out.inner(),
            q.grad(&grads).unwrap(),
            k.grad(&grads).unwrap(),
            v.grad(&grads).unwrap(),
        )
    };
    let (o1, dq1, dk1, dv1) = run(false);
    let (o2, dq2, dk2, dv2) = run(true);
    for (what, a, b) in [
        ("output", o1, o2),
        ("dq", dq1, dq2),
        ("dk", dk1, dk2),
        ("dv", dv1, dv2),
    ] {
        let diff = max_diff(a, b);
        assert!(diff < 1e-5, "{what} differs by {diff}");
    }
}

#[test]
fn causal_with_tiles_that_do_not_divide_the_length() {
    check(&Case::new(37, (8, 5)));
    check(&Case::new(37, (64, 64)));
    check(&Case::new(37, (1, 3)));
}

#[test]
fn grouped_query_heads() {
    let mut case = Case::new(40, (16, 12));
    case.heads = 6;
    case.kv_heads = 2;
    case.batch = 2;
    check(&case);
}

#[test]
fn padding_left_and_right() {
    // Row 0 left-padded (its first queries attend to nothing: uniform, as transformers),
    // row 1 right-padded.
    let n = 23;
    let mut case = Case::new(n, (6, 7));
    case.batch = 2;
    case.heads = 4;
    case.kv_heads = 2;
    case.mask = Some(vec![
        (0..n).map(|i| i64::from(i >= 5)).collect(),
        (0..n).map(|i| i64::from(i < 17)).collect(),
    ]);
    check(&case);
    // Right padding only: tiles above the diagonal are skipped.
    case.mask = Some(vec![
        (0..n).map(|i| i64::from(i < 20)).collect(),
        (0..n).map(|i| i64::from(i < 11)).collect(),
    ]);
    check(&case);
}

#[test]
fn sliding_window() {
    let mut case = Case::new(50, (8, 8));
    case.window = Some(7);
    check(&case);
    case.window = Some(16);
    case.tiles = (5, 9);
    case.mask = Some(vec![(0..50).map(|i| i64::from(i < 45)).collect()]);
    check(&case);
}

#[test]
fn packed_segments_with_padding() {
    let n = 30;
    let mut case = Case::new(n, (7, 6));
    case.batch = 2;
    case.segments = Some(vec![
        (0..n as i64).map(|i| i / 9).collect(),
        (0..n as i64)
            .map(|i| i64::from(i >= 4) + i64::from(i >= 20))
            .collect(),
    ]);
    case.mask = Some(vec![
        vec![1; n],
        (0..n).map(|i| i64::from(i < 26)).collect(),
    ]);
    check(&case);
}

#[test]
fn cached_positions() {
    let mut case = Case::new(9, (4, 5));
    case.past = 6;
    case.heads = 4;
    case.kv_heads = 1;
    check(&case);
    case.mask = Some(vec![(0..15).map(|i| i64::from(i != 2)).collect()]);
    check(&case);
}

#[test]
fn without_autodiff_the_output_is_the_same() {
    let device = Device::flex();
    let (q_dims, kv_dims) = ([1, 4, 33, 8], [1, 2, 33, 8]);
    let (q, k, v) = (
        tensor(q_dims, 1, &device),
        tensor(kv_dims, 2, &device),
        tensor(kv_dims, 3, &device),
    );
    let spec = TiledMask::new(1, 33, 0, None, None)
        .unwrap()
        .with_tiles(10, 4);
    let tiled =
        tiled_attention(q.clone(), k.clone(), v.clone(), &Arc::new(spec), None, 0.3).unwrap();
    let bias = attention_bias(1, 33, 0, &MaskSpec::default(), &device).unwrap();
    let eager = scaled_dot_product_attention(q, k, v, Some(&bias), 0.3);
    assert!(max_diff(tiled, eager) < 1e-5);
}

#[test]
fn bf16_inputs_compute_in_f32_and_keep_their_dtype() {
    use burn::tensor::FloatDType;
    let device = Device::flex().autodiff();
    let (q_dims, kv_dims) = ([1, 4, 40, 8], [1, 2, 40, 8]);
    let bf16 = |t: Tensor<4>| t.cast(FloatDType::BF16);
    let mask = ints(&[(0..40).map(|i| i64::from(i < 36)).collect()], &device);
    let run = |tiled: bool| {
        let q = bf16(tensor(q_dims, 1, &device)).require_grad();
        let k = bf16(tensor(kv_dims, 2, &device)).require_grad();
        let v = bf16(tensor(kv_dims, 3, &device)).require_grad();
        let out = if tiled {
            let spec = TiledMask::new(1, 40, 0, Some(&mask), None)
                .unwrap()
                .with_tiles(16, 16);
            tiled_attention(q.clone(), k.clone(), v.clone(), &Arc::new(spec), None, 0.35).unwrap()
        } else {
            let spec = MaskSpec {
                attention_mask: Some(&mask),
                ..MaskSpec::default()
            };
            let bias = attention_bias(1, 40, 0, &spec, &device).unwrap();
            scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), Some(&bias), 0.35)
        };
        let grads = out.clone().cast(FloatDType::F32).sum().backward();
        let dq = q.grad(&grads).unwrap();
        let dv = v.grad(&grads).unwrap();
        (out.inner(), dq, dv)
    };
    let (o1, dq1, dv1) = run(false);
    let (o2, dq2, dv2) = run(true);
    assert_eq!(o2.dtype(), o1.dtype());
    assert_eq!(dq2.dtype(), dq1.dtype());
    let f32 = |t: Tensor<4>| t.cast(FloatDType::F32);
    // bf16 rounding of the materialised path's scores and probabilities (8 mantissa bits).
    assert!(max_diff(f32(o1), f32(o2)) < 3e-2);
    assert!(max_diff(f32(dq1), f32(dq2)) < 5e-2);
    assert!(max_diff(f32(dv1), f32(dv2)) < 5e-2);
}

#[test]
fn shapes_that_do_not_fit_the_mask_are_errors() {
    let device = Device::flex();
    let spec = Arc::new(TiledMask::new(1, 8, 0, None, None).unwrap());
    let q = tensor([1, 3, 8, 4], 1, &device);
    let k = tensor([1, 2, 8, 4], 2, &device);
    let err = tiled_attention(q, k.clone(), k, &spec, None, 1.0).unwrap_err();
    assert!(err.to_string().contains("tiled attention"), "{err}");
    assert!("fast".parse::<AttentionImpl>().is_err());
    assert_eq!(
        "tiled".parse::<AttentionImpl>().unwrap(),
        AttentionImpl::Tiled
    );
}

struct Collect<'a> {
    grads: &'a GradientsParams,
    out: Vec<Option<Vec<f32>>>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let g = self.grads.get::<D>(param.id);
        self.out
            .push(g.map(|g| g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()));
    }
}

/// Loss and LoRA gradients of a 2-layer GQA model with padding and packed segments.
fn lora_step(attention: AttentionImpl) -> (f32, Vec<Option<Vec<f32>>>) {
    let device = Device::flex().autodiff();
    device.seed(5);
    let config = ModelConfig::from_json(
        serde_json::json!({
            "model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "use_sliding_window": true, "sliding_window": 6,
            "max_window_layers": 1
        }),
        "config.json".as_ref(),
    )
    .unwrap();
    let mut base = CausalLm::from_config(&config, &device).unwrap().no_grad();
    // Set before the adapters are injected (as `lmflow finetune` does): the choice survives
    // injection and module mapping.
    base.set_attention_impl(attention).unwrap();
    let mut cfg = LoraConfig::new(4, 8.0, TargetModules::Pattern("all-linear".into()));
    cfg.init_lora_weights = lmflow_peft::InitLoraWeights::Bool(false);
    let (model, _) = get_peft_model(base, &cfg, "default").unwrap();
    for m in [&model, &model.valid()] {
        match m {
            CausalLm::Llama(m) => assert_eq!(m.attention_impl, attention),
            _ => unreachable!("a qwen2 model"),
        }
    }
    let n = 21;
    let ids: Vec<Vec<i64>> = (0..2)
        .map(|r| (0..n).map(|i| (i * 13 + r * 7 + 3) % 64).collect())
        .collect();
    let input = ForwardInput::new(ints(&ids, &device))
        .with_attention_mask(ints(
            &[
                vec![1; n as usize],
                (0..n).map(|i| i64::from(i < 15)).collect(),
            ],
            &device,
        ))
        .with_segment_ids(ints(
            &[
                (0..n).map(|i| i64::from(i >= 8)).collect(),
                vec![0; n as usize],
            ],
            &device,
        ));
    let logits = model.forward(input, None).unwrap().logits;
    let loss = logits.clone().mul(logits).mean();
    let value = loss.clone().into_scalar::<f32>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut c = Collect {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    (value, c.out)
}

#[test]
fn lora_model_step_equals_with_and_without_tiling() {
    let (eager, g_eager) = lora_step(AttentionImpl::Eager);
    let (tiled, g_tiled) = lora_step(AttentionImpl::Tiled);
    assert!((eager - tiled).abs() < 1e-5, "{eager} vs {tiled}");
    let mut compared = 0;
    for (i, (a, b)) in g_eager.iter().zip(&g_tiled).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(d < 1e-5, "gradient of parameter {i} differs by {d}");
                compared += 1;
            }
            (None, None) => {}
            _ => panic!("parameter {i} has a gradient on one side only"),
        }
    }
    assert!(compared >= 14, "{compared} LoRA gradients compared");
}
