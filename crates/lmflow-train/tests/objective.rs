//! The shared loop with an objective of its own: weights, metrics and evaluation reach
//! `metrics.jsonl`, and the loop's SFT path equals `Trainer::train`.
#![allow(clippy::unwrap_used)]

use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_models::{CausalLm, ForwardInput, ModelConfig};
use lmflow_optim::schedule::ScheduleKind;
use lmflow_train::metrics::read_metrics;
use lmflow_train::{
    FullModelWeights, MetricSum, Objective, ObjectiveLoss, Result, Trainer, TrainerConfig,
    causal_lm_loss,
};

fn tiny_model(device: &Device) -> (ModelConfig, CausalLm) {
    let cfg = ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llama", "vocab_size": 32, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 32, "tie_word_embeddings": false
        }),
        "config.json".as_ref(),
    )
    .unwrap();
    let model = CausalLm::from_config(&cfg, device).unwrap();
    (cfg, model)
}

/// Mean cross-entropy per *sequence* (each sequence weighs 1 whatever its length), logging
/// the sequence length as a metric.
struct PerSequence;

impl Objective for PerSequence {
    type Item = Vec<u32>;

    fn weight(&self, _item: &Vec<u32>) -> f64 {
        1.0
    }

    fn tokens(&self, item: &Vec<u32>) -> usize {
        item.len() - 1
    }

    fn loss(
        &self,
        model: &CausalLm,
        batch: &[&Vec<u32>],
        device: &Device,
    ) -> Result<ObjectiveLoss> {
        let mut sum = Tensor::<1>::zeros([1], device);
        let mut len = 0.0;
        for seq in batch {
            let ids: Vec<i64> = seq.iter().map(|&t| i64::from(t)).collect();
            let n = ids.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
            let logits = model.forward(ForwardInput::new(ids.clone()), None)?.logits;
            let loss = causal_lm_loss(logits, ids);
            sum = sum + loss.mean();
            len += n as f64;
        }
        Ok(ObjectiveLoss {
            sum,
            metrics: vec![MetricSum::new("length", len, batch.len() as f64)],
        })
    }
}

#[test]
fn a_custom_objective_trains_and_logs_its_metrics_and_evaluation() {
    let device = Device::flex().autodiff();
    let (cfg, model) = tiny_model(&device);
    let data: Vec<Vec<u32>> = (0..6)
        .map(|k| (0..(4 + k)).map(|i| 1 + (k + i) as u32 % 30).collect())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        output_dir: dir.path().to_path_buf(),
        learning_rate: 1e-2,
        max_steps: Some(4),
        per_device_train_batch_size: 2,
        per_device_eval_batch_size: 4,
        lr_scheduler_type: ScheduleKind::Constant,
        logging_steps: 2,
        save_steps: 0,
        ..TrainerConfig::default()
    };
    let trainer = Trainer::new(config, device.clone(), 0).unwrap();
    let before = trainer
        .evaluate_objective(&PerSequence, &model, &data)
        .unwrap();
    let mean_len = data.iter().map(|d| d.len() as f64).sum::<f64>() / data.len() as f64;
    assert!((before.metrics["length"] - mean_len).abs() < 1e-9);
    let io = FullModelWeights::new(cfg, device.clone());
    let out = trainer
        .train_objective(model, &io, &PerSequence, &data, Some(&data), &mut |_| {})
        .unwrap();
    let after = trainer
        .evaluate_objective(&PerSequence, &out.model, &data)
        .unwrap();
    assert!(
        after.loss < before.loss,
        "{} !< {}",
        after.loss,
        before.loss
    );
    assert_eq!(out.final_eval_loss, Some(after.loss));

    let records = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(records.iter().map(|r| r.step).collect::<Vec<_>>(), [2, 4]);
    for r in &records {
        // Two steps of two sequences each since the previous record.
        let len = r.extra["length"];
        assert!((4.0..=9.0).contains(&len), "{len}");
        assert!(r.loss.unwrap().is_finite());
    }
    // The evaluation at the last step is logged with its metrics under `eval_`.
    let last = records.last().unwrap();
    // (read back from JSON: equal up to the last bit of the decimal round trip)
    assert!((last.eval_loss.unwrap() - after.loss).abs() < 1e-12);
    assert!((last.extra["eval_length"] - mean_len).abs() < 1e-9);
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert!(text.contains("\"eval_length\":"), "{text}");
}
