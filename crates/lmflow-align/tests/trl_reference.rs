//! DPO, reward-model loss and sequence log-probabilities against the formulas of TRL
//! (fixture: tests/fixtures/align.py).
#![allow(clippy::unwrap_used)]

use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_align::{DpoConfig, DpoLossType, dpo_loss, pairwise_reward_loss, sequence_logprobs};
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/align/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tensor(v: &Value, device: &Device) -> Tensor<1> {
    let f = floats(v);
    let n = f.len();
    Tensor::from_data(TensorData::new(f, [n]), device)
}

fn assert_close(got: Tensor<1>, want: &[f32], tol: f32) {
    let got: Vec<f32> = got.into_data().try_to_vec().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn dpo_losses_and_rewards_match_trl() {
    let r = reference();
    let device = Device::flex();
    for case in r["dpo"].as_array().unwrap() {
        let config = DpoConfig {
            beta: case["beta"].as_f64().unwrap(),
            loss_type: serde_json::from_value::<DpoLossType>(case["loss_type"].clone()).unwrap(),
            label_smoothing: case["label_smoothing"].as_f64().unwrap(),
        };
        config.validate().unwrap();
        let out = dpo_loss(
            &config,
            tensor(&r["policy_chosen"], &device),
            tensor(&r["policy_rejected"], &device),
            tensor(&r["reference_chosen"], &device),
            tensor(&r["reference_rejected"], &device),
        );
        assert_close(out.losses.clone(), &floats(&case["losses"]), 1e-5);
        assert_close(out.loss(), &[case["loss"].as_f64().unwrap() as f32], 1e-5);
        assert_close(
            out.chosen_rewards.clone(),
            &floats(&case["chosen_rewards"]),
            1e-5,
        );
        assert_close(
            out.rejected_rewards.clone(),
            &floats(&case["rejected_rewards"]),
            1e-5,
        );
        let acc = case["reward_accuracy"].as_f64().unwrap();
        assert!((out.reward_accuracy() - acc).abs() < 1e-6);
    }
}

#[test]
fn reward_model_loss_matches_trl_with_and_without_margin() {
    let r = &reference()["reward"];
    let device = Device::flex();
    let loss = pairwise_reward_loss(
        tensor(&r["chosen"], &device),
        tensor(&r["rejected"], &device),
        None,
    );
    assert_close(loss, &[r["loss"].as_f64().unwrap() as f32], 1e-5);
    let loss = pairwise_reward_loss(
        tensor(&r["chosen"], &device),
        tensor(&r["rejected"], &device),
        Some(tensor(&r["margin"], &device)),
    );
    assert_close(
        loss,
        &[r["loss_with_margin"].as_f64().unwrap() as f32],
        1e-5,
    );
}

#[test]
fn sequence_logprobs_match_trl_get_batch_logps() {
    let r = &reference()["logps"];
    let device = Device::flex();
    let shape: Vec<usize> = r["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let (b, s, v) = (shape[0], shape[1], shape[2]);
    let logits = Tensor::<3>::from_data(TensorData::new(floats(&r["logits"]), [b, s, v]), &device);
    let labels: Vec<i64> = r["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [b, s]), &device);
    let out = sequence_logprobs(logits, labels);
    assert_close(out.sum.clone(), &floats(&r["sum"]), 1e-5);
    let tokens: Vec<usize> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(out.tokens, tokens);
}

#[test]
fn invalid_settings_are_errors() {
    assert!(
        DpoConfig {
            beta: 0.0,
            ..DpoConfig::default()
        }
        .validate()
        .is_err()
    );
    let smoothed_hinge = DpoConfig {
        loss_type: DpoLossType::Hinge,
        label_smoothing: 0.1,
        ..DpoConfig::default()
    };
    assert!(smoothed_hinge.validate().is_err());
}
