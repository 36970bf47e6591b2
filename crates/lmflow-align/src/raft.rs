//! RAFT (Reward rAnked FineTuning, Dong et al. 2023), LMFlow's alignment loop.
//!
//! Each iteration `i` (1-based):
//! 1. draws `prompts_per_iteration` prompts (a seeded shuffle of the prompt set per iteration);
//! 2. samples `samples_per_prompt` responses to each with `lmflow-infer`'s generator
//!    (temperature, top-k, top-p, `min_new_tokens`..`max_new_tokens`; seeds derived from
//!    `seed` and `i`);
//! 3. scores them with a [`RewardFunction`];
//! 4. drops degenerate responses: no word, a repeated response (the same text as an earlier
//!    sample of the same prompt), or a response of at least 4 words whose own distinct-2 is below
//!    `min_distinct2` (a loop such as "the the the");
//! 5. keeps the best response of each prompt ([`Selection::Local`]) or the top
//!    `fraction` of all remaining responses ([`Selection::Global`]);
//! 6. fine-tunes on the kept `(prompt, response)` samples (prompt tokens masked from the loss)
//!    with `lmflow-train`'s loop for the configured steps (a fresh optimizer each iteration, as
//!    LMFlow's aligner builds a new trainer per iteration);
//! 7. appends the iteration's record to `metrics.jsonl` (mean / max reward of all samples,
//!    mean reward of the kept ones, counts, distinct-2 of all responses, the SFT loss) and
//!    writes `checkpoints/iter-NNNN/` (weights and `raft_state.json`) atomically.
//!
//! A run resumes from its newest iteration checkpoint: every random choice derives from
//! `(seed, iteration)` and each iteration starts from the saved weights, so a killed and resumed
//! run ends with the same weights and metrics as an uninterrupted one.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use lmflow_datasets::{IGNORE_INDEX, TokenizedSample};
use lmflow_infer::{GenerationConfig, Generator};
use lmflow_models::{CausalLm, Tokenizer};
use lmflow_train::checkpoint::{replace_dir_atomic, write_atomic};
use lmflow_train::{TrainEvent, Trainer, TrainerConfig, WeightsIo};
use serde::{Deserialize, Serialize};

use crate::error::AlignError;
use crate::reward_fn::{RewardFunction, RewardSample, words};

/// Which samples of an iteration are kept for fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Selection {
    /// The best response of each prompt (LMFlow's `local`).
    Local,
    /// The top `fraction` (0, 1] of all non-degenerate responses by reward, rounded up
    /// (LMFlow's `global` / top reward percentage).
    Global {
        /// Share of responses kept.
        fraction: f64,
    },
}

/// Settings of a RAFT run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftConfig {
    /// Run folder: `metrics.jsonl`, `checkpoints/`, `sft/` (the current iteration's
    /// fine-tuning), `final/`.
    pub output_dir: PathBuf,
    /// Iterations.
    pub iterations: usize,
    /// Prompts drawn per iteration.
    pub prompts_per_iteration: usize,
    /// Responses sampled per prompt (K).
    pub samples_per_prompt: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus sampling mass (1.0: off).
    pub top_p: f64,
    /// Top-k truncation (0: off).
    pub top_k: usize,
    /// EOS is suppressed until this many tokens were generated.
    pub min_new_tokens: usize,
    /// Most tokens per response.
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    pub generation_batch_size: usize,
    /// Which samples are kept.
    pub selection: Selection,
    /// Responses of 4 or more words with a lower distinct-2 are degenerate (0: off).
    pub min_distinct2: f64,
    /// Seed of prompt draws, sampling and fine-tuning order.
    pub seed: u64,
    /// Resume from the newest iteration checkpoint in `output_dir`.
    pub resume: bool,
    /// The fine-tuning phase of each iteration (`output_dir`, `seed` and `resume` are set per
    /// iteration; use `max_steps` for the steps per iteration).
    pub sft: TrainerConfig,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("output/raft"),
            iterations: 3,
            prompts_per_iteration: 32,
            samples_per_prompt: 4,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_new_tokens: 1,
            max_new_tokens: 32,
            generation_batch_size: 16,
            selection: Selection::Local,
            min_distinct2: 0.5,
            seed: 42,
            resume: true,
            sft: TrainerConfig {
                max_steps: Some(8),
                learning_rate: 1e-4,
                per_device_train_batch_size: 8,
                ..TrainerConfig::default()
            },
        }
    }
}

