//! Per-sequence log-likelihoods of labelled tokens (the policy/reference scores of DPO). The
//! implementation lives in `lmflow_models::logprobs`, below both the trainer and this crate.

pub use lmflow_models::logprobs::{SequenceLogprobs, sequence_logprobs};
