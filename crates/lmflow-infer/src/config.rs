//! Generation settings, named and defaulted as in `transformers.GenerationConfig`.

use serde::{Deserialize, Serialize};

use crate::error::{InferError, Result};

/// How to pick tokens and when to stop. Field names and defaults follow
/// `transformers.GenerationConfig`; `Default` is greedy decoding of up to 20 new tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    /// Most tokens generated per sequence (default 20, as transformers' `max_length` default).
    pub max_new_tokens: usize,
    /// EOS ids are suppressed (logit set to -inf) until this many tokens were generated (default 0).
    pub min_new_tokens: usize,
    /// Sample from the processed distribution instead of taking the argmax (default false).
    /// The warpers (temperature, top-k, top-p, min-p) only apply when sampling, as in transformers.
    pub do_sample: bool,
    /// Logits are divided by this before the other warpers (default 1.0 = off).
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens (ties with the k-th kept too); 0 = off (default 50,
    /// as transformers).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability mass reaches `top_p`
    /// (default 1.0 = off).
    pub top_p: f64,
    /// Drop tokens less likely than `min_p` times the most likely one (default none).
    pub min_p: Option<f64>,
    /// CTRL repetition penalty over prompt and generated tokens (padding excluded); 1.0 = off.
    pub repetition_penalty: f64,
    /// Independent samples per prompt (default 1); results are grouped per prompt.
    pub num_return_sequences: usize,
    /// Seed of the crate's own generator (default 0); same seed, same samples.
    pub seed: u64,
    /// Generation of a sequence stops after any of these ids (kept in the output, as transformers).
    pub eos_token_ids: Vec<u32>,
    /// Generation of a sequence stops once its new text contains one of these strings
    /// (the text keeps the stop string, as transformers' `stop_strings`).
    pub stop_strings: Vec<String>,
    /// Id used for left padding of ragged batches (never attended to); default 0.
    pub pad_token_id: u32,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            min_new_tokens: 0,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            min_p: None,
            repetition_penalty: 1.0,
            num_return_sequences: 1,
            seed: 0,
            eos_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            pad_token_id: 0,
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding of at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ..Self::default()
        }
    }

    /// Sampling with the given temperature, no top-k/top-p truncation.
    pub fn sampling(max_new_tokens: usize, temperature: f64, seed: u64) -> Self {
        Self {
            max_new_tokens,
            do_sample: true,
            temperature,
            top_k: 0,
            seed,
            ..Self::default()
        }
    }

    /// Checks the ranges transformers checks (positive temperature and penalty, `top_p` and
    /// `min_p` in [0, 1], at least one return sequence, greedy with one return sequence).
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &'static str, reason: String| Err(InferError::InvalidConfig { field, reason });
        if self.do_sample && !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(
                "temperature",
                format!("must be a positive number, got {}", self.temperature),
            );
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p", format!("must be in [0, 1], got {}", self.top_p));
        }
        if let Some(p) = self.min_p
            && !(0.0..=1.0).contains(&p)
        {
            return bad("min_p", format!("must be in [0, 1], got {p}"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                "repetition_penalty",
                format!("must be a positive number, got {}", self.repetition_penalty),
            );
        }
        if self.num_return_sequences == 0 {
            return bad("num_return_sequences", "must be at least 1".into());
        }
        if !self.do_sample && self.num_return_sequences > 1 {
            return bad(
                "num_return_sequences",
                "greedy decoding returns one sequence per prompt; enable sampling".into(),
            );
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad("stop_strings", "a stop string is empty".into());
        }
        Ok(())
    }
}
