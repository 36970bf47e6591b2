//! Reliability of the `lmflow` binary on careless or hostile input (issue 13): run folders that
//! cannot mix, non-finite training that stops, numeric flags checked before work starts, merges
//! that never overwrite, generation bounded by the context. See docs/reliability.md.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn lmflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clear failure: non-zero exit, no panic, `needle` in the message.
fn assert_refused(o: &Output, needle: &str) -> String {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected a failure mentioning {needle:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    err
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// `lmflow finetune` of the bundled tiny model on the bundled training data into `out`.
fn finetune(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "finetune".to_string(),
        "--model".into(),
        repo("assets/tiny-llama"),
        "--dataset".into(),
        repo("assets/data/capitals/train.json"),
        "--output".into(),
        out.display().to_string(),
        "--samples".into(),
        "0".into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lmflow(&args)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn run_folders_cannot_mix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let r4 = ["--lora-r", "4", "--max-steps", "2", "--save-steps", "2"];
    assert_ok(&finetune(&out, &r4));
    let run = read_json(&out.join("run.json"));
    assert_eq!(run["rank"], 4);
    assert_eq!(run["method"], "lora");
    assert!(run["dataset"]["bytes"].as_u64().unwrap() > 0);

    // Resuming with another rank would write a rank-8 adapter over rank-4 checkpoints.
    let r8 = ["--lora-r", "8", "--max-steps", "4", "--save-steps", "2"];
    assert_refused(&finetune(&out, &r8), "rank: 4 in the folder's run, 8 now");
    // Other settings that change what a checkpoint means.
    assert_refused(
        &finetune(&out, &["--max-steps", "4", "--lora-r", "4", "--full"]),
        "method",
    );
    assert_refused(
        &finetune(
            &out,
            &["--max-steps", "4", "--lora-r", "4", "--optim", "lion"],
        ),
        "optimizer: adamw in the folder's run, lion now",
    );
    // --no-resume over checkpoints needs --overwrite-output.
    let err = assert_refused(
        &finetune(&out, &["--lora-r", "4", "--max-steps", "1", "--no-resume"]),
        "--overwrite-output",
    );
    assert!(err.contains("checkpoint-2"), "{err}");
    assert!(out.join("checkpoint-2").is_dir());

    // --overwrite-output clears the earlier run first: no checkpoint-2 is left to resume.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let r8_short = ["--lora-r", "8", "--max-steps", "1", "--save-steps", "1"];
    let mut args = r8_short.to_vec();
    args.push("--overwrite-output");
    assert_ok(&finetune(&out, &args));
    assert!(!out.join("checkpoint-2").exists());
    assert!(out.join("checkpoint-1").is_dir());
    assert!(
        out.join("notes.txt").is_file(),
        "files a run does not write are kept"
    );
    assert_eq!(read_json(&out.join("run.json"))["rank"], 8);
    assert_eq!(read_json(&out.join("final/adapter_config.json"))["r"], 8);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1, "{metrics}");
    // The same settings resume.
    let more = ["--lora-r", "8", "--max-steps", "2", "--save-steps", "1"];
    assert_ok(&finetune(&out, &more));
    assert!(out.join("checkpoint-2").is_dir());
}

#[test]
fn a_diverging_run_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = finetune(
        &out,
        &[
            "--learning-rate",
            "1e30",
            "--max-steps",
            "6",
            "--save-steps",
            "1",
        ],
    );
    let err = assert_refused(&o, "not a finite number");
    let step: usize = err
        .split("step ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {err}"));
    assert!(!out.join(format!("checkpoint-{step}")).exists());
    assert!(!out.join("final").exists());
    if step > 1 {
        let last_good = out.join(format!("checkpoint-{}", step - 1));
        assert!(last_good.join("trainer_state.json").is_file(), "{err}");
    }
}

#[test]
fn numeric_flags_are_checked_before_work_starts() {
    let dir = tempfile::tempdir().unwrap();
    let text_only = dir.path().join("text.json");
    std::fs::write(
        &text_only,
        r#"{"type": "text_only", "instances": [{"text": "Paris is the capital of France."},
            {"text": "Rome is the capital of Italy."}]}"#,
    )
    .unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--lora-alpha", "nan"], "--lora-alpha"),
        (&["--lora-alpha", "inf"], "--lora-alpha"),
        (&["--learning-rate", "nan"], "--learning-rate"),
        (&["--learning-rate", "inf"], "--learning-rate"),
        (&["--epochs", "inf"], "--epochs"),
        (&["--lora-r", "0"], "--lora-r"),
        (&["--lora-dropout", "1.5"], "--lora-dropout"),
        (&["--warmup-ratio", "nan"], "--warmup-ratio"),
        (&["--max-steps", "0"], "--max-steps"),
        (&["--lora-r", "1000000000000"], "rank 1000000000000"),
        (&["--block-size", "1"], "--block-size"),
    ];
    for (i, (flags, needle)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("run{i}"));
        let mut args = vec![
            "finetune",
            "--model",
            "",
            "--dataset",
            text_only.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--max-steps",
            "1",
            "--samples",
            "0",
            "--quiet",
        ];
        let model = repo("assets/tiny-llama");
        args[2] = &model;
        if flags[0] == "--max-steps" {
            args.drain(7..9);
        }
        args.extend_from_slice(flags);
        assert_refused(&lmflow(&args), needle);
        assert!(!out.join("final").exists(), "{flags:?} trained something");
    }
}

