//! Speculative decoding (Leviathan et al., 2023) with KV caches on both models.
//!
//! Each round the draft model proposes `gamma` tokens one at a time (incrementally, with its
//! cache), the target scores all of them in one forward pass, and
//! [`verify_sampled`] /
//! [`verify_greedy`] decide how many to keep. Both caches
//! are then rolled back ([`KvCache::truncate`]) to the accepted prefix. The output distribution
//! is the target's (greedy: exactly the target's greedy tokens). Prompts are decoded one at a
//! time (batch 1), as LMFlow's `SpeculativeInferencer`.

use burn::tensor::{Device, Tensor, s};
use lmflow_models::{CausalLm, ForwardInput, KvCache, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::config::GenerationConfig;
use crate::error::{InferError, Result};
use crate::generate::{GenerationOutput, SequenceState, StreamCallback, prepare};
use crate::processors::{LogitsPipeline, softmax};
use crate::sampler::{argmax, sample_from_probs};
use crate::speculative_math::{verify_greedy, verify_sampled};
use crate::stopping::StopCriteria;
use crate::tensor_io::{float_rows, ids_tensor};

/// Counters of a speculative run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeculativeStats {
    /// Verification rounds (= target forward passes after the prefill).
    pub rounds: usize,
    /// Draft tokens proposed.
    pub drafted: usize,
    /// Draft tokens accepted.
    pub accepted: usize,
}

impl SpeculativeStats {
    /// Fraction of draft tokens accepted (0 when none were drafted).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// Generates with a target model, drafting with a smaller model sharing its vocabulary.
pub struct SpeculativeGenerator<'a> {
    target: &'a CausalLm,
    draft: &'a CausalLm,
    tokenizer: Option<&'a Tokenizer>,
    device: Device,
    gamma: usize,
}

impl<'a> SpeculativeGenerator<'a> {
    /// A generator drafting `gamma` tokens per round (LMFlow's default is 5).
    ///
    /// # Errors
    /// `gamma == 0`, or the two models have different vocabulary sizes.
    pub fn new(
        target: &'a CausalLm,
        draft: &'a CausalLm,
        device: &Device,
        gamma: usize,
    ) -> Result<Self> {
        if gamma == 0 {
            return Err(InferError::InvalidConfig {
                field: "gamma",
                reason: "must be at least 1".into(),
            });
        }
        if target.vocab_size() != draft.vocab_size() {
            return Err(InferError::InvalidConfig {
                field: "draft_model",
                reason: format!(
                    "vocabulary sizes differ: target {}, draft {}",
                    target.vocab_size(),
                    draft.vocab_size()
                ),
            });
        }
        Ok(Self {
            target,
            draft,
            tokenizer: None,
            device: device.clone(),
            gamma,
        })
    }

    /// Uses `tokenizer` for streaming text, stop strings and the output's `text`.
    pub fn with_tokenizer(mut self, tokenizer: &'a Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Generates for every prompt; same settings and outputs as
    /// [`Generator::generate`](crate::Generator::generate).
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
    ) -> Result<(Vec<GenerationOutput>, SpeculativeStats)> {
        self.generate_streaming(prompts, config, &mut |_, _| {})
    }

    /// [`SpeculativeGenerator::generate`] with a streaming callback (see
    /// [`StreamCallback`]).
    pub fn generate_streaming(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        on_text: &mut StreamCallback<'_>,
    ) -> Result<(Vec<GenerationOutput>, SpeculativeStats)> {
        let seqs = prepare(prompts, config, self.tokenizer)?;
        let pipeline = LogitsPipeline::new(config);
        let stop = StopCriteria::new(
            config.eos_token_ids.clone(),
            config.stop_strings.clone(),
            config.max_new_tokens,
        );
        let mut stats = SpeculativeStats::default();
        let mut outputs = Vec::with_capacity(seqs.len());
        for (index, mut seq) in seqs.into_iter().enumerate() {
            if config.max_new_tokens > 0 {
                self.decode_one(
                    index, &mut seq, config, &pipeline, &stop, &mut stats, on_text,
                )?;
            }
            outputs.push(seq.into_output(self.tokenizer)?);
        }
        Ok((outputs, stats))
    }

