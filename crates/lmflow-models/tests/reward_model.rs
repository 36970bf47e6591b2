#![allow(clippy::unwrap_used)]
//! Reward models (`*ForSequenceClassification`, one label) against transformers: scores of the
//! fixtures made by `tests/fixtures/reward_model.py`, and a save/load round trip.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_models::{ForwardInput, LoadOptions, SequenceClassifier, load_sequence_classifier};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reward_model")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap())
        .unwrap()
}

fn ints(v: &Value, device: &Device) -> Tensor<2, Int> {
    let rows: Vec<Vec<i64>> = serde_json::from_value(v.clone()).unwrap();
    let seq = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), seq]), device)
}

/// Scores of the case's rows: the whole batch with its mask, or one row at a time.
fn scores(model: &SequenceClassifier, case: &Value, device: &Device) -> Vec<f32> {
    let ids = ints(&case["ids"], device);
    if case["one_row_at_a_time"].as_bool().unwrap() {
        let [b, s] = ids.dims();
        (0..b)
            .flat_map(|i| {
                let row = ids.clone().slice([i..i + 1, 0..s]);
                let r = model.rewards(&ForwardInput::new(row)).unwrap();
                r.into_data().try_to_vec::<f32>().unwrap()
            })
            .collect()
    } else {
        let input = ForwardInput::new(ids).with_attention_mask(ints(&case["mask"], device));
        model
            .rewards(&input)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() < 1e-4,
            "{name} row {i}: rust {g}, transformers {w}"
        );
    }
}

#[test]
fn scores_equal_transformers() {
    let device = Device::flex();
    let reference = reference();
    let cases = reference["cases"].as_object().unwrap();
    assert!(cases.len() >= 5);
    for (name, case) in cases {
        let loaded = load_sequence_classifier(
            &fixtures().join(name),
            &device,
            &LoadOptions::default(),
            None,
        )
        .unwrap();
        assert!(!loaded.new_head, "{name}: the fixture stores score.weight");
        assert_eq!(loaded.model.num_labels(), 1);
        let want: Vec<f32> = serde_json::from_value(case["scores"].clone()).unwrap();
        assert_close(name, &scores(&loaded.model, case, &device), &want);
    }
}

#[test]
fn batches_without_padding_id_are_refused() {
    let device = Device::flex();
    let loaded = load_sequence_classifier(
        &fixtures().join("gpt2_nopad"),
        &device,
        &LoadOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(loaded.model.pad_token_id, None);
    let ids = Tensor::<2, Int>::from_ints([[1, 2, 3], [4, 5, 6]], &device);
    let err = loaded.model.rewards(&ForwardInput::new(ids)).unwrap_err();
    assert!(err.to_string().contains("pad_token_id"), "{err}");
}

#[test]
fn saved_folder_has_the_hub_layout_and_reloads() {
    let device = Device::flex();
    let reference = reference();
    let case = &reference["cases"]["llama"];
    let loaded = load_sequence_classifier(
        &fixtures().join("llama"),
        &device,
        &LoadOptions::default(),
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    loaded.save(dir.path()).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(config["id2label"].as_object().unwrap().len(), 1);
    assert_eq!(config["pad_token_id"], 0);
    let names: Vec<String> = loaded
        .model
        .state_dict()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"score.weight".to_string()));
    assert!(names.iter().all(|n| !n.starts_with("lm_head")));
    assert!(
        names
            .iter()
            .all(|n| n == "score.weight" || n.starts_with("model."))
    );
    let again =
        load_sequence_classifier(dir.path(), &device, &LoadOptions::default(), None).unwrap();
    let want: Vec<f32> = serde_json::from_value(case["scores"].clone()).unwrap();
    assert_close("reloaded", &scores(&again.model, case, &device), &want);
}

#[test]
fn causal_lm_folder_gets_a_new_head() {
    let device = Device::flex();
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama_gqa");
    let loaded = load_sequence_classifier(&dir, &device, &LoadOptions::default(), None).unwrap();
    assert!(loaded.new_head);
    assert_eq!(loaded.model.num_labels(), 1);
    assert_eq!(loaded.model.pad_token_id, Some(0));
    let ids = Tensor::<2, Int>::from_ints([[5, 6, 7, 0], [8, 9, 10, 11]], &device);
    assert_eq!(
        loaded
            .model
            .rewards(&ForwardInput::new(ids))
            .unwrap()
            .dims(),
        [2]
    );
    assert!(
        load_sequence_classifier(&dir, &device, &LoadOptions::default(), Some(0)).is_err(),
        "zero labels"
    );
}

#[test]
fn transformers_loaded_the_rust_saved_folders() {
    // Recorded by `tests/fixtures/reward_model.py` (the --check-rust step).
    let reference = reference();
    let saved = reference["rust_saved"].as_object().unwrap();
    for name in [
        "llama",
        "qwen2",
        "gpt2",
        "gpt2_nopad",
        "opt",
        "from_causal_lm",
    ] {
        let case = &saved[name];
        assert_eq!(case["loads_in_transformers"], true, "{name}");
        let diff = case["max_abs_diff_rust_vs_transformers"].as_f64().unwrap();
        assert!(diff < 1e-4, "{name}: {diff}");
    }
}