/// A copy of the bundled model in `dir/model` and a one-step adapter for it in `dir/adapter`.
fn model_and_adapter(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(repo("assets/tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let run = dir.join("run");
    let o = lmflow(&[
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        &repo("assets/data/capitals/train.json"),
        "--output",
        run.to_str().unwrap(),
        "--max-steps",
        "1",
        "--samples",
        "0",
        "--quiet",
    ]);
    assert_ok(&o);
    (model, run.join("final"))
}

#[test]
fn merge_never_writes_over_its_inputs_or_a_non_empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (model, adapter) = model_and_adapter(dir.path());
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let merge = |out: &Path| {
        lmflow(&[
            "merge",
            "--model",
            model.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    assert_refused(&merge(&model), "is the --model folder");
    // The same folder through `..`.
    assert_refused(
        &merge(&model.join("..").join("model")),
        "is the --model folder",
    );
    assert_refused(&merge(&model.join("sub")), "inside the --model folder");
    assert_refused(
        &merge(&adapter.join("merged")),
        "inside the --adapter folder",
    );
    assert_refused(&merge(dir.path()), "contains the --model folder");
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    assert_refused(&merge(&busy), "not empty");
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).unwrap(),
        weights
    );
    assert!(!model.join("sub").exists());

    let merged = dir.path().join("merged");
    assert_ok(&merge(&merged));
    assert!(merged.join("config.json").is_file());
    // An existing but empty folder is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_ok(&merge(&empty));
}

#[test]
fn generate_bounds_max_new_tokens_by_the_context() {
    let model = repo("assets/tiny-llama");
    // 1e8 new tokens would preallocate a KV cache of tens of gigabytes; the context is 256.
    let o = lmflow(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "100000000",
        "--min-new-tokens",
        "100000000",
        "--json",
    ]);
    assert_ok(&o);
    assert!(stderr(&o).contains("clamped to"), "{}", stderr(&o));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let total =
        line["prompt_ids"].as_array().unwrap().len() + line["new_ids"].as_array().unwrap().len();
    assert_eq!(total, 256);
    assert_eq!(line["finish_reason"], "length");

    // A prompt that fills the context leaves no room: a clear error.
    let long = "Paris Rome Berlin ".repeat(200);
    assert_refused(
        &lmflow(&["generate", "--model", &model, "--prompt", &long]),
        "no room to generate",
    );
}

#[test]
fn eval_on_zero_tokens_is_an_error_not_loss_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("empty.json");
    std::fs::write(
        &data,
        r#"{"type": "text_only", "instances": [{"text": ""}, {"text": ""}]}"#,
    )
    .unwrap();
    let o = lmflow(&[
        "eval",
        "--model",
        &repo("assets/tiny-llama"),
        "--dataset",
        data.to_str().unwrap(),
    ]);
    assert_refused(&o, "no token to score");
}

/// `lmflow finetune` of the bundled model as a child process, for signals.
fn spawn_finetune(out: &Path, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "finetune",
            "--model",
            &repo("assets/tiny-llama"),
            "--dataset",
            &repo("assets/data/capitals/train.json"),
            "--output",
            out.to_str().unwrap(),
            "--samples",
            "0",
            "--quiet",
            "--lora-r",
            "4",
        ])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the run has logged its first metrics (training has started).
fn wait_for_training(out: &Path) {
    let start = std::time::Instant::now();
    while !out.join("metrics.jsonl").is_file() {
        assert!(
            start.elapsed().as_secs() < 120,
            "training did not start within 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn sigint(child: &std::process::Child) {
    // SAFETY: sends a signal to our own child process.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0);
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_cleanly_and_the_run_resumes() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // No periodic checkpoint: the one found after Ctrl-C is the interrupt's.
    let args = ["--max-steps", "100000", "--save-steps", "1000000"];
    let child = spawn_finetune(&out, &args);
    wait_for_training(&out);
    sigint(&child);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{:?}: {err}", o.status.signal());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("interrupted: stopped after step"), "{err}");
    let checkpoints: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    let ckpt = out.join(&checkpoints[0]);
    let step: u64 = checkpoints[0]["checkpoint-".len()..].parse().unwrap();
    assert!(step >= 1);
    assert!(err.contains(&format!("after step {step}")), "{err}");
    assert_eq!(
        read_json(&ckpt.join("trainer_state.json"))["global_step"],
        step
    );
    assert!(ckpt.join("optimizer.bpk").is_file());
    assert!(
        !out.join("final").exists(),
        "an interrupted run has no final/"
    );

    // The same command resumes from it (here: one more step).
    let more = (step + 1).to_string();
    let o = finetune(
        &out,
        &[
            "--lora-r",
            "4",
            "--max-steps",
            &more,
            "--save-steps",
            "1000000",
        ],
    );
    assert_ok(&o);
    assert_eq!(
        read_json(&out.join(format!("checkpoint-{more}/trainer_state.json")))["global_step"],
        step + 1
    );
    assert!(out.join("final").is_dir());
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child = spawn_finetune(&out, &["--max-steps", "100000", "--save-steps", "1"]);
    wait_for_training(&out);
    sigint(&child);
    sigint(&child);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{:?}: {err}", o.status.signal());
    assert!(!err.contains("panicked"), "{err}");
    // Whatever was saved before is complete (checkpoints are written atomically).
    for e in std::fs::read_dir(&out).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") {
            assert!(
                out.join(&name).join("trainer_state.json").is_file(),
                "{name}"
            );
        }
    }
}