    #[allow(clippy::too_many_arguments)]
    fn decode_one(
        &self,
        index: usize,
        seq: &mut SequenceState<'_>,
        config: &GenerationConfig,
        pipeline: &LogitsPipeline,
        stop: &StopCriteria,
        stats: &mut SpeculativeStats,
        on_text: &mut StreamCallback<'_>,
    ) -> Result<()> {
        let capacity = seq.prompt.len() + config.max_new_tokens + self.gamma + 1;
        let mut target_cache = self.target.new_cache(capacity);
        let mut draft_cache = self.draft.new_cache(capacity);
        // Invariant: the target cache holds every token of the context but the last.
        let prompt = seq.prompt.clone();
        if prompt.len() > 1 {
            let head = &prompt[..prompt.len() - 1];
            let ids = ids_tensor(&[head.iter().map(|&t| t as i64).collect()], &self.device);
            self.target
                .forward_hidden(&ForwardInput::new(ids), Some(&mut target_cache))?;
        }
        while seq.finished.is_none() {
            let context = seq.context();
            let remaining = config.max_new_tokens - seq.new_ids.len();
            let gamma = self.gamma.min(remaining - 1);
            // Draft phase: propose `gamma` tokens incrementally.
            let mut extended = context.clone();
            let mut drafts = Vec::with_capacity(gamma);
            let mut q = Vec::with_capacity(gamma);
            for j in 0..gamma {
                let feed = extended[draft_cache.len()..].to_vec();
                let mut rows = self.run(self.draft, &feed, &mut draft_cache)?;
                let mut scores = rows.pop().unwrap_or_default();
                pipeline.apply(&mut scores, &extended, seq.new_ids.len() + j);
                let token = if config.do_sample {
                    let probs = softmax(&scores);
                    let t = sample_from_probs(&probs, &mut seq.rng);
                    q.push(probs);
                    t
                } else {
                    argmax(&scores)
                };
                drafts.push(token);
                extended.push(token);
            }
            // Verification: one target pass over the pending token and the drafts.
            let before = target_cache.len();
            let feed = extended[before..].to_vec();
            let mut rows = self.run(self.target, &feed, &mut target_cache)?;
            for (i, row) in rows.iter_mut().enumerate() {
                pipeline.apply(row, &extended[..context.len() + i], seq.new_ids.len() + i);
            }
            let verdict = if config.do_sample {
                let p: Vec<Vec<f32>> = rows.iter().map(|r| softmax(r)).collect();
                verify_sampled(&drafts, &q, &p, &mut seq.rng)
            } else {
                verify_greedy(&drafts, &rows)
            };
            stats.rounds += 1;
            stats.drafted += gamma;
            stats.accepted += verdict.accepted;
            // Roll both caches back to the accepted prefix.
            target_cache.truncate(context.len() + verdict.accepted);
            draft_cache.truncate(context.len() + verdict.accepted);
            let emitted = drafts[..verdict.accepted]
                .iter()
                .copied()
                .chain(std::iter::once(verdict.next_token));
            for token in emitted {
                seq.push(index, token, stop, on_text)?;
                if seq.finished.is_some() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Feeds `tokens` (batch 1) through `model` with its cache; returns the processed-ready score
    /// rows of every fed position.
    fn run(&self, model: &CausalLm, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<Vec<f32>>> {
        let ids = ids_tensor(&[tokens.iter().map(|&t| t as i64).collect()], &self.device);
        let logits: Tensor<3> = model.forward(ForwardInput::new(ids), Some(cache))?.logits;
        let [_, n, vocab] = logits.dims();
        float_rows(
            logits.slice(s![0..1, 0..n, ..]).reshape([n, vocab]),
            "logits",
        )
    }
}
