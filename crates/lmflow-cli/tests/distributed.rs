//! `lmflow finetune` data-parallel launchers against one process on the full batch: two CPU
//! threads (`--devices cpu,cpu`) always, two MPI processes (`mpirun -np 2 ... --distributed
//! mpi`) with the `mpi` feature (run by `.ci/run`). The final weights must agree within 1e-5.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The common `finetune` arguments: `steps` steps on the bundled model and capitals data.
fn finetune_args(out: &Path, batch: usize, full: bool, steps: usize) -> Vec<String> {
    let mut args: Vec<String> = [
        "finetune",
        "--model",
        &repo("assets/tiny-llama"),
        "--dataset",
        &repo("assets/data/capitals/train.json"),
        "--output",
        out.to_str().unwrap(),
        "--max-steps",
        &steps.to_string(),
        "--grad-accum",
        "2",
        "--batch-size",
        &batch.to_string(),
        "--lr-scheduler",
        "constant",
        "--samples",
        "0",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if full {
        args.extend(["--full", "--learning-rate", "1e-4"].map(String::from));
    } else {
        args.extend(["--learning-rate", "1e-3"].map(String::from));
    }
    args
}

fn run(mut cmd: Command) -> serde_json::Value {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    // One summary line: rank 0's.
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

/// Every tensor of the safetensors files of two folders, largest absolute difference.
fn max_weight_diff(a: &Path, b: &Path) -> f32 {
    let mut worst = 0.0f32;
    let mut files = 0;
    for entry in std::fs::read_dir(a).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        files += 1;
        let (da, db) = (
            std::fs::read(&path).unwrap(),
            std::fs::read(b.join(path.file_name().unwrap())).unwrap(),
        );
        let (ta, tb) = (
            safetensors::SafeTensors::deserialize(&da).unwrap(),
            safetensors::SafeTensors::deserialize(&db).unwrap(),
        );
        assert_eq!(ta.len(), tb.len());
        for (name, va) in ta.tensors() {
            let vb = tb.tensor(&name).unwrap();
            assert_eq!(va.dtype(), safetensors::Dtype::F32, "{name}");
            let f = |d: &[u8]| -> Vec<f32> {
                d.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            for (x, y) in f(va.data()).iter().zip(f(vb.data())) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    assert!(files > 0, "no safetensors in {}", a.display());
    worst
}

fn lmflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lmflow"))
}

/// One process with batch 4 against `launch` of two ranks with batch 2, LoRA and full.
fn check_against_single_process(launch: &dyn Fn(Vec<String>) -> Command) {
    for full in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let (single_dir, dp_dir) = (tmp.path().join("single"), tmp.path().join("dp"));
        let mut single = lmflow();
        single.args(finetune_args(&single_dir, 4, full, 3));
        let single = run(single);
        let dp = run(launch(finetune_args(&dp_dir, 2, full, 3)));
        assert_eq!(dp["steps"], 3);
        let diff = max_weight_diff(&single_dir.join("final"), &dp_dir.join("final"));
        assert!(diff < 1e-5, "full={full}: final weights differ by {diff}");
        let (a, b) = (
            single["train_loss"].as_f64().unwrap(),
            dp["train_loss"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "full={full}: train loss {a} vs {b}");
        let run_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dp_dir.join("run.json")).unwrap())
                .unwrap();
        assert_eq!(run_json["world_size"], 2);

        // Resuming that folder with one rank is refused, naming the world size.
        let mut again = lmflow();
        again.args(finetune_args(&dp_dir, 4, full, 4));
        let out = again.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("world_size: 2 in the folder's run, 1 now"),
            "{stderr}"
        );
    }
}

#[test]
fn two_cpu_threads_equal_one_process_on_the_full_batch() {
    check_against_single_process(&|args| {
        let mut cmd = lmflow();
        cmd.args(args).args(["--devices", "cpu,cpu"]);
        cmd
    });
}

#[cfg(feature = "mpi")]
#[test]
fn two_mpi_processes_equal_one_process_on_the_full_batch() {
    check_against_single_process(&|args| {
        let mut cmd = Command::new("mpirun");
        cmd.args(["-np", "2", "--oversubscribe"])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .arg(env!("CARGO_BIN_EXE_lmflow"))
            .args(args)
            .args(["--distributed", "mpi"]);
        cmd
    });
}
