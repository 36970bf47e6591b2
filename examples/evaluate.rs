//! Evaluation through the library API (what `lmflow eval --metric ppl` does): NLL and
//! perplexity of a model, optionally with a PEFT adapter, on an LMFlow `text_only` dataset.
//!
//! `cargo run --example evaluate [-- MODEL_DIR DATASET [ADAPTER_DIR]]`; by default the bundled
//! tiny model on the bundled Moby-Dick evaluation text (`cargo test --example evaluate`: the test
//! fixture model, with and without its adapter, against transformers + PEFT's figures).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lmflow::datasets::{Instance, ReadOptions, read_dataset};
use lmflow::infer::load_model;
use lmflow::models::LoadOptions;
use lmflow::models::eval::{NllStats, evaluate_nll};

/// NLL statistics of `model` (+ `adapter`) on the `text_only` dataset `data`.
pub fn run(model: &Path, data: &Path, adapter: Option<&Path>) -> NllStats {
    let device = Device::flex();
    let pretrained = load_model(model, adapter, &LoadOptions::default(), &device).unwrap();
    let tokenizer = pretrained.tokenizer.as_ref().unwrap();
    let dataset = read_dataset(data, &ReadOptions::default()).unwrap();
    let sequences: Vec<Vec<u32>> = (dataset.instances.iter())
        .map(|instance| match instance {
            Instance::TextOnly { text } => tokenizer.encode(text, true).unwrap(),
            other => panic!("not a text_only instance: {other:?}"),
        })
        .collect();
    // Each text truncated to the model's context, batches of 2 (right-padded).
    let block = pretrained.model.max_position_embeddings();
    let stats = evaluate_nll(&pretrained.model, &sequences, block, 2, &device).unwrap();
    println!(
        "{} samples, {} predicted tokens: nll per sample {:.4}, perplexity {:.4}",
        stats.samples,
        stats.predicted_tokens,
        stats.nll_mean_per_sample(),
        stats.ppl()
    );
    stats
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn main() {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    match args.as_slice() {
        [m, d] => run(m, d, None),
        [m, d, a] => run(m, d, Some(a)),
        _ => run(
            &repo("assets/tiny-llama"),
            &repo("assets/data/moby-dick-eval.json"),
            None,
        ),
    };
}

#[cfg(test)]
mod tests {
    use super::repo;

    #[test]
    fn nll_equals_transformers_with_and_without_adapter() {
        let text = std::fs::read_to_string(repo("tests/fixtures/eval_adapter/reference.json"));
        let reference: serde_json::Value = serde_json::from_str(&text.unwrap()).unwrap();
        let model = repo("tests/fixtures/models/llama_gqa");
        let data = repo("tests/fixtures/models/eval_text_only.json");
        let adapter = repo("tests/fixtures/eval_adapter/adapter");
        for (key, adapter) in [("base", None), ("adapter", Some(adapter.as_path()))] {
            let stats = super::run(&model, &data, adapter);
            let want = reference[key]["nll"]["nll_sum"].as_f64().unwrap();
            assert!(
                (stats.nll_sum - want).abs() < 1e-4 * want,
                "{key}: {} vs {want}",
                stats.nll_sum
            );
        }
    }
}
