//! `lmflow eval --adapter`: NLL and multiple-choice accuracy of a model with a PEFT LoRA adapter
//! equal transformers + PEFT (tests/fixtures/eval_adapter.py) and equal `lmflow eval` of the
//! folder `lmflow merge` writes.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn base() -> PathBuf {
    fixtures().join("models/llama_gqa")
}

fn adapter() -> PathBuf {
    fixtures().join("eval_adapter/adapter")
}

fn reference() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("eval_adapter/reference.json")).unwrap(),
    )
    .unwrap()
}

/// Runs `lmflow eval` with `args` and parses its one JSON line.
fn eval(args: &[&std::ffi::OsStr]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .arg("eval")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lmflow eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected, got {stdout:?}");
    serde_json::from_str(lines[0]).unwrap()
}

fn nll_args<'a>(model: &'a Path, extra: &'a [&'a str]) -> Vec<&'a std::ffi::OsStr> {
    let mut v: Vec<&std::ffi::OsStr> = vec![
        "--model".as_ref(),
        model.as_os_str(),
        "--metric".as_ref(),
        "nll".as_ref(),
    ];
    v.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    v
}

fn rel_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1e-12),
        "{what}: got {got}, want {want} (tolerance {tol})"
    );
}

#[test]
fn eval_with_adapter_equals_peft_and_the_merged_model() {
    let reference = reference();
    let dataset = fixtures().join("models/eval_text_only.json");
    let adapter = adapter();
    let base = base();
    let mut args = nll_args(&base, &[]);
    args.extend([
        "--dataset".as_ref(),
        dataset.as_os_str(),
        "--adapter".as_ref(),
        adapter.as_os_str(),
    ]);
    let with_adapter = eval(&args);
    let want = &reference["adapter"]["nll"];
    assert_eq!(with_adapter["metric"], "nll");
    assert_eq!(with_adapter["predicted_tokens"], want["predicted_tokens"]);
    assert_eq!(with_adapter["samples"], want["samples"]);
    for k in ["nll_sum", "nll_mean_per_sample", "ppl"] {
        rel_close(
            with_adapter[k].as_f64().unwrap(),
            want[k].as_f64().unwrap(),
            1e-4,
            &format!("{k} vs transformers + peft"),
        );
    }
    // The adapter changes the figures (it is applied, not ignored).
    let base_nll = reference["base"]["nll"]["nll_sum"].as_f64().unwrap();
    assert!((with_adapter["nll_sum"].as_f64().unwrap() - base_nll).abs() > 1.0);

    // `lmflow merge` (default --model: the adapter's base_model_name_or_path), then eval the
    // merged folder: same figures to 1e-5.
    let tmp = tempfile::tempdir().unwrap();
    let merged = tmp.path().join("merged");
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .arg("merge")
        .arg("--adapter")
        .arg(&adapter)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lmflow merge failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(merged.join(f).is_file(), "merge wrote no {f}");
    }
    let mut args = nll_args(&merged, &[]);
    args.extend(["--dataset".as_ref(), dataset.as_os_str()]);
    let merged_eval = eval(&args);
    assert_eq!(
        merged_eval["predicted_tokens"],
        with_adapter["predicted_tokens"]
    );
    for k in ["nll_sum", "nll_mean_per_sample", "ppl"] {
        rel_close(
            merged_eval[k].as_f64().unwrap(),
            with_adapter[k].as_f64().unwrap(),
            1e-5,
            &format!("{k}: merged vs adapter"),
        );
    }
}