impl RaftConfig {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`AlignError::Config`] naming the field.
    pub fn validate(&self) -> Result<(), AlignError> {
        let bad = |m: String| Err(AlignError::Config(format!("raft: {m}")));
        if self.iterations == 0 {
            return bad("iterations must be at least 1".into());
        }
        if self.prompts_per_iteration == 0 || self.samples_per_prompt == 0 {
            return bad("prompts_per_iteration and samples_per_prompt must be positive".into());
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be positive, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.max_new_tokens == 0 || self.min_new_tokens > self.max_new_tokens {
            return bad(format!(
                "need 0 < max_new_tokens ({}) and min_new_tokens ({}) <= max_new_tokens",
                self.max_new_tokens, self.min_new_tokens
            ));
        }
        if self.generation_batch_size == 0 {
            return bad("generation_batch_size must be positive".into());
        }
        if let Selection::Global { fraction } = self.selection
            && !(fraction > 0.0 && fraction <= 1.0)
        {
            return bad(format!(
                "global selection fraction must be in (0, 1], got {fraction}"
            ));
        }
        if !(0.0..=1.0).contains(&self.min_distinct2) {
            return bad(format!(
                "min_distinct2 must be in [0, 1], got {}",
                self.min_distinct2
            ));
        }
        if self.sft.max_steps.is_none_or(|s| s == 0) {
            return bad(
                "sft.max_steps (fine-tuning steps per iteration) must be set and positive".into(),
            );
        }
        Ok(())
    }
}

/// A prompt: its text (given to the reward function) and its tokens (given to the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftPrompt {
    /// The text the reward function sees as the prompt.
    pub text: String,
    /// The model input (e.g. the text rendered with a chat template, tokenized).
    pub ids: Vec<u32>,
}

/// One sampled and scored response.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSample {
    /// Index of its prompt in the iteration's draw.
    pub prompt: usize,
    /// Generated ids (a final EOS included).
    pub ids: Vec<u32>,
    /// Decoded text (special tokens skipped).
    pub text: String,
    /// Its reward.
    pub reward: f64,
    /// Why it was dropped, if it was.
    pub degenerate: Option<&'static str>,
}

/// The record of one iteration (a line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftIterationRecord {
    /// Iteration (1-based).
    pub iteration: usize,
    /// Responses sampled.
    pub generated: usize,
    /// Responses dropped as degenerate.
    pub degenerate: usize,
    /// Responses kept for fine-tuning.
    pub kept: usize,
    /// Mean reward of all sampled responses.
    pub reward_mean: f64,
    /// Largest reward.
    pub reward_max: f64,
    /// Mean reward of the kept responses.
    pub kept_reward_mean: f64,
    /// Distinct bigrams / bigrams over all responses' words.
    pub distinct_2: f64,
    /// Last logged loss of the fine-tuning phase.
    pub sft_loss: Option<f64>,
}

/// What [`Raft::run`] returns.
#[derive(Debug)]
pub struct RaftOutcome {
    /// The aligned model.
    pub model: CausalLm,
    /// Every iteration's record (including those of a resumed run's earlier part).
    pub records: Vec<RaftIterationRecord>,
    /// The iteration resumed after, if any.
    pub resumed_from: Option<usize>,
}

/// Distinct bigrams / bigrams over the words of `texts` (0 when there is no bigram): the
/// diversity measure of RAFT's paper.
pub fn distinct_2<S: AsRef<str>>(texts: &[S]) -> f64 {
    let mut all = std::collections::HashSet::new();
    let mut total = 0usize;
    for t in texts {
        let ws = words(t.as_ref());
        for pair in ws.windows(2) {
            all.insert((pair[0].clone(), pair[1].clone()));
            total += 1;
        }
    }
    if total == 0 {
        0.0
    } else {
        all.len() as f64 / total as f64
    }
}

