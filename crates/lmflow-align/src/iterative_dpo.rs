//! Iterative DPO (as LMFlow's `iterative_dpo_aligner`): per iteration, draw prompts, sample
//! K responses to each with the current policy, score them with a [`RewardFunction`], build
//! one preference pair per prompt ([`Pairing`]) and run DPO on them with the iteration's
//! starting model as the reference; the next iteration starts from the result.
//!
//! Sampling, prompt draws and degenerate-sample filtering are RAFT's ([`Raft::sample_and_score`]);
//! each iteration's DPO run writes `output_dir/iter-NNNN/` (checkpoints, `metrics.jsonl`,
//! `final/`) and resumes inside an iteration like any run of the shared loop.

use lmflow_datasets::{TokenizedPair, TokenizedSample};
use lmflow_models::{CausalLm, Tokenizer};
use lmflow_train::{IGNORE_INDEX, TrainEvent, Trainer, WeightsIo};
use serde::{Deserialize, Serialize};

use crate::dpo::DpoConfig;
use crate::dpo_trainer::{Reference, train_dpo};
use crate::error::AlignError;
use crate::raft::{Raft, RaftConfig, RaftPrompt, ScoredSample, draw_prompts};
use crate::reward_fn::RewardFunction;

/// How the pair of an iteration's prompt is chosen among its scored samples (LMFlow's
/// `pair_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// Highest reward chosen, lowest rejected.
    #[default]
    MaxMin,
    /// Highest reward chosen, a random other sample rejected.
    MaxRandom,
    /// Two random samples, the better one chosen.
    Random,
}

impl std::str::FromStr for Pairing {
    type Err = AlignError;

    fn from_str(s: &str) -> Result<Self, AlignError> {
        match s {
            "max_min" => Ok(Self::MaxMin),
            "max_random" => Ok(Self::MaxRandom),
            "random" => Ok(Self::Random),
            other => Err(AlignError::Config(format!(
                "unknown pairing `{other}`; one of max_min, max_random, random"
            ))),
        }
    }
}

/// Settings of iterative DPO: sampling as RAFT's (`iterations`, `prompts_per_iteration`,
/// `samples_per_prompt`, temperature, top-p/k, length bounds, degenerate filter, seed,
/// `output_dir`), the DPO trainer settings in `sampling.sft`, and the pairing and DPO loss.
#[derive(Debug, Clone)]
pub struct IterativeDpoConfig {
    /// Sampling, iterations and the per-iteration trainer settings.
    pub sampling: RaftConfig,
    /// Pair construction.
    pub pairing: Pairing,
    /// DPO loss settings.
    pub dpo: DpoConfig,
}

/// What one iteration did (one line of `output_dir/iterations.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    /// Iteration (0-based).
    pub iteration: usize,
    /// Mean reward of the iteration's samples (before its DPO run).
    pub reward_mean: f64,
    /// Pairs built (prompts with two usable samples of different rewards).
    pub pairs: usize,
    /// Mean reward gap chosen − rejected of the pairs.
    pub pair_gap: f64,
    /// Last training loss of the iteration's DPO run.
    pub dpo_loss: Option<f64>,
}

/// Small deterministic generator for the random pairings.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Chooses `(chosen, rejected)` sample indices per prompt (`n_prompts` prompts): degenerate
/// samples are skipped, and prompts whose candidates all have the same reward give no pair.
pub fn build_pairs(
    samples: &[ScoredSample],
    n_prompts: usize,
    pairing: Pairing,
    seed: u64,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for p in 0..n_prompts {
        let idx: Vec<usize> = (0..samples.len())
            .filter(|&i| samples[i].prompt == p && samples[i].degenerate.is_none())
            .collect();
        if idx.len() < 2 {
            continue;
        }
        let by = |a: &usize, b: &usize| samples[*a].reward.total_cmp(&samples[*b].reward);
        let best = *idx.iter().max_by(|a, b| by(a, b)).unwrap_or(&idx[0]);
        let mut r = mix(seed ^ mix(p as u64));
        let mut pick = |from: &[usize]| {
            r = mix(r);
            from[(r % from.len() as u64) as usize]
        };
        let (a, b) = match pairing {
            Pairing::MaxMin => (best, *idx.iter().min_by(|a, b| by(a, b)).unwrap_or(&idx[0])),
            Pairing::MaxRandom => {
                let others: Vec<usize> = idx.iter().copied().filter(|&i| i != best).collect();
                (best, pick(&others))
            }
            Pairing::Random => {
                let first = pick(&idx);
                let others: Vec<usize> = idx.iter().copied().filter(|&i| i != first).collect();
                (first, pick(&others))
            }
        };
        let (chosen, rejected) = if samples[a].reward >= samples[b].reward {
            (a, b)
        } else {
            (b, a)
        };
        if samples[chosen].reward > samples[rejected].reward {
            out.push((chosen, rejected));
        }
    }
    out
}

