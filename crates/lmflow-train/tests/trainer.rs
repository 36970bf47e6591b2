//! End-to-end trainer behaviour on a tiny randomly initialised LLaMA.
#![allow(clippy::unwrap_used)]

use burn::tensor::Device;
use lmflow_models::{CausalLm, ModelConfig};
use lmflow_optim::schedule::ScheduleKind;
use lmflow_train::{
    FullModelWeights, IGNORE_INDEX, TokenizedSample, Trainer, TrainerConfig, metrics::read_metrics,
};

fn tiny_config() -> ModelConfig {
    ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llama", "vocab_size": 48, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": false
        }),
        "config.json".as_ref(),
    )
    .unwrap()
}

/// Counting sequences ("a, a+1, a+2, ...") with the first two tokens masked as a prompt.
fn samples() -> Vec<TokenizedSample> {
    (0..12)
        .map(|start| {
            let ids: Vec<u32> = (0..10).map(|i| 1 + (start + i) % 40).collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < 2 { IGNORE_INDEX } else { t as i64 })
                .collect();
            TokenizedSample {
                original_len: ids.len(),
                input_ids: ids,
                labels,
                truncated: false,
                target_lost: false,
            }
        })
        .collect()
}

fn config(dir: &std::path::Path, max_steps: usize) -> TrainerConfig {
    TrainerConfig {
        output_dir: dir.to_path_buf(),
        learning_rate: 1e-2,
        max_steps: Some(max_steps),
        per_device_train_batch_size: 4,
        gradient_accumulation_steps: 2,
        lr_scheduler_type: ScheduleKind::Constant,
        logging_steps: 1,
        save_steps: 4,
        save_total_limit: 0,
        ..TrainerConfig::default()
    }
}

fn params(model: &CausalLm) -> Vec<f32> {
    model
        .state_dict()
        .into_iter()
        .flat_map(|(_, d)| d.try_to_vec::<f32>().unwrap())
        .collect()
}

#[test]
fn training_reduces_loss_writes_metrics_and_resumes_exactly() {
    let device = Device::flex().autodiff();
    let cfg = tiny_config();
    let model = CausalLm::from_config(&cfg, &device).unwrap();
    let data = samples();
    let io = FullModelWeights::new(cfg.clone(), device.clone());

    // Uninterrupted: 8 steps.
    let full_dir = tempfile::tempdir().unwrap();
    let trainer = Trainer::new(config(full_dir.path(), 8), device.clone(), 0).unwrap();
    let before = trainer.evaluate(&model, &data).unwrap();
    let full = trainer
        .train(model.clone(), &io, &data, Some(&data), &mut |_| {})
        .unwrap();
    let after = full.final_eval_loss.unwrap();
    assert!(after < before * 0.8, "loss {before} -> {after}");
    let records = read_metrics(&full_dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(records.len(), 8);
    assert!(
        records
            .iter()
            .all(|r| r.loss.is_some() && r.lr == Some(1e-2))
    );
    assert!(full_dir.path().join("loss.png").is_file());
    assert!(full_dir.path().join("final/model.safetensors").is_file());

    // Interrupted after 4 steps, then resumed to 8: same weights as the uninterrupted run.
    let split_dir = tempfile::tempdir().unwrap();
    let first = Trainer::new(config(split_dir.path(), 4), device.clone(), 0).unwrap();
    first
        .train(model.clone(), &io, &data, None, &mut |_| {})
        .unwrap();
    assert!(
        split_dir
            .path()
            .join("checkpoint-4/trainer_state.json")
            .is_file()
    );
    let second = Trainer::new(config(split_dir.path(), 8), device.clone(), 0).unwrap();
    let mut resumed_at = None;
    let resumed = second
        .train(model.clone(), &io, &data, None, &mut |e| {
            if let lmflow_train::TrainEvent::Started { start_step, .. } = e {
                resumed_at = Some(start_step);
            }
        })
        .unwrap();
    assert_eq!(resumed_at, Some(4));
    let (a, b) = (params(&full.model), params(&resumed.model));
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-5, "resumed run differs by {max_diff}");
    assert_eq!(
        read_metrics(&split_dir.path().join("metrics.jsonl"))
            .unwrap()
            .len(),
        8
    );
}

