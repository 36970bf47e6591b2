//! `lmflow reward train|score` and `lmflow align raft` on the demo data of `assets/data/align/`
//! (few steps: the commands run end to end and write what the docs say).
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn lmflow(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lmflow {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn reward_train_then_score_then_raft_with_the_reward_model() {
    let dir = tempfile::tempdir().unwrap();
    let rm = dir.path().join("rm");
    let summary = lmflow(&[
        "reward",
        "train",
        "--model",
        &repo("assets/tiny-llama"),
        "--dataset",
        &repo("assets/data/align/preference_train.json"),
        "--eval-dataset",
        &repo("assets/data/align/preference_eval.json"),
        "--output",
        rm.to_str().unwrap(),
        "--max-steps",
        "6",
        "--learning-rate",
        "2e-3",
        "--batch-size",
        "16",
        "--block-size",
        "96",
    ]);
    let summary: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(summary["steps"], 6);
    assert!(summary["eval_accuracy"].as_f64().unwrap() >= 0.0);
    let config = std::fs::read_to_string(rm.join("model/config.json")).unwrap();
    assert!(config.contains("LlamaForSequenceClassification"));
    assert!(rm.join("model/tokenizer.json").is_file());

    // One JSON line per pair, chosen and rejected scored.
    let scores = lmflow(&[
        "reward",
        "score",
        "--model",
        rm.join("model").to_str().unwrap(),
        "--dataset",
        &repo("assets/data/align/preference_eval.json"),
        "--block-size",
        "96",
    ]);
    let lines: Vec<serde_json::Value> = scores
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 80);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert!(l["chosen"].is_f64() && l["rejected"].is_f64());
    }

    // RAFT, one iteration, with the lexicon reward; then resumed to two iterations.
    let raft = dir.path().join("raft");
    let args = |iterations: &str| {
        vec![
            "align".to_string(),
            "raft".into(),
            "--model".into(),
            repo("assets/tiny-llama"),
            "--prompts".into(),
            repo("assets/data/align/prompts.json"),
            "--reward".into(),
            "afinn".into(),
            "--output".into(),
            raft.to_str().unwrap().into(),
            "--iterations".into(),
            iterations.into(),
            "--prompts-per-iteration".into(),
            "4".into(),
            "--samples-per-prompt".into(),
            "4".into(),
            "--max-new-tokens".into(),
            "8".into(),
            "--sft-steps".into(),
            "2".into(),
            "--block-size".into(),
            "64".into(),
        ]
    };
    let one: Vec<String> = args("1");
    let out = lmflow(&one.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.lines().count(), 1);
    let two: Vec<String> = args("2");
    let out = lmflow(&two.iter().map(String::as_str).collect::<Vec<_>>());
    let record: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(record["iteration"], 2, "resumed after iteration 1");
    let metrics = std::fs::read_to_string(raft.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    assert!(raft.join("model/model.safetensors").is_file());
    assert!(raft.join("checkpoints/iter-0002/raft_state.json").is_file());
}
