//! Training hyper-parameters, named as in Hugging Face's `TrainingArguments`.

use std::path::PathBuf;

use lmflow_optim::OptimizerConfig;
use lmflow_optim::groups::ParamGroupsConfig;
use lmflow_optim::schedule::{ScheduleConfig, ScheduleKind};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Hyper-parameters of a training run. Field names and defaults follow `transformers`'
/// `TrainingArguments` (and LMFlow's finetuner arguments) where they exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Folder receiving checkpoints, the final weights, `metrics.jsonl` and `loss.png`.
    pub output_dir: PathBuf,
    /// Peak learning rate (default 5e-5, as HF; LoRA runs usually use 1e-4 .. 1e-3).
    pub learning_rate: f64,
    /// Epochs over the training set (default 3).
    pub num_train_epochs: f64,
    /// When set, the number of optimizer steps, overriding `num_train_epochs`.
    pub max_steps: Option<usize>,
    /// Samples per micro-batch (default 8).
    pub per_device_train_batch_size: usize,
    /// Samples per evaluation batch (default 8).
    pub per_device_eval_batch_size: usize,
    /// Micro-batches per optimizer step (default 1).
    pub gradient_accumulation_steps: usize,
    /// Learning-rate schedule (default `linear`).
    pub lr_scheduler_type: ScheduleKind,
    /// Warmup as a fraction of the optimizer steps (default 0).
    pub warmup_ratio: f64,
    /// Warmup steps; overrides `warmup_ratio` when non-zero (default 0).
    pub warmup_steps: usize,
    /// AdamW weight decay (default 0), not applied to biases and norm weights.
    pub weight_decay: f64,
    /// AdamW beta1 (default 0.9).
    pub adam_beta1: f64,
    /// AdamW beta2 (default 0.999).
    pub adam_beta2: f64,
    /// AdamW epsilon (default 1e-8).
    pub adam_epsilon: f64,
    /// Any optimizer of `lmflow-optim`'s registry, e.g. `{"name": "adabelief", "betas": [0.9,
    /// 0.999]}` (default: AdamW from the `adam_*` and `weight_decay` fields). Its `lr` is
    /// replaced by `learning_rate`, the schedule's peak. Biases and norm weights get no weight
    /// decay; `lora_plus_ratio` scales LoRA B matrices' learning rate.
    pub optimizer: Option<OptimizerConfig>,
    /// LoRA+ (Hayou et al. 2024): learning-rate ratio of LoRA `B` matrices over `A` (default: none).
    pub lora_plus_ratio: Option<f64>,
    /// LISA (LMFlow's `--lisa_activated_layers`): train only this many decoder layers at a
    /// time, re-sampled every `lisa_interval_steps`; embeddings, final norm and head always
    /// train. For full-parameter training (default: off).
    pub lisa_activated_layers: Option<usize>,
    /// LISA: optimizer steps between re-sampling the trained layers (default 20).
    pub lisa_interval_steps: usize,
    /// Global gradient-norm clipping threshold; 0 disables (default 1.0).
    pub max_grad_norm: f64,
    /// Log a metrics record every this many optimizer steps (default 10).
    pub logging_steps: usize,
    /// Evaluate every this many optimizer steps; 0 evaluates at the end only (default 0).
    pub eval_steps: usize,
    /// Write a checkpoint every this many optimizer steps; 0 writes at the end only (default 500).
    pub save_steps: usize,
    /// Checkpoints kept (oldest removed first); 0 keeps all (default 2).
    pub save_total_limit: usize,
    /// Pack several samples into each row of `block_size` tokens (best fit; positions restart
    /// and attention stays within each sample, so no sample sees another). Default false; the
    /// CLI turns it on for `text_only` data.
    pub packing: bool,
    /// Row length of packed training batches (default 1024).
    pub block_size: usize,
    /// Chunked cross-entropy: at most this many token positions are projected to the vocabulary
    /// at a time, so the `[tokens, vocab]` logits of a whole batch are never alive at once
    /// (default 512; 0 computes the loss of the whole micro-batch at once). A chunk never holds
    /// more than [`MAX_CHUNK_LOGITS`](crate::loss::MAX_CHUNK_LOGITS) logits (110 positions for a
    /// 151,936-token vocabulary). Results are equal
    /// either way (see [`chunked_lm_loss_backward`](crate::loss::chunked_lm_loss_backward)).
    pub loss_chunk_tokens: usize,
    /// Activation checkpointing per decoder layer (default false): the forward pass keeps
    /// only each layer's input and every layer runs again during the backward pass (about a
    /// third more compute, far less activation memory; results equal). LLaMA family only; see
    /// [`checkpointed_lm_loss_backward`](crate::loss::checkpointed_lm_loss_backward).
    pub gradient_checkpointing: bool,
    /// Seed of data shuffling (default 42).
    pub seed: u64,
    /// Resume from the newest checkpoint in `output_dir` when there is one (default true).
    pub resume: bool,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("output"),
            learning_rate: 5e-5,
            num_train_epochs: 3.0,
            max_steps: None,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            lr_scheduler_type: ScheduleKind::Linear,
            warmup_ratio: 0.0,
            warmup_steps: 0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            optimizer: None,
            lora_plus_ratio: None,
            lisa_activated_layers: None,
            lisa_interval_steps: 20,
            max_grad_norm: 1.0,
            logging_steps: 10,
            eval_steps: 0,
            save_steps: 500,
            save_total_limit: 2,
            packing: false,
            block_size: 1024,
            loss_chunk_tokens: 512,
            gradient_checkpointing: false,
            seed: 42,
            resume: true,
        }
    }
}

