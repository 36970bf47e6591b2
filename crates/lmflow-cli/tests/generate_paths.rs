//! `lmflow generate --adapter` (greedy ids equal PEFT's `generate`, fixture
//! tests/fixtures/eval_adapter.py) and `lmflow generate --draft-model` (speculative greedy
//! decoding gives the target model's own greedy ids, which equal transformers').
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo(path)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// `lmflow generate --json --greedy` on "Call me Is" with `extra`; the first output line.
fn generate(max_new: usize, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "generate",
            "--model",
            &repo("tests/fixtures/models/llama_gqa"),
            "--prompt",
            "Call me Is",
            "--greedy",
            "--max-new-tokens",
            &max_new.to_string(),
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(line.lines().next().unwrap()).unwrap()
}

#[test]
fn generate_with_adapter_matches_peft() {
    let reference = json("tests/fixtures/eval_adapter/reference.json");
    let want = &reference["adapter"]["generate"];
    let new = ids(&want["new_ids"]);
    let got = generate(
        new.len(),
        &["--adapter", &repo("tests/fixtures/eval_adapter/adapter")],
    );
    assert_eq!(ids(&got["prompt_ids"]), ids(&want["prompt_ids"]));
    assert_eq!(ids(&got["new_ids"]), new);
}

#[test]
fn generate_with_draft_model_gives_the_target_greedy_tokens() {
    let reference = json("tests/fixtures/models/reference.json");
    let case = &reference["cases"]["llama_gqa"]["generate"];
    let prompt = ids(&case["prompt"]);
    let output = ids(&case["output"]);
    let max_new = output.len() - prompt.len();
    // qwen2 fixture: same tokenizer and vocabulary, different weights (so drafts get rejected).
    for gamma in ["1", "4"] {
        let got = generate(
            max_new,
            &[
                "--draft-model",
                &repo("tests/fixtures/models/qwen2"),
                "--gamma",
                gamma,
            ],
        );
        assert_eq!(ids(&got["prompt_ids"]), prompt);
        assert_eq!(
            ids(&got["new_ids"]),
            output[prompt.len()..],
            "gamma {gamma}"
        );
    }
}
