//! Merging a PEFT LoRA adapter into its base model through the library API (what `lmflow
//! merge` does, PEFT's `merge_and_unload` + `save_pretrained`): the merged folder is a plain
//! Hub-layout model that computes what base + adapter computed.
//!
//! `cargo run --example merge_adapter [-- MODEL_DIR ADAPTER_DIR OUT_DIR]`; by default the test
//! fixture model and adapter (tests/fixtures/eval_adapter) into a temporary folder.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor};
use lmflow::models::{ForwardInput, LoadOptions, load_pretrained};

/// Merges `adapter` into `model`, writes `out`; returns the largest logit difference between
/// base + adapter and the reloaded merged folder on a few tokens.
pub fn run(model: &Path, adapter: &Path, out: &Path) -> f32 {
    let device = Device::flex();
    let mut pretrained = load_pretrained(model, &device, &LoadOptions::default()).unwrap();
    lmflow::peft::load_adapter(&mut pretrained.model, adapter, "default", &device).unwrap();
    let ids = || Tensor::<2, Int>::from_ints([[3, 56, 86, 308, 294, 90]], &device);
    let logits =
        |m: &lmflow::models::CausalLm| m.forward(ForwardInput::new(ids()), None).unwrap().logits;
    let with_adapter = logits(&pretrained.model);

    // Folds W += scale * B A into every adapted layer and drops the adapters.
    lmflow::peft::merge_and_unload(&mut pretrained.model, "default").unwrap();
    // config.json, model.safetensors and the tokenizer files of the base folder.
    pretrained.save(out).unwrap();
    println!("merged model written to {}", out.display());

    let merged = load_pretrained(out, &device, &LoadOptions::default()).unwrap();
    let diff: f32 = (logits(&merged.model) - with_adapter)
        .abs()
        .max()
        .into_scalar();
    println!("largest logit difference, merged vs base + adapter: {diff:e}");
    diff
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [m, a, o] => {
            run(m.as_ref(), a.as_ref(), o.as_ref());
        }
        _ => {
            let out = std::env::temp_dir().join("lmflow-merged-example");
            let _ = std::fs::remove_dir_all(&out);
            run(
                &fixture("models/llama_gqa"),
                &fixture("eval_adapter/adapter"),
                &out,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture;

    #[test]
    fn merged_folder_computes_base_plus_adapter() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged");
        let diff = super::run(
            &fixture("models/llama_gqa"),
            &fixture("eval_adapter/adapter"),
            &out,
        );
        assert!(diff < 1e-4, "{diff}");
        assert!(out.join("tokenizer.json").is_file());
    }
}
