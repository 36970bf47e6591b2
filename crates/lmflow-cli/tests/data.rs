//! `lmflow data inspect|stats` through the binary: JSON output, masks, and clear errors.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn lmflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn inspect_json_shows_text_ids_and_assistant_only_labels() {
    let out = lmflow(&[
        "data",
        "inspect",
        "--dataset",
        &repo("assets/data/capitals/train.json"),
        "--tokenizer",
        &repo("assets/tiny-llama"),
        "--limit",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    let text = first["text"].as_str().unwrap();
    assert!(text.starts_with("<|im_start|>user\nWhat is the capital of Alabama?<|im_end|>"));
    let ids = first["input_ids"].as_array().unwrap();
    let labels = first["labels"].as_array().unwrap();
    assert_eq!(ids.len(), labels.len());
    // The user turn is masked, the answer (and its end-of-turn token) is trained.
    let trained: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] != -100).collect();
    assert!(!trained.is_empty());
    assert!(labels[0] == -100 && labels[5] == -100);
    let im_end = 2; // <|im_end|> in the bundled tokenizer
    let last_trained = *trained.last().unwrap();
    assert!(
        trained.iter().any(|&i| ids[i] == im_end),
        "end-of-turn token is trained"
    );
    assert_eq!(labels[last_trained], ids[last_trained]);
}

#[test]
fn stats_json_counts_trained_tokens() {
    let out = lmflow(&[
        "data",
        "stats",
        "--dataset",
        &repo("assets/data/capitals/train.json"),
        "--tokenizer",
        &repo("assets/tiny-llama"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["samples"], 100);
    let (trained, total) = (
        s["trained_tokens"].as_u64().unwrap(),
        s["total_tokens"].as_u64().unwrap(),
    );
    assert!(trained > 0 && trained < total, "{trained} of {total}");
}

#[test]
fn inspect_reports_bad_input_with_file_instance_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"type": "conversation", "instances": [{"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "assistant", "content": "no user turn"}]}]}"#,
    )
    .unwrap();
    let out = lmflow(&[
        "data",
        "inspect",
        "--dataset",
        bad.to_str().unwrap(),
        "--tokenizer",
        &repo("assets/tiny-llama"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("instance 1") && err.contains("role"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
