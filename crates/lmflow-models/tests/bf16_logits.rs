//! Models loaded in bf16 (`LoadOptions::dtype`, `--dtype bf16`) against `transformers` loading
//! the same folders in `torch.bfloat16` (`tests/fixtures/bf16_logits.py`): the bundled
//! tiny-llama, a Qwen2 with q/k/v biases and a GPT-2.
//!
//! Tolerance: bf16 keeps 8 significant bits, and the two implementations round at different
//! points (Burn's CPU backend multiplies bf16 through f32 and rounds each product once;
//! PyTorch rounds inside its own kernels), so the logits are compared at bf16 scale: the
//! largest difference from transformers' bf16 logits must stay within 3% of the largest
//! |logit| and within 1.5x transformers' own bf16-vs-f32 difference.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use lmflow_models::{ForwardInput, LoadOptions, load_pretrained};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn logits(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(root().join("tests/fixtures/bf16/logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn bf16_logits_match_transformers_in_bf16() {
    let text = std::fs::read_to_string(root().join("tests/fixtures/bf16/reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let device = Device::flex();
    let options = LoadOptions {
        dtype: Some(FloatDType::BF16),
        ..LoadOptions::default()
    };
    for (case, spec) in reference["cases"].as_object().unwrap() {
        let model_dir = root().join(spec["model"].as_str().unwrap());
        let rows: Vec<Vec<i64>> = spec["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            })
            .collect();
        let (b, s) = (rows.len(), rows[0].len());
        let ids: Tensor<2, Int> =
            Tensor::from_data(TensorData::new(rows.concat(), [b, s]), &device);
        let model = load_pretrained(&model_dir, &device, &options)
            .unwrap()
            .model;
        let out = model.forward(ForwardInput::new(ids), None).unwrap();
        assert_eq!(out.logits.dtype(), DType::BF16, "{case}");
        let got: Vec<f32> = out
            .logits
            .cast(FloatDType::F32)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let (want16, want32) = (
            logits(&format!("{case}.bf16")),
            logits(&format!("{case}.f32")),
        );
        let err = max_abs_diff(&got, &want16);
        let scale = want32.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let torch_bf16_err = max_abs_diff(&want16, &want32);
        eprintln!(
            "{case}: |ours bf16 - torch bf16| {err:.4}, |torch bf16 - torch f32| \
             {torch_bf16_err:.4}, |ours bf16 - torch f32| {:.4}, max |logit| {scale:.2}",
            max_abs_diff(&got, &want32)
        );
        assert!(
            err <= 0.03 * scale && err <= 1.5 * torch_bf16_err,
            "{case}: bf16 logits differ from transformers' by {err} (max |logit| {scale}, \
             transformers' own bf16 error {torch_bf16_err})"
        );
    }
}
