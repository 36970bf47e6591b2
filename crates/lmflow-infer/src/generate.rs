//! Batched generation with a preallocated KV cache: one prefill pass over the (left-padded)
//! prompts, then one single-token pass per step, as `transformers`' `generate` does.

use burn::tensor::{Device, Int, Tensor, s};
use lmflow_models::attention::position_ids_from_attention_mask;
use lmflow_models::tokenizer::StreamDecoder;
use lmflow_models::{CausalLm, ForwardInput, KvCache, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::config::GenerationConfig;
use crate::error::{InferError, Result};
use crate::processors::LogitsPipeline;
use crate::rng::SeededRng;
use crate::sampler;
use crate::stopping::{FinishReason, StopCriteria};
use crate::tensor_io::{float_rows, ids_tensor, int_values};

/// One generated sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationOutput {
    /// Index of the prompt it continues.
    pub prompt_index: usize,
    /// The prompt's token ids (no padding).
    pub prompt_ids: Vec<u32>,
    /// Generated ids; a final EOS id is included, as in transformers' output.
    pub new_ids: Vec<u32>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// The generated text without special tokens (when a tokenizer was given).
    pub text: Option<String>,
}

/// Receives text as it is decoded: `(sequence index, new text)`. Sequence `i` continues prompt
/// `i / num_return_sequences`.
pub type StreamCallback<'c> = dyn FnMut(usize, &str) + 'c;

/// Per-sequence decoding state shared by plain and speculative generation.
pub(crate) struct SequenceState<'t> {
    pub(crate) prompt_index: usize,
    pub(crate) prompt: Vec<u32>,
    pub(crate) new_ids: Vec<u32>,
    pub(crate) finished: Option<FinishReason>,
    pub(crate) rng: SeededRng,
    pub(crate) text: String,
    pub(crate) decoder: Option<StreamDecoder<'t>>,
}

impl<'t> SequenceState<'t> {
    pub(crate) fn new(
        prompt_index: usize,
        prompt: Vec<u32>,
        rng: SeededRng,
        tokenizer: Option<&'t Tokenizer>,
    ) -> Self {
        Self {
            prompt_index,
            prompt,
            new_ids: Vec::new(),
            finished: None,
            rng,
            text: String::new(),
            decoder: tokenizer.map(|t| t.stream_decoder(true)),
        }
    }

    /// Prompt followed by the generated tokens.
    pub(crate) fn context(&self) -> Vec<u32> {
        let mut c = self.prompt.clone();
        c.extend_from_slice(&self.new_ids);
        c
    }

    /// Appends a token, streams its text and applies the stop criteria.
    pub(crate) fn push(
        &mut self,
        index: usize,
        token: u32,
        stop: &StopCriteria,
        on_text: &mut StreamCallback<'_>,
    ) -> Result<()> {
        self.new_ids.push(token);
        if let Some(decoder) = &mut self.decoder
            && let Some(piece) = decoder.push(token)?
        {
            self.text.push_str(&piece);
            on_text(index, &piece);
        }
        self.finished = stop.check(token, self.new_ids.len(), &self.text);
        if self.finished.is_some()
            && let Some(decoder) = &mut self.decoder
            && let Some(piece) = decoder.finish()?
        {
            self.text.push_str(&piece);
            on_text(index, &piece);
        }
        Ok(())
    }

    pub(crate) fn into_output(self, tokenizer: Option<&Tokenizer>) -> Result<GenerationOutput> {
        let text = match tokenizer {
            Some(t) => Some(t.decode(&self.new_ids, true)?),
            None => None,
        };
        Ok(GenerationOutput {
            prompt_index: self.prompt_index,
            prompt_ids: self.prompt,
            new_ids: self.new_ids,
            finish_reason: self.finished.unwrap_or(FinishReason::Length),
            text,
        })
    }
}

/// Validates prompts and config and expands prompts by `num_return_sequences`.
pub(crate) fn prepare<'t>(
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    tokenizer: Option<&'t Tokenizer>,
) -> Result<Vec<SequenceState<'t>>> {
    config.validate()?;
    if !config.stop_strings.is_empty() && tokenizer.is_none() {
        return Err(InferError::InvalidConfig {
            field: "stop_strings",
            reason: "stop strings need a tokenizer to decode the generated text".into(),
        });
    }
    if prompts.is_empty() {
        return Err(InferError::InvalidInput {
            index: 0,
            reason: "no prompts".into(),
        });
    }
    let mut master = SeededRng::new(config.seed);
    let mut seqs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(InferError::InvalidInput {
                index: i,
                reason: "empty prompt".into(),
            });
        }
        for _ in 0..config.num_return_sequences {
            seqs.push(SequenceState::new(i, p.clone(), master.fork(), tokenizer));
        }
    }
    Ok(seqs)
}

/// Picks the next token of one sequence from its raw scores.
pub(crate) fn choose(
    pipeline: &LogitsPipeline,
    config: &GenerationConfig,
    scores: &mut [f32],
    seq: &mut SequenceState<'_>,
) -> u32 {
    pipeline.apply(scores, &seq.context(), seq.new_ids.len());
    if config.do_sample {
        sampler::sample(scores, &mut seq.rng)
    } else {
        sampler::argmax(scores)
    }
}

/// Generates continuations of token-id prompts with a model.
pub struct Generator<'a> {
    model: &'a CausalLm,
    tokenizer: Option<&'a Tokenizer>,
    device: Device,
}

