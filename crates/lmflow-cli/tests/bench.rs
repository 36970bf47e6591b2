//! `lmflow bench` on the bundled tiny model: one JSON line with positive throughput and memory
//! figures, for training (LoRA and full) and decoding.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .arg("bench")
        .args(args)
        .args(["--model", &repo("assets/tiny-llama")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    serde_json::from_str(text.trim()).unwrap()
}

#[test]
fn bench_train_reports_throughput_and_memory() {
    for method in ["lora", "full"] {
        let v = bench(&[
            "train", "--method", method, "--batch", "2", "--seq", "16", "--steps", "2", "--warmup",
            "1",
        ]);
        assert_eq!(v["method"], method);
        assert_eq!(
            (v["batch"].as_u64(), v["seq"].as_u64()),
            (Some(2), Some(16))
        );
        let (tok_s, step_s) = (v["tok_s"].as_f64().unwrap(), v["step_s"].as_f64().unwrap());
        assert!(tok_s > 0.0 && step_s > 0.0);
        assert!(
            (tok_s * step_s - 32.0).abs() < 1e-6,
            "tok_s = batch·seq / step_s"
        );
        assert!(v["peak_rss_mib"].as_f64().unwrap() > 1.0);
    }
}

#[test]
fn bench_decode_reports_prefill_and_decode_rates() {
    let v = bench(&[
        "decode",
        "--batch",
        "2",
        "--prompt",
        "8",
        "--new-tokens",
        "4",
        "--repeats",
        "1",
    ]);
    assert_eq!(v["method"], "greedy");
    assert!(v["prefill_tok_s"].as_f64().unwrap() > 0.0);
    assert!(v["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_mib"].as_f64().unwrap() > 1.0);
}

#[test]
fn bench_train_runs_in_bf16_and_refuses_unknown_dtypes() {
    for method in ["lora", "qlora"] {
        let v = bench(&[
            "train", "--method", method, "--dtype", "bf16", "--batch", "1", "--seq", "8",
            "--steps", "1", "--warmup", "0",
        ]);
        assert_eq!(
            (v["method"].as_str(), v["dtype"].as_str()),
            (Some(method), Some("bf16"))
        );
        assert!(v["step_s"].as_f64().unwrap() > 0.0);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args(["bench", "train", "--dtype", "f8", "--steps", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("f8"));
}