/// SplitMix64 step: the seeds of an iteration's choices.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The prompts iteration `iteration` draws: a seeded shuffle of `0..n`, first `count`.
pub fn draw_prompts(n: usize, count: usize, seed: u64, iteration: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = mix(seed ^ mix(iteration as u64));
    for i in (1..n).rev() {
        state = mix(state);
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order.truncate(count.min(n));
    order
}

/// Marks degenerate samples (see the module documentation).
pub fn mark_degenerate(samples: &mut [ScoredSample], min_distinct2: f64) {
    let mut seen: std::collections::HashSet<(usize, String)> = Default::default();
    for s in samples.iter_mut() {
        let ws = words(&s.text);
        s.degenerate = if ws.is_empty() {
            Some("empty")
        } else if !seen.insert((s.prompt, s.text.trim().to_string())) {
            Some("repeated")
        } else if ws.len() >= 4 && distinct_2(&[s.text.as_str()]) < min_distinct2 {
            Some("repetitive")
        } else {
            None
        };
    }
}

/// Indices of the samples kept by `selection` (degenerate ones never are), best first within
/// a prompt; ties keep the earlier sample.
pub fn select(samples: &[ScoredSample], selection: Selection) -> Vec<usize> {
    let mut ok: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].degenerate.is_none() && samples[i].reward.is_finite())
        .collect();
    // Stable sort: equal rewards keep sampling order.
    ok.sort_by(|&a, &b| samples[b].reward.total_cmp(&samples[a].reward));
    match selection {
        Selection::Local => {
            let mut taken = std::collections::HashSet::new();
            let mut kept: Vec<usize> = ok
                .into_iter()
                .filter(|&i| taken.insert(samples[i].prompt))
                .collect();
            kept.sort_unstable();
            kept
        }
        Selection::Global { fraction } => {
            let n = ((ok.len() as f64) * fraction).ceil() as usize;
            let mut kept: Vec<usize> = ok.into_iter().take(n).collect();
            kept.sort_unstable();
            kept
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct RaftState {
    iteration: usize,
    records: Vec<RaftIterationRecord>,
}

const STATE_FILE: &str = "raft_state.json";

/// The RAFT loop over a model, a tokenizer, a reward function and a weights format.
pub struct Raft<'a> {
    config: RaftConfig,
    tokenizer: &'a Tokenizer,
    reward: &'a dyn RewardFunction,
    weights: &'a dyn WeightsIo,
    device: Device,
}

impl std::fmt::Debug for Raft<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raft")
            .field("config", &self.config)
            .field("reward", &self.reward.name())
            .finish()
    }
}

