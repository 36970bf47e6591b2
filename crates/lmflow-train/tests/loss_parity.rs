//! `causal_lm_loss` against PyTorch's `cross_entropy(ignore_index=-100)` (tests/fixtures/train.py).
#![allow(clippy::unwrap_used)]

use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_train::causal_lm_loss;

#[derive(serde::Deserialize)]
struct Case {
    shape: [usize; 3],
    logits: Vec<f32>,
    labels: Vec<i64>,
    sum: f64,
    mean: f64,
    tokens: usize,
}

#[test]
fn loss_matches_torch_cross_entropy_with_ignore_index() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/train/loss.json"
    );
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let device = Device::flex();
    for case in cases {
        let [b, s, v] = case.shape;
        let logits = Tensor::<3>::from_data(TensorData::new(case.logits, [b, s, v]), &device);
        let labels = Tensor::<2, Int>::from_data(TensorData::new(case.labels, [b, s]), &device);
        let out = causal_lm_loss(logits, labels);
        assert_eq!(out.tokens, case.tokens);
        let sum: f32 = out.sum.clone().into_scalar();
        let mean: f32 = out.mean().into_scalar();
        assert!(
            (sum as f64 - case.sum).abs() < 1e-4 * case.sum.abs().max(1.0),
            "{sum} vs {}",
            case.sum
        );
        assert!(
            (mean as f64 - case.mean).abs() < 1e-5 * case.mean.abs().max(1.0),
            "{mean} vs {}",
            case.mean
        );
    }
}
