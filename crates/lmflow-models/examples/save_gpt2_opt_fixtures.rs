//! Loads the tiny GPT-2 / OPT fixture folders and saves them again with this crate, for
//! `tests/fixtures/models_gpt2_opt.py check DIR` to load with `transformers`.
//!
//! ```text
//! cargo run -p lmflow-models --example save_gpt2_opt_fixtures -- target/gpt2-opt-rust-saved
//! python tests/fixtures/models_gpt2_opt.py check target/gpt2-opt-rust-saved
//! ```
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lmflow_models::{LoadOptions, ModelError, load_pretrained};

const CASES: &[&str] = &["gpt2", "opt", "opt-post-proj", "opt-nobias"];

fn main() -> Result<(), ModelError> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/gpt2-opt-rust-saved"));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models");
    let device = Device::flex();
    for case in CASES {
        let model = load_pretrained(&fixtures.join(case), &device, &LoadOptions::default())?;
        let dir = out.join(case);
        model.save(&dir)?;
        println!("{case}: saved to {}", dir.display());
    }
    Ok(())
}
