//! # lmflow-models
//!
//! Hugging Face-compatible causal language models on Burn (work in progress: see docs/models.md).

pub mod tokenizer;

pub use tokenizer::Tokenizer;