impl<'a> Raft<'a> {
    /// A RAFT run; `device` is the autodiff device fine-tuning runs on (generation runs on its
    /// inner device).
    ///
    /// # Errors
    /// [`AlignError::Config`] for invalid settings.
    pub fn new(
        config: RaftConfig,
        tokenizer: &'a Tokenizer,
        reward: &'a dyn RewardFunction,
        weights: &'a dyn WeightsIo,
        device: Device,
    ) -> Result<Self, AlignError> {
        config.validate()?;
        Ok(Self {
            config,
            tokenizer,
            reward,
            weights,
            device,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RaftConfig {
        &self.config
    }

    fn checkpoints(&self) -> PathBuf {
        self.config.output_dir.join("checkpoints")
    }

    fn checkpoint_dir(&self, iteration: usize) -> PathBuf {
        self.checkpoints().join(format!("iter-{iteration:04}"))
    }

    /// The newest complete iteration checkpoint: `(iteration, folder)`.
    pub fn latest_checkpoint(&self) -> Option<(usize, PathBuf)> {
        let entries = std::fs::read_dir(self.checkpoints()).ok()?;
        entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                let n: usize = path
                    .file_name()?
                    .to_str()?
                    .strip_prefix("iter-")?
                    .parse()
                    .ok()?;
                path.join(STATE_FILE).is_file().then_some((n, path))
            })
            .max_by_key(|(n, _)| *n)
    }

    /// The generation settings of `iteration` (seeded from `seed` and the iteration).
    pub fn generation_config(&self, iteration: usize, chunk: usize) -> GenerationConfig {
        let c = &self.config;
        GenerationConfig {
            max_new_tokens: c.max_new_tokens,
            min_new_tokens: c.min_new_tokens,
            do_sample: true,
            temperature: c.temperature,
            top_k: c.top_k,
            top_p: c.top_p,
            num_return_sequences: c.samples_per_prompt,
            seed: mix(mix(c.seed ^ 0x5241_4654) ^ ((iteration as u64) << 20) ^ chunk as u64),
            eos_token_ids: self.tokenizer.eos_token_ids().to_vec(),
            pad_token_id: self
                .tokenizer
                .pad_token_id()
                .or(self.tokenizer.eos_token_id())
                .unwrap_or(0),
            ..GenerationConfig::default()
        }
    }

    /// Samples `samples_per_prompt` responses to each of `prompts` with `model` and scores them
    /// (the sampling of `iteration`; degenerate ones are marked, not removed).
    ///
    /// # Errors
    /// Generation or reward errors.
    pub fn sample_and_score(
        &self,
        model: &CausalLm,
        prompts: &[&RaftPrompt],
        iteration: usize,
    ) -> Result<Vec<ScoredSample>, AlignError> {
        let plain = model.valid();
        let device = self.device.clone().inner();
        let generator = Generator::new(&plain, &device).with_tokenizer(self.tokenizer);
        let mut samples = Vec::new();
        let batch = self.config.generation_batch_size;
        for (chunk, group) in prompts.chunks(batch).enumerate() {
            let ids: Vec<Vec<u32>> = group.iter().map(|p| p.ids.clone()).collect();
            let outputs = generator.generate(&ids, &self.generation_config(iteration, chunk))?;
            for out in outputs {
                let text = match out.text {
                    Some(t) => t,
                    None => self
                        .tokenizer
                        .decode(&out.new_ids, true)
                        .map_err(lmflow_models::ModelError::from)?,
                };
                samples.push(ScoredSample {
                    prompt: chunk * batch + out.prompt_index,
                    ids: out.new_ids,
                    text,
                    reward: 0.0,
                    degenerate: None,
                });
            }
        }
        let pairs: Vec<RewardSample<'_>> = samples
            .iter()
            .map(|s| RewardSample::new(&prompts[s.prompt].text, &s.text))
            .collect();
        let rewards = self.reward.score(&pairs)?;
        if rewards.len() != samples.len() {
            return Err(AlignError::Config(format!(
                "reward function `{}` returned {} rewards for {} samples",
                self.reward.name(),
                rewards.len(),
                samples.len()
            )));
        }
        for (s, r) in samples.iter_mut().zip(rewards) {
            s.reward = r;
        }
        mark_degenerate(&mut samples, self.config.min_distinct2);
        Ok(samples)
    }

    /// Runs the remaining iterations on `model` (resuming when configured and a checkpoint
    /// exists), calling `on_record` after each.
    ///
    /// # Errors
    /// Settings, generation, reward, training or I/O errors.
    pub fn run(
        &self,
        model: CausalLm,
        prompts: &[RaftPrompt],
        on_record: &mut dyn FnMut(&RaftIterationRecord),
    ) -> Result<RaftOutcome, AlignError> {
        let c = &self.config;
        if prompts.is_empty() {
            return Err(AlignError::Config("raft: the prompt set is empty".into()));
        }
        let out = &c.output_dir;
        std::fs::create_dir_all(out).map_err(|e| AlignError::io(out, e))?;
        let mut model = model;
        let mut records = Vec::new();
        let mut start = 1;
        let mut resumed_from = None;
        if c.resume
            && let Some((n, dir)) = self.latest_checkpoint()
        {
            let state_path = dir.join(STATE_FILE);
            let text =
                std::fs::read_to_string(&state_path).map_err(|e| AlignError::io(&state_path, e))?;
            let state: RaftState = serde_json::from_str(&text).map_err(|e| AlignError::Data {
                path: state_path.clone(),
                message: format!("not a RAFT state: {e}"),
            })?;
            model = self.weights.load(model, &dir.join("weights"))?;
            records = state.records;
            start = n + 1;
            resumed_from = Some(n);
            tracing::info!("raft: resuming after iteration {n} ({})", dir.display());
        }
        self.rewrite_metrics(&records)?;
        for iteration in start..=c.iterations {
            let (next, record) = self.iteration(model, prompts, iteration)?;
            model = next;
            self.append_metrics(&record)?;
            records.push(record.clone());
            self.save_checkpoint(&model, iteration, &records)?;
            on_record(&record);
        }
        let final_dir = out.join("final");
        let staging = out.join("final.tmp");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| AlignError::io(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| AlignError::io(&staging, e))?;
        self.weights.save(&model, &staging)?;
        replace_dir_atomic(&staging, &final_dir)?;
        Ok(RaftOutcome {
            model,
            records,
            resumed_from,
        })
    }

    fn iteration(
        &self,
        model: CausalLm,
        prompts: &[RaftPrompt],
        iteration: usize,
    ) -> Result<(CausalLm, RaftIterationRecord), AlignError> {
        let c = &self.config;
        let drawn: Vec<&RaftPrompt> =
            draw_prompts(prompts.len(), c.prompts_per_iteration, c.seed, iteration)
                .into_iter()
                .map(|i| &prompts[i])
                .collect();
        let samples = self.sample_and_score(&model, &drawn, iteration)?;
        let kept = select(&samples, c.selection);
        let rewards: Vec<f64> = samples.iter().map(|s| s.reward).collect();
        let texts: Vec<&str> = samples.iter().map(|s| s.text.as_str()).collect();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let kept_rewards: Vec<f64> = kept.iter().map(|&i| samples[i].reward).collect();
        let mut record = RaftIterationRecord {
            iteration,
            generated: samples.len(),
            degenerate: samples.iter().filter(|s| s.degenerate.is_some()).count(),
            kept: kept.len(),
            reward_mean: mean(&rewards),
            reward_max: rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            kept_reward_mean: mean(&kept_rewards),
            distinct_2: distinct_2(&texts),
            sft_loss: None,
        };
        let block = c.sft.block_size.max(1);
        let train: Vec<TokenizedSample> = kept
            .iter()
            .map(|&i| {
                let s = &samples[i];
                let prompt = &drawn[s.prompt].ids;
                let mut input_ids = prompt.clone();
                input_ids.extend(&s.ids);
                let mut labels = vec![IGNORE_INDEX; prompt.len()];
                labels.extend(s.ids.iter().map(|&t| i64::from(t)));
                let original_len = input_ids.len();
                let truncated = original_len > block;
                input_ids.truncate(block);
                labels.truncate(block);
                let target_lost = labels.iter().all(|&l| l == IGNORE_INDEX);
                TokenizedSample {
                    input_ids,
                    labels,
                    original_len,
                    truncated,
                    target_lost,
                }
            })
            .filter(|s| !s.target_lost)
            .collect();
        if train.is_empty() {
            tracing::warn!("raft iteration {iteration}: nothing kept; the model is unchanged");
            return Ok((model, record));
        }
        let sft_dir = c.output_dir.join("sft");
        if sft_dir.exists() {
            std::fs::remove_dir_all(&sft_dir).map_err(|e| AlignError::io(&sft_dir, e))?;
        }
        let sft = TrainerConfig {
            output_dir: sft_dir,
            seed: mix(c.seed ^ mix(iteration as u64 + 0x0053_4654)),
            resume: false,
            ..c.sft.clone()
        };
        let pad = self
            .tokenizer
            .pad_token_id()
            .or(self.tokenizer.eos_token_id())
            .unwrap_or(0);
        let trainer = Trainer::new(sft, self.device.clone(), pad)?;
        let mut last_loss = None;
        let outcome = trainer.train(model, self.weights, &train, None, &mut |e| {
            if let TrainEvent::Step { loss, .. } = e {
                last_loss = Some(loss);
            }
        })?;
        record.sft_loss = outcome.last_train_loss.or(last_loss);
        Ok((outcome.model, record))
    }

    fn metrics_path(&self) -> PathBuf {
        self.config.output_dir.join("metrics.jsonl")
    }

    fn rewrite_metrics(&self, records: &[RaftIterationRecord]) -> Result<(), AlignError> {
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(r).unwrap_or_default());
            text.push('\n');
        }
        write_atomic(&self.metrics_path(), text.as_bytes())?;
        Ok(())
    }

    fn append_metrics(&self, record: &RaftIterationRecord) -> Result<(), AlignError> {
        use std::io::Write;
        let path = self.metrics_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| AlignError::io(&path, e))?;
        let line = serde_json::to_string(record).unwrap_or_default();
        writeln!(f, "{line}").map_err(|e| AlignError::io(&path, e))
    }

    fn save_checkpoint(
        &self,
        model: &CausalLm,
        iteration: usize,
        records: &[RaftIterationRecord],
    ) -> Result<(), AlignError> {
        let dst = self.checkpoint_dir(iteration);
        let staging = dst.with_extension("tmp");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| AlignError::io(&staging, e))?;
        }
        let weights = staging.join("weights");
        std::fs::create_dir_all(&weights).map_err(|e| AlignError::io(&weights, e))?;
        self.weights.save(model, &weights)?;
        let state = RaftState {
            iteration,
            records: records.to_vec(),
        };
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        write_atomic(&staging.join(STATE_FILE), text.as_bytes())?;
        replace_dir_atomic(&staging, &dst)?;
        // Earlier iterations are superseded.
        for n in 1..iteration {
            let old = self.checkpoint_dir(n);
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| AlignError::io(&old, e))?;
            }
        }
        Ok(())
    }
}

