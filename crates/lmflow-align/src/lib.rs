//! # lmflow-align
//!
//! Alignment objectives on top of `lmflow-models`: the losses of reward modelling and Direct
//! Preference Optimization, computed exactly as TRL computes them (checked against a fixture
//! made by `tests/fixtures/align.py`).
//!
//! - [`sequence_logprobs`]: per-sequence log-likelihood of the labelled tokens
//!   (TRL's `get_batch_logps`);
//! - [`dpo_loss`]: sigmoid (with label smoothing), hinge, IPO and robust losses with implicit
//!   rewards;
//! - [`dpo_trainer`]: DPO as an objective of the shared training loop ([`DpoObjective`],
//!   [`train_dpo`]), reference log-probabilities precomputed in one pass;
//! - [`iterative_dpo`]: iterative DPO (sample, score, pair, DPO; [`run_iterative_dpo`]);
//! - [`pairwise_reward_loss`]: the Bradley-Terry loss of reward models, with optional margins;
//! - [`reward_fn`]: reward functions behind one trait ([`RewardFunction`]): closures over the
//!   text, AFINN / Hu-Liu lexicon sentiment, length and keyword rules, weighted sums;
//! - [`reward_model`]: reward models as a [`RewardFunction`] ([`RewardModelScorer`]) and
//!   their training as an objective of `lmflow-train`'s loop ([`RewardObjective`]);
//! - [`raft`]: RAFT, LMFlow's reward-ranked fine-tuning loop ([`Raft`]).
//!
//! Preference data comes from `lmflow-datasets` (`paired_conversation`,
//! `paired_text_to_text`, batched by `collate_pairs`). See `docs/alignment.md`.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use lmflow_align::{DpoConfig, dpo_loss};
//!
//! let device = Device::flex();
//! let t = |v: [f32; 2]| Tensor::<1>::from_floats(v, &device);
//! // The policy prefers the chosen answers more than the reference does: loss below ln 2.
//! let out = dpo_loss(
//!     &DpoConfig::default(),
//!     t([-10.0, -12.0]), t([-14.0, -15.0]),
//!     t([-11.0, -12.0]), t([-13.0, -14.0]),
//! );
//! let loss: f32 = out.loss().into_scalar();
//! assert!(loss < 2f32.ln());
//! assert_eq!(out.reward_accuracy(), 1.0);
//! ```

pub mod dpo;
pub mod dpo_trainer;
pub mod error;
pub mod iterative_dpo;
pub mod logps;
pub mod raft;
pub mod reward;
pub mod reward_fn;
pub mod reward_model;

pub use dpo::{DpoConfig, DpoLossType, DpoOutput, dpo_loss};
pub use dpo_trainer::{DpoObjective, DpoPair, Reference, precompute_reference, train_dpo};
pub use error::AlignError;
pub use iterative_dpo::{IterativeDpoConfig, Pairing, run_iterative_dpo};
pub use logps::{SequenceLogprobs, sequence_logprobs};
pub use raft::{Raft, RaftConfig, RaftPrompt, Selection};
pub use reward::pairwise_reward_loss;
pub use reward_fn::{RewardFunction, RewardSample};
pub use reward_model::{RewardModelScorer, RewardObjective};
