//! Loads a sequence classifier folder (or a causal LM folder, which gets a new one-label head),
//! scores the rows of an inputs file and saves the classifier (used by
//! `tests/fixtures/reward_model.py --check-rust` to verify that `transformers` loads folders
//! written by this crate and gives the same scores).
//!
//! ```text
//! cargo run -p lmflow-models --example save_reward_model -- SRC_DIR DST_DIR INPUTS_JSON
//! ```
//!
//! `INPUTS_JSON`: `{"ids": [[..], ..], "mask": [[..], ..] | null}`; with `mask: null` each row is
//! scored alone. Writes `DST_DIR/rust_scores.json` (`{"scores": [..]}`) next to the model.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_models::{ForwardInput, LoadOptions, SequenceClassifier, load_sequence_classifier};

fn tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let seq = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), seq]), device)
}

fn scores(
    model: &SequenceClassifier,
    ids: &[Vec<i64>],
    mask: Option<&[Vec<i64>]>,
    device: &Device,
) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let rewards = match mask {
        Some(mask) => {
            let input =
                ForwardInput::new(tensor(ids, device)).with_attention_mask(tensor(mask, device));
            model.rewards(&input)?.into_data().try_to_vec::<f32>()?
        }
        None => {
            let mut out = Vec::new();
            for row in ids {
                let input = ForwardInput::new(tensor(std::slice::from_ref(row), device));
                out.extend(model.rewards(&input)?.into_data().try_to_vec::<f32>()?);
            }
            out
        }
    };
    Ok(rewards)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(src), Some(dst), Some(inputs)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: save_reward_model SRC_DIR DST_DIR INPUTS_JSON".into());
    };
    let device = Device::flex();
    let loaded =
        load_sequence_classifier(&PathBuf::from(src), &device, &LoadOptions::default(), None)?;
    let inputs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&inputs)?)?;
    let ids: Vec<Vec<i64>> = serde_json::from_value(inputs["ids"].clone())?;
    let mask: Option<Vec<Vec<i64>>> = serde_json::from_value(inputs["mask"].clone())?;
    let scores = scores(&loaded.model, &ids, mask.as_deref(), &device)?;
    let dst = PathBuf::from(dst);
    loaded.save(&dst)?;
    std::fs::write(
        dst.join("rust_scores.json"),
        serde_json::json!({ "scores": scores }).to_string(),
    )?;
    Ok(())
}
