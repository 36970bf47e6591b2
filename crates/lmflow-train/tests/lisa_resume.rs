//! LISA: a run stopped at a checkpoint and resumed ends with the same weights as the run that
//! never stopped, so both of LISA's optimizers (embeddings/head and decoder layers) and its
//! layer sampler are restored.
#![allow(clippy::unwrap_used)]

use burn::tensor::Device;
use lmflow_models::{CausalLm, ModelConfig};
use lmflow_optim::schedule::ScheduleKind;
use lmflow_train::{FullModelWeights, IGNORE_INDEX, TokenizedSample, Trainer, TrainerConfig};

fn tiny_config() -> ModelConfig {
    ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llama", "vocab_size": 48, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": false
        }),
        "config.json".as_ref(),
    )
    .unwrap()
}

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
        gradient_accumulation_steps: 1,
        lr_scheduler_type: ScheduleKind::Constant,
        logging_steps: 1,
        save_steps: 4,
        save_total_limit: 0,
        lisa_activated_layers: Some(2),
        // A switch at steps 0, 3 and 6: the resume at step 4 lands mid-interval (the layer
        // optimizer's moments must come back) and the run switches again after it.
        lisa_interval_steps: 3,
        ..TrainerConfig::default()
    }
}

fn params(model: &CausalLm) -> Vec<(String, Vec<f32>)> {
    model
        .state_dict()
        .into_iter()
        .map(|(n, d)| (n, d.try_to_vec::<f32>().unwrap()))
        .collect()
}

#[test]
fn lisa_resume_restores_every_optimizer_state() {
    let device = Device::flex().autodiff();
    let cfg = tiny_config();
    let model = CausalLm::from_config(&cfg, &device).unwrap();
    let data = samples();
    let io = FullModelWeights::new(cfg.clone(), device.clone());

    let full_dir = tempfile::tempdir().unwrap();
    let full = Trainer::new(config(full_dir.path(), 8), device.clone(), 0)
        .unwrap()
        .train(model.clone(), &io, &data, None, &mut |_| {})
        .unwrap();

    let split_dir = tempfile::tempdir().unwrap();
    Trainer::new(config(split_dir.path(), 4), device.clone(), 0)
        .unwrap()
        .train(model.clone(), &io, &data, None, &mut |_| {})
        .unwrap();
    let ckpt = split_dir.path().join("checkpoint-4");
    for f in ["lisa_fixed.bpk", "lisa_layers.bpk", "lisa_state.json"] {
        assert!(ckpt.join(f).is_file(), "checkpoint lacks {f}");
    }
    let resumed = Trainer::new(config(split_dir.path(), 8), device.clone(), 0)
        .unwrap()
        .train(model.clone(), &io, &data, None, &mut |_| {})
        .unwrap();

    for ((name, a), (_, b)) in params(&full.model)
        .iter()
        .zip(params(&resumed.model).iter())
    {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{name}: resumed run differs by {diff}");
    }
}
