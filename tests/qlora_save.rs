//! A model whose linear layers are NF4-quantised (QLoRA base) saves its dequantised weights:
//! the saved folder reloads as a dense model with the quantised model's logits.
#![allow(clippy::unwrap_used)]

use burn::tensor::{Device, Int, Tensor};
use lmflow_models::{ForwardInput, LoadOptions, load_pretrained};
use lmflow_peft::{LinearVisitor, Nf4Config};

#[test]
fn nf4_quantised_model_saves_dequantised_weights() {
    let device = Device::flex();
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama_gqa");
    let mut p = load_pretrained(&dir, &device, &LoadOptions::default()).unwrap();
    let ids = Tensor::<2, Int>::from_ints([[3, 56, 86, 308, 294, 90, 336, 104]], &device);
    let dense: Vec<f32> = p
        .model
        .forward(ForwardInput::new(ids.clone()), None)
        .unwrap()
        .logits
        .into_data()
        .try_to_vec()
        .unwrap();
    let mut n = 0;
    p.model.visit_linears_mut(&mut |_, lin| {
        lin.quantize_nf4(&Nf4Config::new());
        n += 1;
    });
    assert!(n > 0);
    let quantised: Vec<f32> = p
        .model
        .forward(ForwardInput::new(ids.clone()), None)
        .unwrap()
        .logits
        .into_data()
        .try_to_vec()
        .unwrap();
    // Quantisation changes the model (so the comparison below is not trivially dense == dense).
    assert!(
        dense
            .iter()
            .zip(&quantised)
            .any(|(a, b)| (a - b).abs() > 1e-4)
    );

    let out = tempfile::tempdir().unwrap();
    p.save(out.path()).unwrap();
    let reloaded = load_pretrained(out.path(), &device, &LoadOptions::default()).unwrap();
    let again: Vec<f32> = reloaded
        .model
        .forward(ForwardInput::new(ids), None)
        .unwrap()
        .logits
        .into_data()
        .try_to_vec()
        .unwrap();
    let max = again
        .iter()
        .zip(&quantised)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max < 1e-4,
        "reloaded logits differ from the quantised model's by {max}"
    );
}
