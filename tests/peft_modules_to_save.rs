//! `modules_to_save = ["embed_tokens"]` on real models: the embedding trains fully, is saved
//! under PEFT's key (`base_model.model.<path>.weight`) and is restored on load.
#![allow(clippy::unwrap_used)]

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};
use lmflow_models::{CausalLm, ForwardInput, LoadOptions, load_pretrained};
use lmflow_peft::config::{LoraConfig, TargetModules};
use lmflow_peft::{LinearVisitor, get_peft_model, load_adapter, save_adapter};

fn model_dir(case: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(case)
}

fn embedding(model: &mut CausalLm, path: &str) -> Vec<f32> {
    let mut out = None;
    model.visit_embeddings_mut(&mut |p, w| {
        if p == path {
            out = Some(w.val().into_data().try_to_vec::<f32>().unwrap());
        }
    });
    out.unwrap_or_else(|| panic!("no embedding `{path}`"))
}

#[test]
fn embeddings_are_visited_with_hub_paths_for_every_architecture() {
    let device = Device::flex();
    for (case, paths) in [
        ("llama_gqa", vec!["model.embed_tokens"]),
        ("gpt2", vec!["transformer.wte", "transformer.wpe"]),
        (
            "opt",
            vec![
                "model.decoder.embed_tokens",
                "model.decoder.embed_positions",
            ],
        ),
    ] {
        let mut model = load_pretrained(&model_dir(case), &device, &LoadOptions::default())
            .unwrap()
            .model;
        let mut seen = Vec::new();
        model.visit_embeddings_mut(&mut |p, _| seen.push(p.to_string()));
        assert_eq!(seen, paths, "{case}");
    }
}

#[test]
fn embed_tokens_in_modules_to_save_trains_saves_and_loads() {
    let device = Device::flex().autodiff();
    let dir = model_dir("llama_gqa");
    let base = load_pretrained(&dir, &device, &LoadOptions::default())
        .unwrap()
        .model;
    let mut cfg = LoraConfig::new(
        4,
        8.0,
        TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    );
    cfg.modules_to_save = Some(vec!["embed_tokens".into()]);
    let (model, report) = get_peft_model(base.clone(), &cfg, "default").unwrap();
    assert_eq!(report.saved_embeddings, ["model.embed_tokens"]);

    // One optimizer step moves the embedding (it is trainable).
    let mut before = model.clone();
    let ids = Tensor::<2, Int>::from_ints([[3, 56, 86, 308, 294, 90]], &device);
    let logits = model.forward(ForwardInput::new(ids), None).unwrap().logits;
    let grads = GradientsParams::from_grads(logits.powi_scalar(2).mean().backward(), &model);
    let mut optim = AdamWConfig::new().init();
    let mut trained = optim.step(1e-2, model, grads);
    let (e0, e1) = (
        embedding(&mut before, "model.embed_tokens"),
        embedding(&mut trained, "model.embed_tokens"),
    );
    assert!(
        e0.iter().zip(&e1).any(|(a, b)| a != b),
        "embedding did not train"
    );

    // Saved under PEFT's key, restored into a fresh base model.
    let out = tempfile::tempdir().unwrap();
    save_adapter(&mut trained, &cfg, "default", out.path()).unwrap();
    let file = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    assert!(
        tensors
            .names()
            .contains(&"base_model.model.model.embed_tokens.weight")
    );
    let mut fresh = base.valid();
    load_adapter(&mut fresh, out.path(), "default", &Device::flex()).unwrap();
    let restored = embedding(&mut fresh, "model.embed_tokens");
    let max = restored
        .iter()
        .zip(&e1)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max < 1e-6, "restored embedding differs by {max}");
}
