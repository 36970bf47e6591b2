//! Bad input gets a clear error naming the file and the key or tensor.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, TensorData};
use lmflow_models::{LoadOptions, ModelError, load_pretrained, save_safetensors};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(case)
}

/// A writable copy of a fixture folder.
fn copy(case: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(case)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> ModelError {
    match load_pretrained(dir, &Device::flex(), &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn missing_config_and_weights_name_the_file() {
    let empty = tempfile::tempdir().unwrap();
    let err = load_err(empty.path());
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("config.json"), "{err}");

    let dir = copy("llama_gqa");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    let msg = err.to_string();
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err:?}");
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn unsupported_model_type_lists_supported_ones() {
    let dir = copy("llama_gqa");
    edit_config(dir.path(), |c| {
        c.insert("model_type".into(), "bert".into());
    });
    let err = load_err(dir.path());
    let msg = err.to_string();
    assert!(
        matches!(err, ModelError::UnsupportedModelType { .. }),
        "{err:?}"
    );
    for name in ["bert", "llama", "mistral", "qwen2", "qwen3", "config.json"] {
        assert!(msg.contains(name), "{msg} lacks {name}");
    }
}

#[test]
fn bad_config_value_names_the_key() {
    let dir = copy("llama_gqa");
    edit_config(dir.path(), |c| {
        c.insert("hidden_size".into(), "wide".into());
    });
    let err = load_err(dir.path());
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Config { .. }), "{err:?}");
    assert!(
        msg.contains("hidden_size") && msg.contains("config.json"),
        "{msg}"
    );

    let dir = copy("llama_gqa");
    edit_config(dir.path(), |c| {
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "longrope", "rope_theta": 10000.0}),
        );
    });
    let msg = load_err(dir.path()).to_string();
    assert!(
        msg.contains("rope_type") && msg.contains("longrope"),
        "{msg}"
    );
}

#[test]
fn corrupt_and_truncated_safetensors_are_reported() {
    let dir = copy("llama_gqa");
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();

    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err:?}");
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );

    std::fs::write(&file, &bytes[..4]).unwrap();
    let msg = load_err(dir.path()).to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );

    std::fs::write(&file, b"this is an HTML error page, not a checkpoint").unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"));
}

#[test]
fn wrong_shape_and_missing_tensor_name_file_and_tensor() {
    let device = Device::flex();
    let p = load_pretrained(&fixture("llama_gqa"), &device, &LoadOptions::default()).unwrap();
    let tensors = p.model.state_dict();
    let dir = copy("llama_gqa");
    let file = dir.path().join("model.safetensors");

    let target = "model.layers.1.self_attn.k_proj.weight";
    let reshaped: Vec<(String, TensorData)> = tensors
        .iter()
        .map(|(n, t)| {
            if n == target {
                let v = t.clone().try_into_vec::<f32>().unwrap();
                (n.clone(), TensorData::new(v[..8 * 32].to_vec(), [8, 32]))
            } else {
                (n.clone(), t.clone())
            }
        })
        .collect();
    save_safetensors(&file, &reshaped).unwrap();
    let err = load_err(dir.path());
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Shape { .. }), "{err:?}");
    assert!(
        msg.contains(target) && msg.contains("model.safetensors"),
        "{msg}"
    );
    assert!(msg.contains("[8, 32]") && msg.contains("[16, 32]"), "{msg}");

    let dropped: Vec<(String, TensorData)> = tensors
        .iter()
        .filter(|(n, _)| n != "lm_head.weight")
        .cloned()
        .collect();
    save_safetensors(&file, &dropped).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err:?}");
    assert!(err.to_string().contains("lm_head.weight"));
}

#[test]
fn sharded_checkpoint_with_missing_shard_names_it() {
    let dir = copy("llama_sharded");
    std::fs::remove_file(dir.path().join("model-00002-of-00004.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("model-00002-of-00004.safetensors"));
}
