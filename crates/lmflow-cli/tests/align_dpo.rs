//! `lmflow align dpo` on the bundled tiny model and the demo preference set: DPO raises the
//! implicit-reward margin and accuracy on held-out pairs (both are exactly 0 before training,
//! where the policy is its own reference).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use lmflow_train::metrics::read_metrics;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn dpo_raises_held_out_margin_and_accuracy() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "align",
            "dpo",
            "--model",
            &repo("assets/tiny-llama"),
            "--dataset",
            &repo("assets/data/align/preference_train.json"),
            "--eval-dataset",
            &repo("assets/data/align/preference_eval.json"),
            "--output-dir",
            out.path().to_str().unwrap(),
            "--max-steps",
            "30",
            "--batch-size",
            "8",
            "--learning-rate",
            "2e-3",
            "--logging-steps",
            "5",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(output.stdout.trim_ascii_end()).unwrap();
    assert_eq!(summary["steps"], 30);
    assert!(out.path().join("final/adapter_model.safetensors").is_file());
    let records = read_metrics(&out.path().join("metrics.jsonl")).unwrap();
    let last = records.last().unwrap();
    let accuracy = last.extra["eval_rewards/accuracies"];
    let margin = last.extra["eval_rewards/margins"];
    eprintln!("held-out after 30 steps: accuracy {accuracy}, margin {margin}");
    assert!(accuracy >= 0.8, "held-out reward accuracy {accuracy}");
    assert!(margin > 0.1, "held-out reward margin {margin}");
    assert!(last.eval_loss.unwrap() < 2f64.ln() - 0.05, "{last:?}");
    // Training metrics are logged per window, as TRL names them.
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(records[0].extra[key].is_finite(), "{key}");
    }
}

#[test]
fn dpo_refuses_single_sequence_data() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "align",
            "dpo",
            "--model",
            &repo("assets/tiny-llama"),
            "--dataset",
            &repo("assets/data/capitals/train.json"),
            "--output-dir",
            out.path().to_str().unwrap(),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("paired_conversation"), "{err}");
}

#[test]
fn iterative_dpo_with_lora_runs_its_iterations_and_writes_the_merged_model() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "align",
            "iterative-dpo",
            "--model",
            &repo("assets/tiny-llama"),
            "--prompts",
            &repo("assets/data/align/prompts.json"),
            "--reward",
            "afinn",
            "--output-dir",
            out.path().to_str().unwrap(),
            "--iterations",
            "2",
            "--prompts-per-iteration",
            "12",
            "--min-new-tokens",
            "4",
            "--max-new-tokens",
            "12",
            "--dpo-steps",
            "3",
            "--learning-rate",
            "2e-3",
            "--lora",
            "--pairing",
            "max_random",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log = std::fs::read_to_string(out.path().join("iterations.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["iteration"], i);
        assert!(r["pairs"].as_u64().unwrap() > 0, "{r}");
        assert!(r["pair_gap"].as_f64().unwrap() > 0.0, "{r}");
        // Each iteration's DPO run logged TRL's metrics.
        let m = read_metrics(&out.path().join(format!("iter-{i:04}/metrics.jsonl"))).unwrap();
        assert_eq!(m.len(), 3);
        assert!(m[0].extra.contains_key("rewards/margins"));
    }
    assert!(out.path().join("model/model.safetensors").is_file());
    assert!(out.path().join("model/tokenizer.json").is_file());
}