#[test]
fn merge_bf16_writes_the_bf16_weights_peft_merges() {
    // tests/fixtures/bf16_logits.py: PEFT's merge_and_unload of the same adapter into the base
    // loaded in bfloat16 (the update computed in f32, rounded once), and transformers loading
    // the folder `lmflow merge --dtype bf16` wrote.
    let tmp = tempfile::tempdir().unwrap();
    let merged = tmp.path().join("merged");
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .arg("merge")
        .arg("--model")
        .arg(fixtures().join("peft/base"))
        .arg("--adapter")
        .arg(fixtures().join("peft/all_linear"))
        .args(["--dtype", "bf16", "--out"])
        .arg(&merged)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lmflow merge failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    let got_bytes = std::fs::read(merged.join("model.safetensors")).unwrap();
    let want_bytes = std::fs::read(fixtures().join("bf16/merged.safetensors")).unwrap();
    let got = safetensors::SafeTensors::deserialize(&got_bytes).unwrap();
    let want = safetensors::SafeTensors::deserialize(&want_bytes).unwrap();
    assert_eq!(got.len(), want.len());
    for (name, w) in want.tensors() {
        let g = got.tensor(&name).unwrap();
        assert_eq!(g.dtype(), safetensors::Dtype::BF16, "{name}");
        assert_eq!(g.shape(), w.shape(), "{name}");
        let differ = g
            .data()
            .chunks_exact(2)
            .zip(w.data().chunks_exact(2))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differ, 0,
            "{name}: {differ} bf16 values differ from PEFT's merge"
        );
    }
    let check = &serde_json::from_str::<Value>(
        &std::fs::read_to_string(fixtures().join("bf16/reference.json")).unwrap(),
    )
    .unwrap()["rust_merged_bf16"];
    assert_eq!(check["loaded_by_transformers"], true, "{check}");
    assert_eq!(check["param_dtypes"], serde_json::json!(["torch.bfloat16"]));
}

#[test]
fn eval_bf16_model_with_f32_adapter() {
    // The adapter file is f32; with --dtype bf16 the adapter path runs in f32 (as PEFT) and the
    // figures stay within bf16 rounding of the f32 reference (1e-3; the base model alone is 1%
    // away).
    let reference = reference();
    let dataset = fixtures().join("models/eval_text_only.json");
    let (base, adapter) = (base(), adapter());
    let mut args = nll_args(&base, &["--dtype", "bf16"]);
    args.extend([
        "--dataset".as_ref(),
        dataset.as_os_str(),
        "--adapter".as_ref(),
        adapter.as_os_str(),
    ]);
    let got = eval(&args);
    let want = reference["adapter"]["nll"]["nll_sum"].as_f64().unwrap();
    rel_close(got["nll_sum"].as_f64().unwrap(), want, 1e-3, "bf16 nll_sum");
}

#[test]
fn eval_accuracy_with_and_without_adapter_equals_peft() {
    let reference = reference();
    let dataset = fixtures().join("eval_adapter/mc.json");
    let base = base();
    let adapter = adapter();
    for (key, with_adapter) in [("base", false), ("adapter", true)] {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--model".as_ref(),
            base.as_os_str(),
            "--dataset".as_ref(),
            dataset.as_os_str(),
            "--metric".as_ref(),
            "accuracy".as_ref(),
        ];
        if with_adapter {
            args.extend(["--adapter".as_ref(), adapter.as_os_str()]);
        }
        let got = eval(&args);
        let want = &reference[key]["accuracy"];
        assert_eq!(got["metric"], "accuracy");
        assert_eq!(got["mode"], "multiple_choice");
        assert_eq!(got["samples"], want["samples"], "{key}");
        assert_eq!(got["correct"], want["correct"], "{key}");
        rel_close(
            got["accuracy"].as_f64().unwrap(),
            want["accuracy"].as_f64().unwrap(),
            1e-12,
            key,
        );
    }
}

#[test]
fn eval_rope_scaling_override_is_applied() {
    let dataset = fixtures().join("models/eval_text_only.json");
    let base = base();
    let run = |extra: &[&str]| {
        let mut args = nll_args(&base, extra);
        args.extend(["--dataset".as_ref(), dataset.as_os_str()]);
        eval(&args)["nll_sum"].as_f64().unwrap()
    };
    let plain = run(&[]);
    let scaled = run(&["--rope-scaling", r#"{"rope_type":"linear","factor":4.0}"#]);
    assert!(
        (plain - scaled).abs() > 1e-3,
        "--rope-scaling changed nothing ({plain} vs {scaled})"
    );
    // A bad override is refused with the flag named.
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .arg("eval")
        .arg("--model")
        .arg(&base)
        .arg("--dataset")
        .arg(&dataset)
        .args(["--rope-scaling", "[1]"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--rope-scaling"), "{err}");
}