impl<'a> Generator<'a> {
    /// A generator for `model`, whose weights live on `device`.
    pub fn new(model: &'a CausalLm, device: &Device) -> Self {
        Self {
            model,
            tokenizer: None,
            device: device.clone(),
        }
    }

    /// Uses `tokenizer` for streaming text, stop strings and the output's `text`.
    pub fn with_tokenizer(mut self, tokenizer: &'a Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Generates for every prompt (`num_return_sequences` outputs each, prompt-major).
    ///
    /// # Errors
    /// Invalid settings or prompts, or a model error (e.g. positions beyond a learned
    /// position table).
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
    ) -> Result<Vec<GenerationOutput>> {
        self.generate_streaming(prompts, config, &mut |_, _| {})
    }

    /// Like [`Generator::generate`], calling `on_text` with each piece of decoded text as soon as
    /// it is complete (needs a tokenizer; without one nothing is streamed).
    ///
    /// Prompts of different lengths are left-padded with `pad_token_id`; the attention mask hides
    /// the padding and positions count from each prompt's first real token, as `generate` does.
    pub fn generate_streaming(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        on_text: &mut StreamCallback<'_>,
    ) -> Result<Vec<GenerationOutput>> {
        let mut seqs = prepare(prompts, config, self.tokenizer)?;
        let pipeline = LogitsPipeline::new(config);
        let stop = StopCriteria::new(
            config.eos_token_ids.clone(),
            config.stop_strings.clone(),
            config.max_new_tokens,
        );
        if config.max_new_tokens == 0 {
            return seqs
                .into_iter()
                .map(|s| s.into_output(self.tokenizer))
                .collect();
        }
        let batch = seqs.len();
        let width = seqs.iter().map(|s| s.prompt.len()).max().unwrap_or(0);
        let padded = seqs.iter().any(|s| s.prompt.len() != width);
        let rows: Vec<Vec<i64>> = seqs
            .iter()
            .map(|s| {
                let mut r = vec![config.pad_token_id as i64; width - s.prompt.len()];
                r.extend(s.prompt.iter().map(|&t| t as i64));
                r
            })
            .collect();
        let mask_rows: Vec<Vec<i64>> = seqs
            .iter()
            .map(|s| {
                let mut r = vec![0i64; width - s.prompt.len()];
                r.resize(width, 1);
                r
            })
            .collect();
        let mut mask = padded.then(|| ids_tensor(&mask_rows, &self.device));
        let mut cache = self.model.new_cache(width + config.max_new_tokens);
        let mut input = ForwardInput::new(ids_tensor(&rows, &self.device));
        if let Some(m) = &mask {
            input = input
                .with_attention_mask(m.clone())
                .with_position_ids(position_ids_from_attention_mask(m.clone()));
        }
        tracing::debug!(batch, width, "prefill");
        let mut logits = self.last_logits(&input, &mut cache, width)?;
        let greedy_on_device = pipeline.is_identity_for_greedy();
        for step in 0..config.max_new_tokens {
            let next: Vec<u32> = if greedy_on_device {
                int_values(logits.argmax(1), "next tokens")?
            } else {
                let mut rows = float_rows(logits, "logits")?;
                seqs.iter_mut()
                    .zip(rows.iter_mut())
                    .map(|(seq, scores)| {
                        if seq.finished.is_some() {
                            config.pad_token_id
                        } else {
                            choose(&pipeline, config, scores, seq)
                        }
                    })
                    .collect()
            };
            let mut fed = Vec::with_capacity(batch);
            for (i, (seq, &token)) in seqs.iter_mut().zip(&next).enumerate() {
                if seq.finished.is_some() {
                    fed.push(config.pad_token_id as i64);
                } else {
                    seq.push(i, token, &stop, on_text)?;
                    fed.push(token as i64);
                }
            }
            if seqs.iter().all(|s| s.finished.is_some()) || step + 1 == config.max_new_tokens {
                break;
            }
            let ids = ids_tensor(
                &fed.iter().map(|&t| vec![t]).collect::<Vec<_>>(),
                &self.device,
            );
            let mut input = ForwardInput::new(ids);
            if let Some(m) = mask.take() {
                let ones = Tensor::<2, Int>::ones([batch, 1], &self.device);
                let m = Tensor::cat(vec![m, ones], 1);
                let positions: Vec<Vec<i64>> = seqs
                    .iter()
                    .map(|s| vec![(s.prompt.len() + step) as i64])
                    .collect();
                input = input
                    .with_attention_mask(m.clone())
                    .with_position_ids(ids_tensor(&positions, &self.device));
                mask = Some(m);
            }
            logits = self.last_logits(&input, &mut cache, 1)?;
        }
        seqs.into_iter()
            .map(|s| s.into_output(self.tokenizer))
            .collect()
    }

    /// Runs the model and projects only the last position to the vocabulary: `[batch, vocab]`.
    fn last_logits(
        &self,
        input: &ForwardInput,
        cache: &mut KvCache,
        seq: usize,
    ) -> Result<Tensor<2>> {
        let hidden = self.model.forward_hidden(input, Some(cache))?;
        let batch = hidden.dims()[0];
        let logits = self.model.logits(hidden.slice(s![.., seq - 1..seq, ..]));
        let vocab = logits.dims()[2];
        Ok(logits.reshape([batch, vocab]))
    }
}
