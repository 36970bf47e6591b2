//! DPO steps of `train_dpo` equal TRL's `DPOTrainer` (trl 1.16): loss, implicit rewards,
//! log-probabilities, gradient norm and the updated LoRA weights after each of two steps, on
//! the bundled tiny model (fixture: tests/fixtures/dpo_step.py).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lmflow_align::{DpoConfig, DpoLossType, Reference, train_dpo};
use lmflow_datasets::{TokenizedPair, TokenizedSample};
use lmflow_models::{CausalLm, LoadOptions, load_pretrained};
use lmflow_peft::inject::freeze_all;
use lmflow_peft::io::adapter_state_dict;
use lmflow_peft::trainable::set_trainable_by_path;
use lmflow_train::metrics::read_metrics;
use lmflow_train::{IGNORE_INDEX, LoraWeights, Trainer, TrainerConfig};
use serde_json::Value;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(repo("tests/fixtures/dpo_step/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// prompt + completion, the prompt masked from the loss.
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

fn base(device: &Device) -> CausalLm {
    load_pretrained(&repo("assets/tiny-llama"), device, &LoadOptions::default())
        .unwrap()
        .model
}

/// PEFT-named adapter tensors of adapter folder `dir`, as f32.
fn adapter_values(dir: &Path, device: &Device) -> Vec<(String, Vec<f32>)> {
    let mut model = base(device);
    let cfg = lmflow_peft::load_adapter(&mut model, dir, "x", device).unwrap();
    adapter_state_dict(&mut model, &cfg, "x")
        .unwrap()
        .into_iter()
        .map(|(k, (_, bytes))| {
            let v = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (k, v)
        })
        .collect()
}

fn close(got: f64, want: f64, what: &str) {
    eprintln!("{what}: {got} (TRL {want})");
    assert!(
        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
        "{what}: {got} vs TRL {want}"
    );
}

#[test]
fn two_dpo_steps_with_lora_equal_trl() {
    let fx = fixture();
    let device = Device::flex().autodiff();
    let settings = &fx["settings"];
    let init = repo("tests/fixtures/dpo_step/adapter_init");

    // Policy: the base model with the fixture's initial adapter, only the adapter trains.
    let mut model = freeze_all(base(&device));
    let lora = lmflow_peft::load_adapter(&mut model, &init, "default", &device).unwrap();
    let model = set_trainable_by_path(model, |p| p.contains("adapters.").then_some(true));
    let pairs: Vec<TokenizedPair> = fx["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let prompt = ids(&p["prompt_ids"]);
            TokenizedPair {
                chosen: sample(&prompt, &ids(&p["chosen_ids"])),
                rejected: sample(&prompt, &ids(&p["rejected_ids"])),
                margin: None,
            }
        })
        .collect();

    let out = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        output_dir: out.path().to_path_buf(),
        learning_rate: settings["learning_rate"].as_f64().unwrap(),
        max_steps: Some(settings["max_steps"].as_u64().unwrap() as usize),
        per_device_train_batch_size: settings["per_device_train_batch_size"].as_u64().unwrap()
            as usize,
        max_grad_norm: settings["max_grad_norm"].as_f64().unwrap(),
        weight_decay: 0.0,
        logging_steps: 1,
        save_steps: 1,
        save_total_limit: 0,
        ..TrainerConfig::default()
    };
    let trainer = Trainer::new(config, device.clone(), 0).unwrap();
    let dpo = DpoConfig {
        beta: settings["beta"].as_f64().unwrap(),
        loss_type: DpoLossType::Sigmoid,
        label_smoothing: 0.0,
    };
    let weights = LoraWeights::new(lora, "default", device.clone());
    let outcome = train_dpo(
        &trainer,
        model,
        &weights,
        dpo,
        Reference::WithoutAdapters("default"),
        0,
        pairs,
        None,
        &device,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(outcome.state.global_step, 2);

    // Logged values of each step (computed before its update, as TRL logs them).
    let records = read_metrics(&out.path().join("metrics.jsonl")).unwrap();
    let trl = fx["steps"].as_array().unwrap();
    assert_eq!(records.len(), trl.len());
    for (ours, want) in records.iter().zip(trl) {
        let step = ours.step;
        close(
            ours.loss.unwrap(),
            want["loss"].as_f64().unwrap(),
            &format!("step {step} loss"),
        );
        close(
            ours.grad_norm.unwrap(),
            want["grad_norm"].as_f64().unwrap(),
            &format!("step {step} grad_norm"),
        );
        close(
            ours.lr.unwrap(),
            want["learning_rate"].as_f64().unwrap(),
            "lr",
        );
        for key in [
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
        ] {
            close(
                ours.extra[key],
                want[key].as_f64().unwrap(),
                &format!("step {step} {key}"),
            );
        }
    }

    // The adapter after each step.
    for step in [1, 2] {
        let ours = adapter_values(
            &out.path().join(format!("checkpoint-{step}/weights")),
            &device,
        );
        let theirs = adapter_values(
            &repo(&format!("tests/fixtures/dpo_step/adapter_step{step}")),
            &device,
        );
        assert_eq!(ours.len(), theirs.len());
        assert_eq!(ours.len(), 16, "4 layers × q/v × A/B");
        let mut worst = 0f32;
        for ((k1, a), (k2, b)) in ours.iter().zip(&theirs) {
            assert_eq!(k1, k2);
            for (x, y) in a.iter().zip(b) {
                worst = worst.max((x - y).abs());
            }
        }
        eprintln!("step {step}: largest adapter difference from TRL {worst:e}");
        assert!(
            worst < 1e-4,
            "step {step}: adapter differs from TRL's by {worst}"
        );
    }
    // The first step changed every adapter matrix (A too: B starts non-zero).
    let init_values = adapter_values(&init, &device);
    let step1 = adapter_values(&out.path().join("checkpoint-1/weights"), &device);
    for ((k, a), (_, b)) in init_values.iter().zip(&step1) {
        assert!(a.iter().zip(b).any(|(x, y)| x != y), "{k} did not move");
    }
}