impl TrainerConfig {
    /// Checks the values that would make a run meaningless.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.per_device_train_batch_size == 0 {
            return bad("per_device_train_batch_size must be at least 1");
        }
        if self.per_device_eval_batch_size == 0 {
            return bad("per_device_eval_batch_size must be at least 1");
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return bad("learning_rate must be a finite, non-negative number");
        }
        if self.max_steps.is_none()
            && self.num_train_epochs.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return bad("num_train_epochs must be positive (or set max_steps)");
        }
        if self.packing && self.block_size < 2 {
            return bad(
                "block_size must be at least 2 when packing (the loss predicts each token from \
                 the ones before it)",
            );
        }
        if !(self.num_train_epochs.is_finite() && self.num_train_epochs >= 0.0) {
            return bad("num_train_epochs must be a finite, non-negative number");
        }
        if !(self.warmup_ratio.is_finite() && (0.0..=1.0).contains(&self.warmup_ratio)) {
            return bad("warmup_ratio must lie in [0, 1]");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad("max_grad_norm must be a finite, non-negative number (0 disables)");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay must be a finite, non-negative number");
        }
        if !(self.adam_epsilon.is_finite() && self.adam_epsilon > 0.0) {
            return bad("adam_epsilon must be a finite, positive number");
        }
        for (name, beta) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return Err(TrainError::Config(format!("{name} must lie in [0, 1)")));
            }
        }
        if let Some(ratio) = self.lora_plus_ratio
            && !(ratio.is_finite() && ratio > 0.0)
        {
            return bad("lora_plus_ratio must be a finite, positive number");
        }
        if self.lisa_activated_layers == Some(0) {
            return bad("lisa_activated_layers must be at least 1");
        }
        if self.logging_steps == 0 {
            return bad("logging_steps must be at least 1");
        }
        Ok(())
    }

    /// Optimizer steps of the run for a training set of `num_samples` rows (samples, or packed
    /// blocks when `packing` is on).
    pub fn total_steps(&self, num_samples: usize) -> usize {
        if let Some(steps) = self.max_steps {
            return steps;
        }
        let per_epoch = self.steps_per_epoch(num_samples);
        ((per_epoch as f64) * self.num_train_epochs).ceil().max(1.0) as usize
    }

    /// Optimizer steps in one epoch (micro-batches rounded up, then divided by accumulation).
    pub fn steps_per_epoch(&self, num_samples: usize) -> usize {
        let micro = num_samples.div_ceil(self.per_device_train_batch_size);
        micro.div_ceil(self.gradient_accumulation_steps).max(1)
    }

    /// Builds the optimizer: the registry's when `optimizer` is set, else AdamW with the
    /// `adam_*` fields; no weight decay for biases and norm weights.
    pub fn build_optimizer(&self) -> Result<lmflow_optim::BuiltOptimizer> {
        let config = match &self.optimizer {
            Some(c) => c.clone(),
            None => OptimizerConfig::from_value(serde_json::json!({
                "name": "adamw",
                "betas": [self.adam_beta1, self.adam_beta2],
                "eps": self.adam_epsilon,
                "weight_decay": self.weight_decay,
            }))?,
        };
        if config.name() == "sophiag" {
            return Err(TrainError::Config(
                "sophiag needs Hessian-estimate steps that the trainer does not run; use it \
                 from Rust with BuiltOptimizer::update_hessian"
                    .into(),
            ));
        }
        let mut groups = ParamGroupsConfig::default();
        if let Some(ratio) = self.lora_plus_ratio {
            groups = groups.with_lora_plus(ratio);
        }
        Ok(config.build_with_groups(&groups)?)
    }

    /// The learning-rate schedule configuration.
    pub fn schedule(&self) -> ScheduleConfig {
        let mut s = ScheduleConfig::new(self.lr_scheduler_type);
        if self.warmup_steps > 0 {
            s.warmup_steps = Some(self.warmup_steps);
        } else if self.warmup_ratio > 0.0 {
            s.warmup_ratio = Some(self.warmup_ratio);
        }
        s
    }
}