/// Path of a run's metrics file.
pub fn metrics_file(output_dir: &Path) -> PathBuf {
    output_dir.join("metrics.jsonl")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(prompt: usize, text: &str, reward: f64) -> ScoredSample {
        ScoredSample {
            prompt,
            ids: vec![1],
            text: text.into(),
            reward,
            degenerate: None,
        }
    }

    #[test]
    fn distinct_2_counts_unique_bigrams() {
        assert_eq!(distinct_2(&["a b c", "a b d"]), 3.0 / 4.0);
        assert_eq!(distinct_2(&["a"]), 0.0);
    }

    #[test]
    fn degenerate_samples_are_marked() {
        let mut s = vec![
            sample(0, "  ", 5.0),
            sample(0, "good day", 1.0),
            sample(0, "good day", 1.0),
            sample(1, "the the the the the", 3.0),
            sample(1, "good day", 0.5),
        ];
        mark_degenerate(&mut s, 0.5);
        let marks: Vec<_> = s.iter().map(|x| x.degenerate).collect();
        assert_eq!(
            marks,
            vec![
                Some("empty"),
                None,
                Some("repeated"),
                Some("repetitive"),
                None
            ]
        );
    }

    #[test]
    fn local_and_global_selection() {
        let mut s = vec![
            sample(0, "a b", 1.0),
            sample(0, "c d", 3.0),
            sample(1, "e f", 2.0),
            sample(1, "", 9.0),
            sample(2, "g h", -1.0),
        ];
        mark_degenerate(&mut s, 0.5);
        assert_eq!(select(&s, Selection::Local), vec![1, 2, 4]);
        // 4 usable samples, half kept: the two best.
        assert_eq!(select(&s, Selection::Global { fraction: 0.5 }), vec![1, 2]);
        assert_eq!(select(&s, Selection::Global { fraction: 0.1 }), vec![1]);
    }

    #[test]
    fn prompt_draws_are_seeded_permutations() {
        let a = draw_prompts(10, 4, 7, 1);
        assert_eq!(a, draw_prompts(10, 4, 7, 1));
        assert_ne!(a, draw_prompts(10, 4, 7, 2));
        let mut all = draw_prompts(10, 10, 7, 3);
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
