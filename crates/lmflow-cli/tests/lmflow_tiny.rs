//! The toolkit-made bundled model `assets/lmflow-tiny` against transformers (recorded by
//! tests/fixtures/lmflow_tiny.py with the folder as `lmflow` wrote it): `lmflow eval` gives
//! transformers' NLL on the held-out Moby-Dick set, `lmflow generate` its greedy tokens, and a
//! ChatML prompt encodes to the same ids.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn record() -> Value {
    let text = std::fs::read_to_string(repo("tests/fixtures/lmflow_tiny/transformers.json"));
    serde_json::from_str(&text.unwrap()).unwrap()
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

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn lmflow_tiny_eval_and_greedy_match_transformers() {
    let record = record();
    let model = repo("assets/lmflow-tiny");
    let model = model.to_str().unwrap();
    let data = repo("assets/data/moby-dick-eval.json");
    let line = lmflow(&[
        "eval",
        "--model",
        model,
        "--dataset",
        data.to_str().unwrap(),
    ]);
    let eval: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(
        eval["predicted_tokens"].as_u64(),
        record["eval_predicted_tokens"].as_u64()
    );
    let (ours, theirs) = (
        eval["nll_sum"].as_f64().unwrap(),
        record["eval_nll_sum"].as_f64().unwrap(),
    );
    assert!(
        ((ours - theirs) / theirs).abs() < 1e-5,
        "nll_sum {ours} vs transformers {theirs}"
    );

    let line = lmflow(&[
        "generate",
        "--model",
        model,
        "--prompt",
        record["prompt"].as_str().unwrap(),
        "--max-new-tokens",
        "20",
        "--greedy",
        "--json",
    ]);
    let out: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(ids(&out["new_ids"]), ids(&record["greedy_new_ids"]));

    // The ChatML prompt of the capitals demo (rendered by transformers' template) encodes to the
    // same ids: the special tokens are single tokens.
    let tok = lmflow_models::Tokenizer::from_dir(repo("assets/lmflow-tiny")).unwrap();
    let chat = record["chat_prompt"].as_str().unwrap();
    let ours: Vec<u64> = tok
        .encode(chat, true)
        .unwrap()
        .into_iter()
        .map(u64::from)
        .collect();
    assert_eq!(ours, ids(&record["chat_prompt_ids"]));
}
