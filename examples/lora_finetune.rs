//! LoRA fine-tuning through the library API (what `lmflow finetune` does): load a Hub-layout
//! model folder, tokenize an LMFlow conversation dataset with the model's chat template, attach
//! LoRA adapters with `get_peft_model`, train with `lmflow_train::Trainer`, and find the adapter
//! in PEFT's format in `<out>/final`.
//!
//! `cargo run --release --example lora_finetune [-- OUT_DIR [STEPS]]` trains the bundled tiny
//! model on the bundled capitals data (`cargo test --example lora_finetune`: a 6-step run).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lmflow::datasets::{ChatTemplate, ReadOptions, SampleEncoder, TokenizeConfig, read_dataset};
use lmflow::models::{LoadOptions, load_pretrained};
use lmflow::peft::{LoraConfig, TargetModules, get_peft_model};
use lmflow::train::{LoraWeights, TokenizedSample, TrainEvent, Trainer, TrainerConfig};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Trains for `steps` optimizer steps into `out`; returns (eval loss before, after).
pub fn run(out: &Path, steps: usize) -> (f64, f64) {
    let device = Device::flex().autodiff();
    device.seed(42);
    let pretrained =
        load_pretrained(&repo("assets/tiny-llama"), &device, &LoadOptions::default()).unwrap();
    let tokenizer = pretrained.tokenizer.as_ref().unwrap();
    let template = ChatTemplate::resolve("tokenizer", tokenizer).unwrap();
    let encoder = SampleEncoder::new(
        tokenizer,
        Some(&template),
        TokenizeConfig {
            block_size: 128,
            ..TokenizeConfig::default()
        },
    )
    .unwrap();
    // Prompt tokens are masked (-100): the loss is on the assistant's answers only.
    let encode = |file: &str| -> Vec<TokenizedSample> {
        let data = read_dataset(repo(file), &ReadOptions::default()).unwrap();
        (data.instances.iter())
            .map(|i| encoder.encode_text(i).unwrap().sample)
            .collect()
    };
    let train = encode("assets/data/capitals/train.json");
    let eval = encode("assets/data/capitals/eval.json");

    let targets = TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]);
    let mut lora = LoraConfig::new(16, 32.0, targets);
    lora.task_type = Some("CAUSAL_LM".into());
    let (model, report) = get_peft_model(pretrained.model, &lora, "default").unwrap();
    println!("LoRA on {} layers", report.adapted.len());

    let config = TrainerConfig {
        output_dir: out.to_path_buf(),
        learning_rate: 1e-3,
        max_steps: Some(steps),
        per_device_train_batch_size: 4,
        save_steps: steps,
        logging_steps: 2,
        block_size: 128,
        ..TrainerConfig::default()
    };
    let pad_id = tokenizer.pad_token_id().unwrap_or(0);
    let trainer = Trainer::new(config, device.clone(), pad_id).unwrap();
    let before = trainer.evaluate(&model, &eval).unwrap();
    let weights = LoraWeights::new(lora, "default", device);
    let outcome = trainer
        .train(model, &weights, &train, Some(&eval), &mut |event| {
            if let TrainEvent::Step { step, loss, .. } = event {
                println!("step {step}: loss {loss:.4}");
            }
        })
        .unwrap();
    let after = outcome.final_eval_loss.unwrap();
    println!(
        "eval loss {before:.4} -> {after:.4}; adapter in {}",
        outcome.final_dir.display()
    );
    (before, after)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("lmflow-lora-finetune"));
    let steps = args.next().map_or(60, |s| s.parse().unwrap());
    run(&out, steps);
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_run_lowers_eval_loss_and_writes_a_peft_adapter() {
        let dir = tempfile::tempdir().unwrap();
        let (before, after) = super::run(dir.path(), 6);
        assert!(after < before, "eval loss {before} -> {after}");
        let final_dir = dir.path().join("final");
        assert!(final_dir.join("adapter_config.json").is_file());
        assert!(final_dir.join("adapter_model.safetensors").is_file());
    }
}
