//! LLaVA through the `lmflow` binary, on the tiny LLaVA fixture (tests/fixtures/llava/model)
//! and its drawn images: stage 1 (`--tune-mm-mlp-adapter`) trains the projector only and
//! writes a loadable model; stage 2 (`--pretrain-mm-mlp-adapter`, LoRA) writes an adapter on the
//! language model with the projector as `modules_to_save`; `eval` scores the trained model
//! lower than the base; `generate --image` runs with both.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn lmflow(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "lmflow {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn write_data(dir: &Path) -> String {
    let records: Vec<serde_json::Value> = [
        ("red_square_32x32.png", "red"),
        ("blue_circle_32x32.png", "blue"),
        ("green_wide_48x40.png", "green"),
        ("gradient_tall_20x44.png", "a gradient"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (image, answer))| {
        serde_json::json!({
            "id": i.to_string(),
            "image": image,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is this?"},
                {"from": "gpt", "value": answer}
            ]
        })
    })
    .collect();
    let path = dir.join("llava.json");
    std::fs::write(&path, serde_json::to_string(&records).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn llava_stage1_stage2_eval_and_generate_with_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let model = repo("tests/fixtures/llava/model");
    let images = repo("tests/fixtures/llava/images");
    let stage1 = tmp.path().join("stage1");
    let stage1 = stage1.to_str().unwrap();
    let common = [
        "--dataset",
        &data,
        "--image-folder",
        &images,
        "--batch-size",
        "2",
        "--quiet",
    ];

    // Stage 1: the projector only.
    let mut args = vec!["finetune", "--model", &model, "--output", stage1];
    args.extend(common);
    args.extend([
        "--tune-mm-mlp-adapter",
        "--max-steps",
        "6",
        "--learning-rate",
        "1e-2",
    ]);
    let summary = last_json(&lmflow(&args));
    assert_eq!(summary["method"], "llava-projector");
    assert_eq!(summary["train_images"], 4);
    // The same command with more steps resumes from the projector checkpoint.
    let mut args = vec!["finetune", "--model", &model, "--output", stage1];
    args.extend(common);
    args.extend([
        "--tune-mm-mlp-adapter",
        "--max-steps",
        "8",
        "--learning-rate",
        "1e-2",
    ]);
    let resumed = last_json(&lmflow(&args));
    assert_eq!(resumed["steps"], 8);
    let metrics = std::fs::read_to_string(Path::new(stage1).join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    // Logged every 5 steps and at the end of each run: 5, 6 (first run), 8 (resumed run).
    assert_eq!(steps, [5, 6, 8]);
    let final1 = Path::new(stage1).join("final");
    for f in [
        "mm_projector.safetensors",
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
    ] {
        assert!(final1.join(f).is_file(), "stage 1 final/ lacks {f}");
    }

    // Stage 2: LoRA on the language model from the stage-1 projector.
    let stage2 = tmp.path().join("stage2");
    let stage2 = stage2.to_str().unwrap();
    let projector = final1.join("mm_projector.safetensors");
    let mut args = vec!["finetune", "--model", &model, "--output", stage2];
    args.extend(common);
    args.extend([
        "--pretrain-mm-mlp-adapter",
        projector.to_str().unwrap(),
        "--target-modules",
        "q_proj,v_proj",
        "--lora-r",
        "4",
        "--max-steps",
        "6",
        "--learning-rate",
        "1e-2",
    ]);
    let summary = last_json(&lmflow(&args));
    assert_eq!(summary["method"], "llava-lora");
    let final2 = Path::new(stage2).join("final");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(final2.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["modules_to_save"][0], "multi_modal_projector");
    assert!(
        cfg["target_modules"]
            .as_str()
            .unwrap()
            .starts_with(r"model\.language_model\.")
    );

    // Evaluation: the trained models score the training answers better than the base.
    let eval = |extra: &[&str]| -> f64 {
        let mut args = vec![
            "eval",
            "--dataset",
            &data,
            "--image-folder",
            &images,
            "--batch-size",
            "4",
        ];
        args.extend(extra);
        last_json(&lmflow(&args))["ppl"].as_f64().unwrap()
    };
    let base = eval(&["--model", &model]);
    let after1 = eval(&["--model", final1.to_str().unwrap()]);
    let after2 = eval(&["--model", &model, "--adapter", final2.to_str().unwrap()]);
    assert!(after1 < base, "stage 1: ppl {after1} >= base {base}");
    assert!(after2 < base, "stage 2: ppl {after2} >= base {base}");

    // Generation with an image (greedy, KV cache), from the stage-1 folder and the adapter.
    let red = format!("{images}/red_square_32x32.png");
    for extra in [
        vec!["--model", final1.to_str().unwrap()],
        vec!["--model", &model, "--adapter", final2.to_str().unwrap()],
    ] {
        let mut args = vec![
            "generate",
            "--image",
            &red,
            "--prompt",
            "<image>\nWhat is this?",
            "--chat",
            "--max-new-tokens",
            "4",
            "--json",
        ];
        args.extend(extra);
        let out = last_json(&lmflow(&args));
        let prompt = out["prompt_ids"].as_array().unwrap();
        // 16 image tokens (id 400) in the prompt: the processor expanded the marker.
        assert_eq!(
            prompt.iter().filter(|t| t.as_u64() == Some(400)).count(),
            16
        );
        assert!(!out["new_ids"].as_array().unwrap().is_empty());
    }
    // A prompt whose markers do not match the images is refused.
    let output = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "generate",
            "--model",
            &model,
            "--prompt",
            "no marker",
            "--image",
            &red,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("marker"));
}
