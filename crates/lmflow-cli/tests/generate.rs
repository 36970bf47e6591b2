//! `lmflow generate` end to end: greedy tokens equal transformers' `generate` (fixture
//! tests/fixtures/models/reference.json, case llama_gqa), as JSON.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn generate_json_greedy_matches_transformers() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/fixtures/models/reference.json")).unwrap(),
    )
    .unwrap();
    let case = &reference["cases"]["llama_gqa"]["generate"];
    let prompt: Vec<u64> = case["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let output: Vec<u64> = case["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let max_new = output.len() - prompt.len();

    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "generate",
            "--model",
            &repo("tests/fixtures/models/llama_gqa"),
            // Decodes to the fixture's prompt ids (BOS added by the tokenizer).
            "--prompt",
            "Call me Is",
            "--greedy",
            "--max-new-tokens",
            &max_new.to_string(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let got: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&got["prompt_ids"]), prompt);
    assert_eq!(ids(&got["new_ids"]), output[prompt.len()..]);
    assert!(got["text"].is_string());
}

#[test]
fn generate_reports_a_missing_model_folder() {
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "generate",
            "--model",
            "/nonexistent/model",
            "--prompt",
            "hi",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
