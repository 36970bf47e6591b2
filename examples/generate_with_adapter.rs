//! Generation with a PEFT LoRA adapter through the library API (what `lmflow generate
//! --adapter` does): load the base model folder, attach the adapter, and decode greedily with
//! `lmflow_infer::Generator`, streaming the text.
//!
//! `cargo run --example generate_with_adapter [-- MODEL_DIR ADAPTER_DIR PROMPT]`; by default the
//! test fixture model and adapter (tests/fixtures/eval_adapter), whose greedy tokens transformers +
//! PEFT recorded; `cargo test --example generate_with_adapter` checks them.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lmflow::infer::{GenerationConfig, Generator, load_model};
use lmflow::models::LoadOptions;

/// Generates `max_new_tokens` greedily after `prompt`; returns the new token ids.
pub fn run(model: &Path, adapter: &Path, prompt: &str, max_new_tokens: usize) -> Vec<u32> {
    let device = Device::flex();
    // Base weights plus the adapter as the active adapter "default" (unmerged, as PEFT).
    let pretrained = load_model(model, Some(adapter), &LoadOptions::default(), &device).unwrap();
    let tokenizer = pretrained.tokenizer.as_ref().unwrap();
    let prompt_ids = tokenizer.encode(prompt, true).unwrap();
    let config = GenerationConfig {
        eos_token_ids: tokenizer.eos_token_ids().to_vec(),
        pad_token_id: tokenizer.pad_token_id().unwrap_or(0),
        ..GenerationConfig::greedy(max_new_tokens)
    };
    let generator = Generator::new(&pretrained.model, &device).with_tokenizer(tokenizer);
    print!("{prompt}");
    let outputs = generator
        .generate_streaming(&[prompt_ids], &config, &mut |_, text| {
            print!("{text}");
            let _ = std::io::stdout().flush();
        })
        .unwrap();
    println!();
    outputs.into_iter().next().unwrap().new_ids
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, adapter, prompt) = match args.as_slice() {
        [m, a, p] => (PathBuf::from(m), PathBuf::from(a), p.clone()),
        _ => (
            fixture("models/llama_gqa"),
            fixture("eval_adapter/adapter"),
            "Call me Is".to_string(),
        ),
    };
    run(&model, &adapter, &prompt, 12);
}

#[cfg(test)]
mod tests {
    use super::fixture;

    #[test]
    fn greedy_tokens_equal_transformers_and_peft() {
        let text = std::fs::read_to_string(fixture("eval_adapter/reference.json")).unwrap();
        let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        let want: Vec<u32> = (reference["adapter"]["generate"]["new_ids"]
            .as_array()
            .unwrap())
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
        let got = super::run(
            &fixture("models/llama_gqa"),
            &fixture("eval_adapter/adapter"),
            "Call me Is",
            want.len(),
        );
        assert_eq!(got, want);
    }
}
