//! Loads a Hub-layout model folder and saves it again (used by `tests/fixtures/models.py
//! --check-rust` to verify that `transformers` loads folders written by this crate).
//!
//! ```text
//! cargo run -p lmflow-models --example save_roundtrip -- SRC_DIR DST_DIR
//! ```

use std::path::PathBuf;

use burn::tensor::Device;
use lmflow_models::{LoadOptions, load_pretrained};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(src), Some(dst)) = (args.next(), args.next()) else {
        return Err("usage: save_roundtrip SRC_DIR DST_DIR".into());
    };
    let device = Device::flex();
    let pretrained = load_pretrained(&PathBuf::from(src), &device, &LoadOptions::default())?;
    pretrained.save(&PathBuf::from(dst))?;
    Ok(())
}