#[test]
fn empty_training_set_is_an_error() {
    let device = Device::flex().autodiff();
    let cfg = tiny_config();
    let model = CausalLm::from_config(&cfg, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trainer = Trainer::new(config(dir.path(), 2), device.clone(), 0).unwrap();
    let io = FullModelWeights::new(cfg, device);
    let err = trainer
        .train(model, &io, &[], None, &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn a_diverging_run_stops_at_the_non_finite_step_and_keeps_the_last_checkpoint() {
    let device = Device::flex().autodiff();
    let cfg = tiny_config();
    let model = CausalLm::from_config(&cfg, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A huge learning rate blows the weights up after the first step; the second step's
    // logits overflow and its loss is NaN or infinite.
    let config = TrainerConfig {
        learning_rate: 1e30,
        max_grad_norm: 0.0,
        gradient_accumulation_steps: 1,
        save_steps: 1,
        save_total_limit: 1,
        ..config(dir.path(), 6)
    };
    let trainer = Trainer::new(config, device.clone(), 0).unwrap();
    let io = FullModelWeights::new(cfg, device);
    let mut saved = Vec::new();
    let err = trainer
        .train(model, &io, &samples(), None, &mut |e| {
            if let lmflow_train::TrainEvent::Saved { path } = e {
                saved.push(path);
            }
        })
        .unwrap_err();
    let lmflow_train::TrainError::NonFinite { step, .. } = err else {
        panic!("expected a non-finite error, got {err}");
    };
    assert!(err.to_string().contains(&format!("step {step}")), "{err}");
    // Every step before the bad one was checkpointed; the bad one was not, and the last good
    // checkpoint was not rotated away.
    assert_eq!(saved.len(), step - 1);
    let last_good = dir.path().join(format!("checkpoint-{}", step - 1));
    assert!(last_good.join("trainer_state.json").is_file() || step == 1);
    assert!(!dir.path().join(format!("checkpoint-{step}")).exists());
    assert!(!dir.path().join("final").exists());
}

#[test]
fn training_data_without_trained_tokens_is_an_error() {
    let device = Device::flex().autodiff();
    let cfg = tiny_config();
    let model = CausalLm::from_config(&cfg, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trainer = Trainer::new(config(dir.path(), 2), device.clone(), 0).unwrap();
    let io = FullModelWeights::new(cfg, device);
    let masked: Vec<TokenizedSample> = samples()
        .into_iter()
        .map(|mut s| {
            s.labels.iter_mut().for_each(|l| *l = IGNORE_INDEX);
            s
        })
        .collect();
    let err = trainer
        .train(model.clone(), &io, &masked, None, &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("no trained tokens"), "{err}");
    let err = trainer.evaluate(&model, &masked).unwrap_err();
    assert!(err.to_string().contains("no trained tokens"), "{err}");
}

#[test]
fn lisa_trains_one_sampled_decoder_layer_and_always_the_head() {
    let device = Device::flex().autodiff();
    let cfg = tiny_config();
    let model = CausalLm::from_config(&cfg, &device).unwrap();
    let data = samples();
    let io = FullModelWeights::new(cfg.clone(), device.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        lisa_activated_layers: Some(1),
        lisa_interval_steps: 100,
        max_steps: Some(3),
        ..config(dir.path(), 3)
    };
    let trainer = Trainer::new(config, device.clone(), 0).unwrap();
    let before = trainer.evaluate(&model, &data).unwrap();
    let out = trainer
        .train(model.clone(), &io, &data, None, &mut |_| {})
        .unwrap();
    let after = trainer.evaluate(&out.model, &data).unwrap();
    assert!(after < before, "loss {before} -> {after}");

    let changed = |name: &str| {
        let get = |m: &CausalLm| {
            m.state_dict()
                .into_iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no tensor {name}"))
                .1
                .try_to_vec::<f32>()
                .unwrap()
        };
        get(&model) != get(&out.model)
    };
    let layer0 = changed("model.layers.0.self_attn.q_proj.weight");
    let layer1 = changed("model.layers.1.self_attn.q_proj.weight");
    assert!(
        layer0 ^ layer1,
        "exactly one decoder layer trains (0: {layer0}, 1: {layer1})"
    );
    assert!(changed("lm_head.weight"));
    assert!(changed("model.embed_tokens.weight"));
}

/// Samples of different lengths (5..=12 tokens), all trained.
fn ragged_samples() -> Vec<TokenizedSample> {
    (0..12)
        .map(|i| {
            let ids: Vec<u32> = (0..5 + (i * 7) % 8).map(|t| 1 + (i + t) % 40).collect();
            TokenizedSample {
                original_len: ids.len(),
                labels: ids.iter().map(|&t| t as i64).collect(),
                input_ids: ids,
                truncated: false,
                target_lost: false,
            }
        })
        .collect()
}

#[test]
fn packed_rows_give_the_same_loss_as_one_sample_per_row_in_fewer_rows() {
    let device = Device::flex().autodiff();
    let cfg = tiny_config();
    let model = CausalLm::from_config(&cfg, &device).unwrap();
    let data = ragged_samples();
    let io = FullModelWeights::new(cfg, device.clone());
    let run = |packing: bool, batch: usize, epochs_only: bool| {
        let dir = tempfile::tempdir().unwrap();
        let config = TrainerConfig {
            packing,
            block_size: 32,
            per_device_train_batch_size: batch,
            gradient_accumulation_steps: 1,
            max_steps: (!epochs_only).then_some(1),
            num_train_epochs: 1.0,
            ..config(dir.path(), 1)
        };
        let trainer = Trainer::new(config, device.clone(), 0).unwrap();
        let (mut first_loss, mut total) = (None, 0);
        trainer
            .train(model.clone(), &io, &data, None, &mut |e| match e {
                lmflow_train::TrainEvent::Started { total_steps, .. } => total = total_steps,
                lmflow_train::TrainEvent::Step { loss, .. } => {
                    first_loss.get_or_insert(loss);
                }
                _ => {}
            })
            .unwrap();
        (first_loss.unwrap(), total)
    };
    // Everything in one micro-batch: the same tokens, so the same loss if no sample sees another.
    let (unpacked, _) = run(false, 12, false);
    let (packed, _) = run(true, 12, false);
    assert!(
        (unpacked - packed).abs() < 1e-5 * unpacked.abs(),
        "{unpacked} vs {packed}"
    );
    // One row per micro-batch for an epoch: packing needs fewer rows.
    let (_, unpacked_steps) = run(false, 1, true);
    let (_, packed_steps) = run(true, 1, true);
    assert_eq!(unpacked_steps, 12);
    assert!(packed_steps < 6, "{packed_steps} packed rows");
}
