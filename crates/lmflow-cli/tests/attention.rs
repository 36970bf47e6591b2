//! `lmflow finetune --attention tiled|eager|auto`: tiled attention gives the same training run
//! as the materialised path (with and without activation checkpointing); unknown values are
//! refused by name.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The train loss of a 4-step LoRA run on the bundled model with `extra` flags.
fn train_loss(extra: &[&str]) -> f64 {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .arg("finetune")
        .args(["--model", &repo("assets/tiny-llama")])
        .args(["--dataset", &repo("assets/data/capitals/train.json")])
        .args(["--output", out.path().to_str().unwrap()])
        .args([
            "--max-steps",
            "4",
            "--seed",
            "5",
            "--samples",
            "0",
            "--quiet",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
    summary["train_loss"].as_f64().unwrap()
}

#[test]
fn tiled_attention_gives_the_same_run() {
    let eager = train_loss(&["--attention", "eager"]);
    let tiled = train_loss(&["--attention", "tiled"]);
    let tiled_checkpointed = train_loss(&["--attention", "tiled", "--gradient-checkpointing"]);
    assert!((eager - tiled).abs() < 1e-4, "eager {eager}, tiled {tiled}");
    assert!(
        (eager - tiled_checkpointed).abs() < 1e-4,
        "eager {eager}, tiled with checkpointing {tiled_checkpointed}"
    );
}

#[test]
fn unknown_attention_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args(["bench", "train", "--attention", "flash", "--steps", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("flash") && err.contains("tiled"), "{err}");
}
