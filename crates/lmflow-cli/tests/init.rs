//! `lmflow init`: a randomly initialised model folder drawn as transformers'
//! `AutoModelForCausalLM.from_config` draws it (per-tensor statistics recorded by
//! tests/fixtures/init_weights.py for LLaMA, GPT-2 and OPT), deterministic by seed, loadable and
//! trainable from scratch with `lmflow finetune --full`.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use lmflow_models::{LoadOptions, load_pretrained};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args(args)
        .output()
        .unwrap()
}

fn lmflow(args: &[&std::ffi::OsStr]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "lmflow {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn init(config: &Path, out: &Path, seed: &str) {
    let tok = repo("assets/tiny-llama");
    lmflow(&[
        "init".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--tokenizer".as_ref(),
        tok.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--seed".as_ref(),
        seed.as_ref(),
    ]);
}

/// name -> (shape, values) of a safetensors file (f32).
fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

#[test]
fn init_matches_transformers_statistics() {
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/fixtures/init_weights/transformers.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (arch, expected) in record["models"].as_object().unwrap() {
        let out = tmp.path().join(arch);
        init(
            &repo(&format!("tests/fixtures/init_weights/{arch}/config.json")),
            &out,
            "7",
        );
        let ours = read_tensors(&out.join("model.safetensors"));
        let tied = expected["tied"].as_bool().unwrap();
        let mut compared = 0;
        for (name, t) in expected["tensors"].as_object().unwrap() {
            if tied && name == "lm_head.weight" {
                assert!(!ours.contains_key(name), "{arch}: tied head written");
                continue;
            }
            let (shape, values) = ours
                .get(name)
                .unwrap_or_else(|| panic!("{arch}: {name} missing"));
            let want_shape: Vec<usize> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(shape, &want_shape, "{arch}: {name} shape");
            let (mean, std) = mean_std(values);
            let (want_mean, want_std) = (t["mean"].as_f64().unwrap(), t["std"].as_f64().unwrap());
            if want_std == 0.0 {
                // Constant tensors (norm weights 1, biases 0) are exact.
                assert!(
                    values.iter().all(|&x| f64::from(x) == want_mean),
                    "{arch}: {name}"
                );
            } else {
                // Random tensors: same distribution (>= 4096 draws: std within 8 %, mean within
                // 4 standard errors of 0).
                assert!(
                    (std / want_std - 1.0).abs() < 0.08,
                    "{arch}: {name} std {std} vs transformers {want_std}"
                );
                let se = want_std / (values.len() as f64).sqrt();
                assert!(mean.abs() < 4.0 * se + 1e-4, "{arch}: {name} mean {mean}");
            }
            compared += 1;
        }
        assert_eq!(compared, ours.len(), "{arch}: tensors beyond transformers'");
        // The padding row of the token embedding is zero exactly when transformers zeroes it.
        let pad_zero = expected["pad_row_zero"].as_bool().unwrap();
        if let Some(pad) = expected["pad_token_id"].as_u64() {
            let emb = ours
                .iter()
                .find(|(n, _)| n.ends_with("embed_tokens.weight") || n.ends_with("wte.weight"))
                .unwrap()
                .1;
            let width = emb.0[1];
            let row = &emb.1[pad as usize * width..(pad as usize + 1) * width];
            assert_eq!(row.iter().all(|&x| x == 0.0), pad_zero, "{arch}: pad row");
        }
        // The folder is complete: it loads with its tokenizer.
        let loaded = load_pretrained(&out, &Device::flex(), &LoadOptions::default()).unwrap();
        assert!(loaded.tokenizer.is_some(), "{arch}: tokenizer not copied");
    }
}

#[test]
fn init_is_deterministic_by_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let config = repo("tests/fixtures/init_weights/llama/config.json");
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    init(&config, &a, "3");
    init(&config, &b, "3");
    init(&config, &c, "4");
    let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(read(&a), read(&b), "same seed, different weights");
    assert_ne!(read(&a), read(&c), "different seeds, same weights");
    // A non-empty output folder is refused, and a vocabulary smaller than the tokenizer's.
    let out = run(&[
        "init".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--tokenizer".as_ref(),
        repo("assets/tiny-llama").as_os_str(),
        "--out".as_ref(),
        a.as_os_str(),
    ]);
    assert!(!out.status.success());
    let mut small: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    small["vocab_size"] = 1000.into();
    let small_cfg = tmp.path().join("small.json");
    std::fs::write(&small_cfg, small.to_string()).unwrap();
    let out = run(&[
        "init".as_ref(),
        "--config".as_ref(),
        small_cfg.as_os_str(),
        "--tokenizer".as_ref(),
        repo("assets/tiny-llama").as_os_str(),
        "--out".as_ref(),
        tmp.path().join("d").as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("vocab_size 1000"),
        "{err}"
    );
}

#[test]
fn pretraining_from_init_lowers_the_loss() {
    // The documented from-scratch path: init, then finetune --full on text_only data.
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("init");
    init(
        &repo("tests/fixtures/init_weights/llama/config.json"),
        &model,
        "1",
    );
    let out = tmp.path().join("run");
    let data = repo("assets/data/moby-dick-eval.json");
    let summary = lmflow(&[
        "finetune".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--full".as_ref(),
        "--dataset".as_ref(),
        data.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--block-size".as_ref(),
        "64".as_ref(),
        "--batch-size".as_ref(),
        "8".as_ref(),
        "--max-steps".as_ref(),
        "12".as_ref(),
        "--learning-rate".as_ref(),
        "3e-3".as_ref(),
        "--samples".as_ref(),
        "0".as_ref(),
        "--quiet".as_ref(),
    ]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["loss"].as_f64())
        .collect();
    assert!(losses.len() >= 2, "{metrics}");
    // A fresh model predicts about uniformly: loss near ln(2048) = 7.62.
    assert!((losses[0] - 2048f64.ln()).abs() < 0.3, "{losses:?}");
    assert!(
        losses.last().unwrap() < &(losses[0] - 0.5),
        "{losses:?}\n{summary}"
    );
    assert!(out.join("final/model.safetensors").is_file());
}
