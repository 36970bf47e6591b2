//! The main job end to end: LoRA fine-tuning of the bundled tiny model (`assets/lmflow-tiny`,
//! as in the README) on the bundled capitals data, through the `lmflow` binary.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn finetune_lora_on_bundled_data_lowers_eval_loss_and_resumes() {
    let out = tempfile::tempdir().unwrap();
    let run = |max_steps: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
            .args([
                "finetune",
                "--model",
                &repo("assets/lmflow-tiny"),
                "--dataset",
                &repo("assets/data/capitals/train.json"),
                "--eval-dataset",
                &repo("assets/data/capitals/eval.json"),
                "--output",
                out.path().to_str().unwrap(),
                "--max-steps",
                max_steps,
                "--save-steps",
                "10",
                "--lora-r",
                "16",
                "--lora-alpha",
                "32",
                "--samples",
                "1",
                "--quiet",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = String::from_utf8(output.stdout).unwrap();
        serde_json::from_str::<serde_json::Value>(line.trim()).unwrap()
    };
    let first = run("10");
    assert_eq!(first["steps"], 10);
    let before = first["eval_loss_before"].as_f64().unwrap();
    let after_10 = first["eval_loss_after"].as_f64().unwrap();
    assert!(after_10 < before, "eval loss {before} -> {after_10}");
    assert_eq!(first["samples"].as_array().unwrap().len(), 1);

    // Same output folder, longer run: resumes from checkpoint-10 and keeps improving.
    let second = run("30");
    assert_eq!(second["steps"], 30);
    let after_30 = second["eval_loss_after"].as_f64().unwrap();
    assert!(after_30 < after_10, "eval loss {after_10} -> {after_30}");

    let final_dir = out.path().join("final");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(final_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 16);
    assert!(final_dir.join("adapter_model.safetensors").is_file());
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [5, 10, 15, 20, 25, 30]);
    assert!(out.path().join("loss.png").is_file());
}

#[test]
fn finetune_reports_a_missing_dataset_without_panicking() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "finetune",
            "--model",
            &repo("assets/tiny-llama"),
            "--dataset",
            "/nonexistent/data.json",
            "--output",
            out.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("/nonexistent/data.json"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Runs `lmflow finetune ARGS --quiet`, asserts it succeeded and returns its JSON summary.
fn finetune(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .arg("finetune")
        .args(args)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap()
}

fn eval_losses(summary: &serde_json::Value) -> (f64, f64) {
    (
        summary["eval_loss_before"].as_f64().unwrap(),
        summary["eval_loss_after"].as_f64().unwrap(),
    )
}

#[test]
fn finetune_in_bf16_trains_f32_adapters_and_warns_that_full_is_pure_bf16() {
    let out = tempfile::tempdir().unwrap();
    let summary = finetune(&[
        "--model",
        &repo("assets/tiny-llama"),
        "--dataset",
        &repo("assets/data/capitals/train.json"),
        "--eval-dataset",
        &repo("assets/data/capitals/eval.json"),
        "--output",
        out.path().to_str().unwrap(),
        "--max-steps",
        "15",
        "--dtype",
        "bf16",
        "--samples",
        "0",
    ]);
    let (before, after) = eval_losses(&summary);
    assert!(after < before - 0.5, "eval loss {before} -> {after}");
    let bytes = std::fs::read(out.path().join("final/adapter_model.safetensors")).unwrap();
    let adapter = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        adapter
            .tensors()
            .iter()
            .all(|(_, t)| t.dtype() == safetensors::Dtype::F32)
    );

    let full = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "finetune",
            "--model",
            &repo("assets/tiny-llama"),
            "--dataset",
        ])
        .arg(repo("assets/data/capitals/train.json"))
        .arg("--output")
        .arg(full.path())
        .args([
            "--full",
            "--dtype",
            "bf16",
            "--max-steps",
            "1",
            "--samples",
            "0",
            "--quiet",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("trains pure bf16"), "{err}");
    let bytes = std::fs::read(full.path().join("final/model.safetensors")).unwrap();
    let model = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        model
            .tensors()
            .iter()
            .all(|(_, t)| t.dtype() == safetensors::Dtype::BF16)
    );

    // The dtype is part of the run's identity: resuming that folder in f32 is refused by name.
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "finetune",
            "--model",
            &repo("assets/tiny-llama"),
            "--dataset",
        ])
        .arg(repo("assets/data/capitals/train.json"))
        .arg("--output")
        .arg(full.path())
        .args(["--full", "--max-steps", "2", "--samples", "0", "--quiet"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("dtype: bf16 in the folder's run, f32 now"),
        "{err}"
    );
}

