//! End-to-end `lmflow eval` against transformers' numbers recorded by
//! `tests/fixtures/models.py` (tiny LLaMA, a 4-sample text_only dataset).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models")
}

fn run(extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .arg("eval")
        .arg("--model")
        .arg(fixtures().join("llama_gqa"))
        .arg("--dataset")
        .arg(fixtures().join("eval_text_only.json"))
        .args(extra)
        .output()
        .expect("run lmflow");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn close(got: &Value, want: &Value, key: &str) {
    let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
    assert!(
        (g - w).abs() <= 1e-4 * w.abs().max(1e-12),
        "{key}: lmflow {g} vs transformers {w}"
    );
}

#[test]
fn eval_matches_transformers() {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    for (flags, key, metric) in [
        (vec!["--metric", "ppl"], "default", "ppl"),
        (
            vec!["--metric", "nll", "--batch-size", "3"],
            "default",
            "nll",
        ),
        (
            vec!["--metric", "ppl", "--block-size", "32", "--batch-size", "2"],
            "block_32",
            "ppl",
        ),
    ] {
        let (ok, stdout, stderr) = run(&flags);
        assert!(ok, "lmflow eval {flags:?} failed: {stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "one JSON line expected, got {stdout:?}");
        let got: Value = serde_json::from_str(lines[0]).unwrap();
        let want = &reference["eval"][key];
        assert_eq!(got["metric"], metric);
        assert_eq!(got["samples"], want["samples"]);
        assert_eq!(got["predicted_tokens"], want["predicted_tokens"]);
        for k in ["nll_sum", "nll_mean_per_sample", "ppl"] {
            close(&got, want, k);
        }
    }
}

#[test]
fn eval_reports_bad_model_folder() {
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args(["eval", "--model", "/nonexistent/model", "--dataset"])
        .arg(fixtures().join("eval_text_only.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/model/config.json"),
        "{stderr}"
    );
}
