//! Trainer flags shared by every command that runs the training loop (`finetune`,
//! `align dpo`): a JSON trainer config, overridden flag by flag.

use std::path::PathBuf;

use anyhow::Context;
use lmflow_optim::schedule::ScheduleKind;
use lmflow_train::TrainerConfig;

/// Trainer settings common to the training commands (`#[command(flatten)]` into their `Args`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrainFlags {
    /// Trainer settings as JSON (HF TrainingArguments names); flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Peak learning rate (default: finetune 2e-3 LoRA / 2e-4 full; align dpo 5e-4 LoRA /
    /// 5e-6 full; or the config's).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Epochs (default: finetune 3, align dpo 1, or the config's).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Optimizer steps, overriding epochs.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Samples (pairs for DPO) per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Learning-rate schedule (linear, cosine, constant, ...).
    #[arg(long)]
    pub lr_scheduler: Option<String>,
    /// Warmup fraction of the steps.
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// Seed of shuffling, adapter initialisation and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Log (metrics.jsonl, progress) every this many steps.
    #[arg(long)]
    pub logging_steps: Option<usize>,
    /// Evaluate every this many steps (0: at the end only).
    #[arg(long)]
    pub eval_steps: Option<usize>,
    /// Write a checkpoint every this many steps.
    #[arg(long)]
    pub save_steps: Option<usize>,
}

impl TrainFlags {
    /// The trainer config: `--config`'s JSON when given, else `defaults`, then every flag that
    /// was passed on top. The caller sets the output folder and its own settings.
    pub fn trainer_config(&self, defaults: TrainerConfig) -> anyhow::Result<TrainerConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: invalid trainer config", path.display()))?
            }
            None => defaults,
        };
        if let Some(v) = self.learning_rate {
            cfg.learning_rate = v;
        }
        if let Some(v) = self.epochs {
            cfg.num_train_epochs = v;
        }
        if self.max_steps.is_some() {
            cfg.max_steps = self.max_steps;
        }
        if let Some(v) = self.batch_size {
            cfg.per_device_train_batch_size = v;
            cfg.per_device_eval_batch_size = v;
        }
        if let Some(v) = self.grad_accum {
            cfg.gradient_accumulation_steps = v;
        }
        if let Some(v) = &self.lr_scheduler {
            cfg.lr_scheduler_type = serde_json::from_value(serde_json::Value::String(v.clone()))
                .with_context(|| {
                    format!(
                        "unknown --lr-scheduler `{v}`; one of {}",
                        ScheduleKind::NAMES.join(", ")
                    )
                })?;
        }
        if let Some(v) = self.warmup_ratio {
            cfg.warmup_ratio = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.logging_steps {
            cfg.logging_steps = v;
        }
        if let Some(v) = self.eval_steps {
            cfg.eval_steps = v;
        }
        if let Some(v) = self.save_steps {
            cfg.save_steps = v;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_defaults_and_unset_flags_keep_them() {
        let defaults = TrainerConfig {
            learning_rate: 1e-3,
            num_train_epochs: 3.0,
            ..TrainerConfig::default()
        };
        let flags = TrainFlags {
            learning_rate: Some(5e-4),
            batch_size: Some(2),
            lr_scheduler: Some("constant".into()),
            ..TrainFlags::default()
        };
        let cfg = flags.trainer_config(defaults).unwrap();
        assert_eq!(cfg.learning_rate, 5e-4);
        assert_eq!(cfg.num_train_epochs, 3.0);
        assert_eq!(cfg.per_device_train_batch_size, 2);
        assert_eq!(cfg.per_device_eval_batch_size, 2);
        assert_eq!(cfg.lr_scheduler_type, ScheduleKind::Constant);
    }

    #[test]
    fn an_unknown_schedule_names_the_choices() {
        let flags = TrainFlags {
            lr_scheduler: Some("zigzag".into()),
            ..TrainFlags::default()
        };
        let err = flags
            .trainer_config(TrainerConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("zigzag") && err.contains("cosine"), "{err}");
    }
}