#[test]
fn finetune_qlora_trains_adapters_on_an_nf4_base() {
    let out = tempfile::tempdir().unwrap();
    let summary = finetune(&[
        "--model",
        &repo("assets/tiny-llama"),
        "--dataset",
        &repo("assets/data/capitals/train.json"),
        "--eval-dataset",
        &repo("assets/data/capitals/eval.json"),
        "--output",
        out.path().to_str().unwrap(),
        "--max-steps",
        "15",
        "--qlora",
        "--samples",
        "0",
    ]);
    assert_eq!(summary["method"], "qlora");
    let (before, after) = eval_losses(&summary);
    assert!(after < before - 0.5, "eval loss {before} -> {after}");
    assert!(out.path().join("final/adapter_model.safetensors").is_file());
}

#[test]
fn finetune_packs_text_only_data_for_continued_pretraining() {
    let out = tempfile::tempdir().unwrap();
    let data = repo("assets/data/moby-dick-eval.json");
    let summary = finetune(&[
        "--model",
        &repo("assets/tiny-llama"),
        "--dataset",
        &data,
        "--eval-dataset",
        &data,
        "--output",
        out.path().to_str().unwrap(),
        "--block-size",
        "256",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--learning-rate",
        "3e-3",
        "--samples",
        "0",
    ]);
    // 40 paragraphs (those longer than 256 tokens split into consecutive blocks, nothing cut)
    // packed into 256-token rows, two rows per step: fewer steps than one sample per row.
    let steps = summary["steps"].as_u64().unwrap();
    let samples = summary["train_samples"].as_u64().unwrap();
    assert!(samples >= 40);
    assert!(
        2 * steps < samples,
        "{steps} steps for {samples} samples: not packed"
    );
    let (total, kept) = (
        summary["train_tokens"].as_u64().unwrap(),
        summary["train_tokens_kept"].as_u64().unwrap(),
    );
    // Only a lone last token of a split paragraph may be dropped.
    assert!(
        kept <= total && kept + 40 >= total,
        "kept {kept} of {total} tokens"
    );
    assert_eq!(summary["block_size"].as_u64(), Some(256));
    let (before, after) = eval_losses(&summary);
    assert!(after < before, "eval loss {before} -> {after}");
}

#[test]
fn gradient_checkpointing_gives_the_same_run() {
    let run = |extra: &[&str]| {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--model".to_string(),
            repo("assets/tiny-llama"),
            "--dataset".to_string(),
            repo("assets/data/capitals/train.json"),
            "--output".to_string(),
            out.path().to_str().unwrap().to_string(),
            "--max-steps".to_string(),
            "4".to_string(),
            "--seed".to_string(),
            "5".to_string(),
            "--samples".to_string(),
            "0".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        finetune(&refs)["train_loss"].as_f64().unwrap()
    };
    let plain = run(&[]);
    let checkpointed = run(&["--gradient-checkpointing"]);
    assert!(
        (plain - checkpointed).abs() < 1e-4,
        "train loss {plain} without checkpointing, {checkpointed} with"
    );
    // Dropout would draw different masks in the recomputation: refused before any work.
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "finetune",
            "--model",
            &repo("assets/tiny-llama"),
            "--dataset",
        ])
        .arg(repo("assets/data/capitals/train.json"))
        .args([
            "--gradient-checkpointing",
            "--lora-dropout",
            "0.1",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--lora-dropout"));
}
