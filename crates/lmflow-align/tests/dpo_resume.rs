//! A DPO run killed after a checkpoint resumes to exactly the result of an uninterrupted run
//! (adapter weights and logged metrics), with the checkpoint machinery of the shared loop.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lmflow_align::{DpoConfig, Reference, train_dpo};
use lmflow_datasets::{TokenizedPair, TokenizedSample};
use lmflow_models::{CausalLm, LoadOptions, load_pretrained};
use lmflow_peft::io::adapter_state_dict;
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model};
use lmflow_train::metrics::read_metrics;
use lmflow_train::{IGNORE_INDEX, LoraWeights, TrainEvent, Trainer, TrainerConfig};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

fn sample(prompt: &[u32], completion: &[u32]) -> TokenizedSample {
    let input_ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let labels = prompt
        .iter()
        .map(|_| IGNORE_INDEX)
        .chain(completion.iter().map(|&t| i64::from(t)))
        .collect();
    TokenizedSample {
        original_len: input_ids.len(),
        input_ids,
        labels,
        truncated: false,
        target_lost: false,
    }
}

fn pairs() -> Vec<TokenizedPair> {
    (0..6u32)
        .map(|k| {
            let prompt: Vec<u32> = (0..3 + k % 2).map(|i| 100 + 7 * k + i).collect();
            let good: Vec<u32> = (0..4 + k % 3).map(|i| 300 + 11 * k + i).collect();
            let bad: Vec<u32> = (0..3 + k % 2).map(|i| 900 + 13 * k + i).collect();
            TokenizedPair {
                chosen: sample(&prompt, &good),
                rejected: sample(&prompt, &bad),
                margin: None,
            }
        })
        .collect()
}

fn policy(device: &Device) -> (CausalLm, LoraConfig) {
    let base = load_pretrained(&repo("assets/tiny-llama"), device, &LoadOptions::default())
        .unwrap()
        .model;
    let lora = LoraConfig::new(
        4,
        8.0,
        TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    );
    // The adapter's random initialisation is the same in every run.
    device.seed(7);
    let (model, _) = get_peft_model(base, &lora, "default").unwrap();
    (model, lora)
}

/// The adapter's tensors (PEFT names, f32 bytes).
fn adapter(mut model: CausalLm) -> Vec<u8> {
    let lora = LoraConfig::new(
        4,
        8.0,
        TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    );
    adapter_state_dict(&mut model, &lora, "default")
        .unwrap()
        .into_values()
        .flat_map(|(_, bytes)| bytes)
        .collect()
}

fn config(dir: &Path) -> TrainerConfig {
    TrainerConfig {
        output_dir: dir.to_path_buf(),
        learning_rate: 5e-3,
        max_steps: Some(6),
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 1,
        logging_steps: 1,
        save_steps: 2,
        save_total_limit: 0,
        ..TrainerConfig::default()
    }
}

fn run(dir: &Path, kill_after: Option<usize>) -> Option<Vec<u8>> {
    let device = Device::flex().autodiff();
    let (model, lora) = policy(&device);
    let trainer = Trainer::new(config(dir), device.clone(), 0).unwrap();
    let weights = LoraWeights::new(lora, "default", device.clone());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train_dpo(
            &trainer,
            model,
            &weights,
            DpoConfig::default(),
            Reference::WithoutAdapters("default"),
            0,
            pairs(),
            Some(pairs()),
            &device,
            &mut |e| {
                if let (TrainEvent::Saved { path }, Some(step)) = (&e, kill_after)
                    && path.ends_with(format!("checkpoint-{step}"))
                {
                    panic!("killed after {}", path.display());
                }
            },
        )
        .unwrap()
    }));
    let outcome = result.ok()?;
    Some(adapter(outcome.model))
}

#[test]
fn killed_dpo_run_resumes_to_the_uninterrupted_result() {
    let whole = tempfile::tempdir().unwrap();
    let expected = run(whole.path(), None).unwrap();

    let split = tempfile::tempdir().unwrap();
    assert!(
        run(split.path(), Some(4)).is_none(),
        "the first run is killed"
    );
    assert!(!split.path().join("final").exists());
    let resumed = run(split.path(), None).unwrap();
    assert!(resumed == expected, "resumed weights differ");
    // The run trained something: the adapter moved away from the base model.
    let device = Device::flex().autodiff();
    let base = adapter(policy(&device).0);
    assert_eq!(base.len(), expected.len());
    assert!(base != expected, "training changed nothing");

    let a = read_metrics(&whole.path().join("metrics.jsonl")).unwrap();
    let b = read_metrics(&split.path().join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.step, y.step);
        assert_eq!(x.loss, y.loss, "step {}", x.step);
        assert_eq!(
            x.extra["rewards/margins"], y.extra["rewards/margins"],
            "step {}",
            x.step
        );
    }
    assert_eq!(a.last().unwrap().eval_loss, b.last().unwrap().eval_loss);
}