fn sample(prompt: &[u32], response: &[u32]) -> TokenizedSample {
    let input_ids: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let labels = prompt
        .iter()
        .map(|_| IGNORE_INDEX)
        .chain(response.iter().map(|&t| i64::from(t)))
        .collect();
    TokenizedSample {
        original_len: input_ids.len(),
        input_ids,
        labels,
        truncated: false,
        target_lost: false,
    }
}

/// Runs iterative DPO on `model` over `prompts`, calling `on_record` after each iteration.
/// Returns the final model and the iteration records.
///
/// # Errors
/// Settings, generation, reward, training or I/O errors; an iteration without any usable
/// pair.
#[allow(clippy::too_many_arguments)]
pub fn run_iterative_dpo(
    mut model: CausalLm,
    prompts: &[RaftPrompt],
    tokenizer: &Tokenizer,
    reward: &dyn RewardFunction,
    weights: &dyn WeightsIo,
    config: &IterativeDpoConfig,
    device: &burn::tensor::Device,
    on_record: &mut dyn FnMut(&IterationRecord),
) -> Result<(CausalLm, Vec<IterationRecord>), AlignError> {
    config.dpo.validate()?;
    if prompts.is_empty() {
        return Err(AlignError::Config("no prompts".into()));
    }
    let s = &config.sampling;
    let raft = Raft::new(s.clone(), tokenizer, reward, weights, device.clone())?;
    let pad_id = tokenizer
        .pad_token_id()
        .or(tokenizer.eos_token_id())
        .unwrap_or(0);
    let mut records = Vec::new();
    for iteration in 0..s.iterations {
        let drawn: Vec<&RaftPrompt> =
            draw_prompts(prompts.len(), s.prompts_per_iteration, s.seed, iteration)
                .into_iter()
                .map(|i| &prompts[i])
                .collect();
        let samples = raft.sample_and_score(&model, &drawn, iteration)?;
        let reward_mean =
            samples.iter().map(|x| x.reward).sum::<f64>() / samples.len().max(1) as f64;
        let chosen = build_pairs(
            &samples,
            drawn.len(),
            config.pairing,
            s.seed ^ iteration as u64,
        );
        if chosen.is_empty() {
            return Err(AlignError::Config(format!(
                "iteration {iteration}: no prompt has two usable samples with different rewards"
            )));
        }
        let pair_gap = chosen
            .iter()
            .map(|&(c, r)| samples[c].reward - samples[r].reward)
            .sum::<f64>()
            / chosen.len() as f64;
        let pairs: Vec<TokenizedPair> = chosen
            .iter()
            .map(|&(c, r)| {
                let prompt = &drawn[samples[c].prompt].ids;
                TokenizedPair {
                    chosen: sample(prompt, &samples[c].ids),
                    rejected: sample(prompt, &samples[r].ids),
                    margin: None,
                }
            })
            .collect();
        let mut cfg = s.sft.clone();
        cfg.output_dir = s.output_dir.join(format!("iter-{iteration:04}"));
        cfg.seed = s.seed.wrapping_add(iteration as u64);
        let trainer = Trainer::new(cfg, device.clone(), pad_id)?;
        // The iteration's starting model is its reference.
        let outcome = train_dpo(
            &trainer,
            model,
            weights,
            config.dpo.clone(),
            Reference::Policy,
            pad_id,
            pairs,
            None,
            device,
            &mut |_: TrainEvent| {},
        )?;
        model = outcome.model;
        let record = IterationRecord {
            iteration,
            reward_mean,
            pairs: chosen.len(),
            pair_gap,
            dpo_loss: outcome.last_train_loss,
        };
        on_record(&record);
        records.push(record);
    }
    let path = s.output_dir.join("iterations.jsonl");
    let mut text = String::new();
    for r in &records {
        text.push_str(&serde_json::to_string(r).map_err(|e| AlignError::Config(e.to_string()))?);
        text.push('\n');
    }
    std::fs::write(&path, text).map_err(|e| AlignError::io(&path, e))?;
    Ok((model, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(prompt: usize, reward: f64) -> ScoredSample {
        ScoredSample {
            prompt,
            ids: vec![1],
            text: String::new(),
            reward,
            degenerate: None,
        }
    }

    #[test]
    fn pairings_pick_as_named_and_skip_ties_and_degenerate_samples() {
        let mut samples = vec![
            s(0, 1.0),
            s(0, 5.0),
            s(0, -2.0),
            s(0, 3.0),
            s(1, 2.0),
            s(1, 2.0),
        ];
        samples.push(ScoredSample {
            degenerate: Some("empty"),
            ..s(0, 9.0)
        });
        assert_eq!(build_pairs(&samples, 2, Pairing::MaxMin, 0), vec![(1, 2)]);
        for seed in 0..20 {
            let p = build_pairs(&samples, 2, Pairing::MaxRandom, seed);
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].0, 1);
            assert!([0, 2, 3].contains(&p[0].1));
            for (c, r) in build_pairs(&samples, 2, Pairing::Random, seed) {
                assert!(samples[c].reward > samples[r].reward);
                assert!(c < 4 && r < 4);
            }
        }
    }
}
