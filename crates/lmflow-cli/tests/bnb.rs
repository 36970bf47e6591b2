//! A bitsandbytes-quantised Hub checkpoint (`tests/fixtures/bnb/tiny-llama-nf4`, written by
//! transformers + bitsandbytes: NF4 with double quantisation, other tensors bf16) through the
//! `lmflow` binary: `finetune` trains QLoRA adapters on it, `generate` decodes as transformers
//! does, `eval` scores it, and `--full` is refused.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

const BNB: &str = "tests/fixtures/bnb/tiny-llama-nf4";

fn lmflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    serde_json::from_str(text.lines().next().unwrap().trim()).unwrap()
}

fn expected_ids(name: &str) -> Vec<u64> {
    let bytes = std::fs::read(repo(&format!("{BNB}/expected.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u64)
        .collect()
}

#[test]
fn finetune_on_a_bnb_checkpoint_trains_qlora_adapters() {
    let out = tempfile::tempdir().unwrap();
    let summary = ok_json(&lmflow(&[
        "finetune",
        "--model",
        &repo(BNB),
        "--dataset",
        &repo("assets/data/capitals/train.json"),
        "--eval-dataset",
        &repo("assets/data/capitals/eval.json"),
        "--output",
        out.path().to_str().unwrap(),
        "--max-steps",
        "6",
        "--samples",
        "0",
        "--quiet",
    ]));
    assert_eq!(summary["method"], "qlora");
    assert_eq!(summary["steps"], 6);
    let before = summary["eval_loss_before"].as_f64().unwrap();
    let after = summary["eval_loss_after"].as_f64().unwrap();
    assert!(after < before, "eval loss {before} -> {after}");
    let final_dir = out.path().join("final");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(final_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    let bytes = std::fs::read(final_dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // PEFT names, on every quantised linear layer (7 per decoder layer, 4 layers).
    let lora_a = st
        .names()
        .iter()
        .filter(|n| n.ends_with("lora_A.weight"))
        .count();
    assert_eq!(lora_a, 28, "{:?}", st.names());

    // The adapter applies on the quantised base for generation.
    let generated = ok_json(&lmflow(&[
        "generate",
        "--model",
        &repo(BNB),
        "--adapter",
        final_dir.to_str().unwrap(),
        "--prompt",
        "The capital of Ohio is",
        "--greedy",
        "--max-new-tokens",
        "4",
        "--json",
    ]));
    assert!(generated["text"].is_string());
}

#[test]
fn generate_on_a_bnb_checkpoint_matches_transformers_greedy() {
    let prompt = expected_ids("generate.prompt_ids");
    let want = expected_ids("generate.new_ids");
    let got = ok_json(&lmflow(&[
        "generate",
        "--model",
        &repo(BNB),
        "--prompt",
        "The capital of Ohio is",
        "--greedy",
        "--max-new-tokens",
        &want.len().to_string(),
        "--json",
    ]));
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&got["prompt_ids"]), prompt);
    assert_eq!(ids(&got["new_ids"]), want);
}

#[test]
fn eval_scores_a_bnb_checkpoint_and_full_finetuning_is_refused() {
    let scored = ok_json(&lmflow(&[
        "eval",
        "--model",
        &repo(BNB),
        "--dataset",
        &repo("tests/fixtures/models/eval_text_only.json"),
        "--metric",
        "ppl",
    ]));
    let ppl = scored["ppl"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "{scored}");

    let dir = tempfile::tempdir().unwrap();
    let out = lmflow(&[
        "finetune",
        "--model",
        &repo(BNB),
        "--dataset",
        &repo("assets/data/capitals/train.json"),
        "--output",
        dir.path().to_str().unwrap(),
        "--full",
        "--max-steps",
        "1",
        "--quiet",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bitsandbytes") && err.contains("--full"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
