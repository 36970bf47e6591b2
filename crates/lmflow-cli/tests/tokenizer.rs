//! `lmflow tokenizer train` and `lmflow tokenizer extend`: the trained tokenizer and the
//! extended model folder encode as transformers does with the same folders (recorded by
//! tests/fixtures/tokenizer_tools.py, which also loads the extended model in transformers), and
//! the extended model keeps the logits of every old token while each new token's logit is the
//! mean of the old ones (new embedding / head rows = mean of the old rows).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Device, Int, Tensor};
use lmflow_models::{ForwardInput, LoadOptions, Tokenizer, load_pretrained};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn record() -> Value {
    let text = std::fs::read_to_string(repo("tests/fixtures/tokenizer_tools/transformers.json"));
    serde_json::from_str(&text.unwrap()).unwrap()
}

fn lmflow(args: &[&std::ffi::OsStr]) -> String {
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

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn trained_tokenizer_encodes_as_transformers() {
    let record = record();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tok");
    let (apache, mit) = (repo("LICENSE-APACHE"), repo("LICENSE-MIT"));
    lmflow(&[
        "tokenizer".as_ref(),
        "train".as_ref(),
        "--input".as_ref(),
        apache.as_os_str(),
        mit.as_os_str(),
        "--vocab-size".as_ref(),
        "400".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let tok = Tokenizer::from_dir(&out).unwrap();
    assert_eq!(tok.vocab_size(), 400);
    for (i, special) in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .enumerate()
    {
        assert_eq!(tok.token_to_id(special), Some(i as u32));
    }
    assert_eq!(tok.eos_token_id(), Some(2));
    assert_eq!(tok.pad_token_id(), Some(0));
    assert!(tok.chat_template(None).unwrap().contains("<|im_start|>"));
    let want = &record["trained"];
    for (text, want_ids) in want["texts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want["ids"].as_array().unwrap())
    {
        let text = text.as_str().unwrap();
        let got = tok.encode(text, true).unwrap();
        assert_eq!(got, ids(want_ids), "{text:?}");
        // Byte-level: every text round-trips, with fewer tokens than bytes.
        assert_eq!(tok.decode(&got, false).unwrap(), text);
        assert!(got.len() < text.len());
    }
}

/// Logits of `ids` under the model folder `dir`: `[seq, vocab]` as rows.
fn logits(dir: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let p = load_pretrained(dir, &device, &LoadOptions::default()).unwrap();
    let row: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let input =
        Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(row, [1, ids.len()]), &device);
    let l = p
        .model
        .forward(ForwardInput::new(input), None)
        .unwrap()
        .logits;
    let [_, seq, vocab] = l.dims();
    let v: Vec<f32> = l.into_data().try_to_vec().unwrap();
    (0..seq)
        .map(|s| v[s * vocab..(s + 1) * vocab].to_vec())
        .collect()
}

#[test]
fn extended_model_keeps_old_logits_and_encodes_as_transformers() {
    let record = record();
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.txt");
    std::fs::write(&tokens, "Montgomery\nSacramento\nMontgomery\n").unwrap();
    let out = tmp.path().join("extended");
    let base = repo("tests/fixtures/models/llama_gqa");
    let line = lmflow(&[
        "tokenizer".as_ref(),
        "extend".as_ref(),
        "--model".as_ref(),
        base.as_os_str(),
        "--tokens".as_ref(),
        tokens.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let report: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(report["added_tokens"], 2);
    assert_eq!(report["vocab_size"], 402);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], 402);

    let want = &record["extended"];
    let tok = Tokenizer::from_dir(&out).unwrap();
    let text = want["text"].as_str().unwrap();
    let new_ids = tok.encode(text, true).unwrap();
    assert_eq!(new_ids, ids(&want["ids"]), "{text:?}");
    assert!(new_ids.contains(&400) && new_ids.contains(&401));

    // Text of old tokens only: same ids, same logits for the 400 old tokens, and each new
    // token's logit is the mean of the old ones (its head row is the mean row).
    let old_text = want["old_text"].as_str().unwrap();
    let old_ids = Tokenizer::from_dir(&base)
        .unwrap()
        .encode(old_text, true)
        .unwrap();
    assert_eq!(tok.encode(old_text, true).unwrap(), old_ids);
    let before = logits(&base, &old_ids);
    let after = logits(&out, &old_ids);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.len(), 402);
        for (x, y) in b.iter().zip(&a[..400]) {
            assert!((x - y).abs() <= 1e-5, "old logit {x} -> {y}");
        }
        let mean = b.iter().map(|&x| f64::from(x)).sum::<f64>() / 400.0;
        for new in &a[400..] {
            assert!(
                (f64::from(*new) - mean).abs() < 1e-4,
                "{new} vs mean {mean}"
            );
        }
    }
    // transformers loaded the same folder and saw the same (recorded by the fixture script).
    assert_eq!(want["transformers_vocab"], 402);
    assert!(want["old_logits_max_diff"].as_f64().unwrap() < 1e-5);
}

#[test]
fn extend_from_training_adds_the_domain_words() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("extended");
    let base = repo("tests/fixtures/models/llama_gqa");
    let (apache, mit) = (repo("LICENSE-APACHE"), repo("LICENSE-MIT"));
    let line = lmflow(&[
        "tokenizer".as_ref(),
        "extend".as_ref(),
        "--model".as_ref(),
        base.as_os_str(),
        "--train".as_ref(),
        apache.as_os_str(),
        mit.as_os_str(),
        "--vocab-size".as_ref(),
        "600".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let report: Value = serde_json::from_str(line.trim()).unwrap();
    let words: Vec<&str> = report["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(words.len() >= 10, "{words:?}");
    assert!(words.contains(&"License"), "{words:?}");
    assert_eq!(report["vocab_size"], 400 + words.len());
    let tok = Tokenizer::from_dir(&out).unwrap();
    for w in &words {
        assert_eq!(tok.encode(w, false).unwrap().len(), 1, "{w:?}");
    }
    let want = &record()["extended_trained"];
    assert_eq!(report["tokens"], want["tokens"]);
}

#[test]
fn extend_refuses_tokens_already_in_the_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.txt");
    std::fs::write(&tokens, "<|im_end|>\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args(["tokenizer", "extend", "--model"])
        .arg(repo("tests/fixtures/models/llama_gqa"))
        .arg("--tokens")
        .arg(&tokens)
        .arg("--out")
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in the vocabulary"), "{err}");
    assert!(!tmp.path().join("x").exists());
}
