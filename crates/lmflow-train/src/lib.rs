//! # lmflow-train
//!
//! The trainer of LMFlow-rs: continued pretraining and instruction tuning (full or with LoRA
//! adapters) of `lmflow-models` causal language models.
//!
//! Pieces usable on their own:
//! - [`loss::causal_lm_loss`]: next-token cross-entropy over trained tokens (labels `-100` skipped),
//!   equal to what `transformers` computes;
//! - [`objective`]: the [`Objective`] trait that makes the loop of [`Trainer::train_objective`]
//!   serve every algorithm ([`SftObjective`] here; reward modelling and DPO in `lmflow-align`);
//! - [`distributed`]: data-parallel training: the [`distributed::GradientSync`] seam the loop
//!   calls once per optimizer step, ranks as threads ([`distributed::ThreadGroup`]) or MPI
//!   processes (feature `mpi`), data sharding;
//! - [`multimodal`]: LLaVA fine-tuning (stage 1: projector only; stage 2: LoRA on the language
//!   model or the full language model) through the same loop, which is generic over the
//!   trained module;
//! - [`metrics`]: `metrics.jsonl` records and the loss-curve PNG;
//! - [`checkpoint`]: atomic writes and the resumable [`TrainerState`];
//! - [`run_folder`]: the run identity (`run.json`) that keeps two runs out of one folder.
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use lmflow_train::loss::causal_lm_loss;
//!
//! let device = Device::flex();
//! // Uniform logits over 4 tokens: every trained token costs ln(4).
//! let logits = Tensor::<3>::zeros([1, 3, 4], &device);
//! let labels = Tensor::<2, Int>::from_ints([[-100, 1, 2]], &device);
//! let loss = causal_lm_loss(logits, labels);
//! assert_eq!(loss.tokens, 2);
//! let mean: f32 = loss.mean().into_scalar();
//! assert!((mean - 4f32.ln()).abs() < 1e-6);
//! ```

pub mod checkpoint;
pub mod config;
pub mod distributed;
pub mod error;
pub mod lora_weights;
pub mod loss;
pub mod metrics;
pub mod multimodal;
pub mod objective;
pub mod run_folder;
pub mod stable_ids;
pub mod trainer;
pub mod weights;

pub use checkpoint::TrainerState;
pub use config::TrainerConfig;
pub use error::{Result, TrainError};
pub use lmflow_datasets::TokenizedSample;
pub use lora_weights::LoraWeights;
pub use loss::{
    IGNORE_INDEX, LossOutput, TokenLogprobs, causal_lm_loss, checkpointed_lm_loss_backward,
    shifted_token_logprobs,
};
pub use metrics::{MetricRecord, MetricsWriter, plot_loss_curve};
pub use objective::{MetricSum, Objective, ObjectiveLoss, ObjectiveStep, SftObjective};
pub use run_folder::{DataFingerprint, RunFolderPlan, RunIdentity, StartMode, plan_run_folder};
pub use stable_ids::assign_stable_param_ids;
pub use trainer::{EvalOutcome, TrainEvent, TrainOutcome, Trainer, WeightsIo};
pub use weights::FullModelWeights;
