//! The DPO trainer: Direct Preference Optimization as an [`Objective`] of `lmflow-train`'s
//! shared loop (accumulation, clipping, schedules, checkpoints and exact resume, metrics).
//!
//! Reference log-probabilities are computed once, before training, in one pass over the pairs
//! ([`precompute_reference`]): from a frozen reference model, from the policy as given (the
//! initial policy), or, for LoRA runs, from the same model with its adapter disabled
//! ([`precompute_reference_without_adapters`]). Nothing of the reference is kept in memory
//! while training, so a LoRA run holds one copy of the base weights.
//!
//! Per pair, the policy scores chosen and rejected completions in one forward pass (both rows
//! padded to a common length and concatenated along the batch); the prompt is masked
//! (labels `-100`), so only completion tokens count, as in TRL's `DPOTrainer`.

use burn::tensor::{Device, Tensor, TensorData};
use lmflow_datasets::TokenizedPair;
use lmflow_datasets::batch::collate_pairs;
use lmflow_models::{CausalLm, ForwardInput};
use lmflow_train::{
    MetricSum, Objective, ObjectiveLoss, TrainEvent, TrainOutcome, Trainer, WeightsIo,
};
use serde::{Deserialize, Serialize};

use crate::dpo::{DpoConfig, DpoLossType, dpo_loss};
use crate::error::AlignError;
use crate::logps::sequence_logprobs;

/// One training example of DPO: a tokenized preference pair (prompt labels `-100`) with the
/// reference model's summed log-probabilities of its two completions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoPair {
    /// The pair.
    pub pair: TokenizedPair,
    /// `log π_ref(chosen | prompt)`, summed over the completion tokens.
    pub reference_chosen: f64,
    /// `log π_ref(rejected | prompt)`, summed over the completion tokens.
    pub reference_rejected: f64,
}

/// Summed completion log-probabilities of `model` for each pair's chosen and rejected rows
/// (`[batch]` each), and the completion lengths.
fn pair_logprobs(
    model: &CausalLm,
    pairs: &[&TokenizedPair],
    pad_id: u32,
    device: &Device,
) -> lmflow_train::Result<(Tensor<1>, Tensor<1>, Vec<usize>, Vec<usize>)> {
    let n = pairs.len();
    let batch = collate_pairs(pairs, pad_id, device)?;
    let ids = Tensor::cat(vec![batch.chosen.input_ids, batch.rejected.input_ids], 0);
    let mask = Tensor::cat(
        vec![batch.chosen.attention_mask, batch.rejected.attention_mask],
        0,
    );
    let labels = Tensor::cat(vec![batch.chosen.labels, batch.rejected.labels], 0);
    let out = model.forward(ForwardInput::new(ids).with_attention_mask(mask), None)?;
    let logps = sequence_logprobs(out.logits, labels);
    let chosen = logps.sum.clone().narrow(0, 0, n);
    let rejected = logps.sum.narrow(0, n, n);
    let (chosen_tokens, rejected_tokens) = logps.tokens.split_at(n);
    Ok((
        chosen,
        rejected,
        chosen_tokens.to_vec(),
        rejected_tokens.to_vec(),
    ))
}

fn to_vec(t: Tensor<1>) -> Vec<f64> {
    t.into_data()
        .iter::<f32>()
        .map(f64::from)
        .collect::<Vec<_>>()
}

fn column(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// Reference log-probabilities of `pairs` under `reference` (any model: a frozen reference
/// model, or the policy before training), computed in one pass of `batch_size` pairs at a
/// time without keeping anything for backward.
///
/// # Errors
/// [`AlignError::Config`] for an empty set or a pair without completion tokens; collation and
/// model errors.
pub fn precompute_reference(
    reference: &CausalLm,
    pairs: Vec<TokenizedPair>,
    pad_id: u32,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<DpoPair>, AlignError> {
    if pairs.is_empty() {
        return Err(AlignError::Config("no preference pairs".into()));
    }
    if let Some(i) = pairs
        .iter()
        .position(|p| completion_tokens(&p.chosen) == 0 || completion_tokens(&p.rejected) == 0)
    {
        return Err(AlignError::Config(format!(
            "preference pair {i} has a chosen or rejected answer without trained tokens (the \
             prompt fills the block size, or the answer is empty)"
        )));
    }
    let mut out = Vec::with_capacity(pairs.len());
    let mut rest = pairs.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<TokenizedPair> = rest.by_ref().take(batch_size.max(1)).collect();
        let refs: Vec<&TokenizedPair> = chunk.iter().collect();
        let (c, r, _, _) = pair_logprobs(reference, &refs, pad_id, device)?;
        let (c, r) = (to_vec(c.detach()), to_vec(r.detach()));
        for ((pair, rc), rr) in chunk.into_iter().zip(c).zip(r) {
            out.push(DpoPair {
                pair,
                reference_chosen: rc,
                reference_rejected: rr,
            });
        }
    }
    Ok(out)
}

/// Reference log-probabilities of a LoRA run: `model` with every adapter disabled is the base
/// model, so no second copy of the base weights is needed. Adapter `adapter` is active again
/// when this returns (also on error).
///
/// # Errors
/// As [`precompute_reference`]; [`AlignError::Config`] when the model has no adapter
/// `adapter`.
pub fn precompute_reference_without_adapters(
    model: &mut CausalLm,
    adapter: &str,
    pairs: Vec<TokenizedPair>,
    pad_id: u32,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<DpoPair>, AlignError> {
    lmflow_peft::inject::disable_adapters(model);
    let out = precompute_reference(model, pairs, pad_id, batch_size, device);
    lmflow_peft::inject::set_active_adapter(model, adapter)?;
    out
}

fn completion_tokens(s: &lmflow_datasets::TokenizedSample) -> usize {
    s.labels
        .iter()
        .skip(1)
        .filter(|&&l| l != lmflow_train::IGNORE_INDEX)
        .count()
}

/// DPO as an objective of the shared training loop: each pair weighs 1 (the step's loss is the
/// mean over its pairs, as TRL's), logging TRL's metrics `rewards/chosen`, `rewards/rejected`,
/// `rewards/accuracies`, `rewards/margins`, `logps/chosen` and `logps/rejected` (means per
/// pair; `eval_`-prefixed on evaluation).
#[derive(Debug, Clone)]
pub struct DpoObjective {
    config: DpoConfig,
    pad_id: u32,
}

impl DpoObjective {
    /// DPO with `config`, padding batches with `pad_id`.
    ///
    /// # Errors
    /// An invalid `config` (see [`DpoConfig::validate`]).
    pub fn new(config: DpoConfig, pad_id: u32) -> Result<Self, AlignError> {
        config.validate()?;
        Ok(Self { config, pad_id })
    }

    /// The settings.
    pub fn config(&self) -> &DpoConfig {
        &self.config
    }
}

impl Objective for DpoObjective {
    type Item = DpoPair;

    fn weight(&self, _item: &DpoPair) -> f64 {
        1.0
    }

    fn tokens(&self, item: &DpoPair) -> usize {
        completion_tokens(&item.pair.chosen) + completion_tokens(&item.pair.rejected)
    }

    fn loss(
        &self,
        model: &CausalLm,
        batch: &[&DpoPair],
        device: &Device,
    ) -> lmflow_train::Result<ObjectiveLoss> {
        let n = batch.len() as f64;
        let pairs: Vec<&TokenizedPair> = batch.iter().map(|p| &p.pair).collect();
        let (pc, pr, nc, nr) = pair_logprobs(model, &pairs, self.pad_id, device)?;
        let rc: Vec<f32> = batch.iter().map(|p| p.reference_chosen as f32).collect();
        let rr: Vec<f32> = batch.iter().map(|p| p.reference_rejected as f32).collect();
        let (ref_c, ref_r) = (column(rc, device), column(rr, device));
        let beta = self.config.beta;
        // Implicit rewards β·(log π − log π_ref) of the summed log-probabilities.
        let chosen_rewards = to_vec((pc.clone() - ref_c.clone()).mul_scalar(beta).detach());
        let rejected_rewards = to_vec((pr.clone() - ref_r.clone()).mul_scalar(beta).detach());
        let logps_c = to_vec(pc.clone().detach());
        let logps_r = to_vec(pr.clone().detach());
        let out = if self.config.loss_type == DpoLossType::Ipo {
            // IPO compares mean log-probabilities per completion token (TRL's normalisation).
            let per = |v: &[usize]| column(v.iter().map(|&t| t.max(1) as f32).collect(), device);
            let (lc, lr) = (per(&nc), per(&nr));
            dpo_loss(
                &self.config,
                pc / lc.clone(),
                pr / lr.clone(),
                ref_c / lc,
                ref_r / lr,
            )
        } else {
            dpo_loss(&self.config, pc, pr, ref_c, ref_r)
        };
        let correct = chosen_rewards
            .iter()
            .zip(&rejected_rewards)
            .filter(|(c, r)| c > r)
            .count() as f64;
        let margins: f64 = chosen_rewards
            .iter()
            .zip(&rejected_rewards)
            .map(|(c, r)| c - r)
            .sum();
        Ok(ObjectiveLoss {
            sum: out.losses.sum(),
            metrics: vec![
                MetricSum::new("rewards/chosen", chosen_rewards.iter().sum(), n),
                MetricSum::new("rewards/rejected", rejected_rewards.iter().sum(), n),
                MetricSum::new("rewards/accuracies", correct, n),
                MetricSum::new("rewards/margins", margins, n),
                MetricSum::new("logps/chosen", logps_c.iter().sum(), n),
                MetricSum::new("logps/rejected", logps_r.iter().sum(), n),
            ],
        })
    }
}

/// Where the reference log-probabilities of a DPO run come from.
#[derive(Clone, Copy)]
pub enum Reference<'a> {
    /// The policy as given, before training (TRL's reference for full fine-tuning and for an
    /// adapter that already exists; iterative DPO's reference at each iteration).
    Policy,
    /// The policy with every adapter disabled, i.e. the base model; adapter `.0` is
    /// re-activated afterwards (TRL's reference for a new LoRA adapter).
    WithoutAdapters(&'a str),
    /// A separate frozen model.
    Model(&'a CausalLm),
}

impl std::fmt::Debug for Reference<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Policy => f.write_str("Policy"),
            Self::WithoutAdapters(a) => write!(f, "WithoutAdapters({a:?})"),
            Self::Model(_) => f.write_str("Model(..)"),
        }
    }
}

/// Reference log-probabilities of `pairs` from `reference` (see [`Reference`]), computed in
/// batches of `batch_size` pairs.
///
/// # Errors
/// As [`precompute_reference`].
pub fn reference_pairs(
    model: &mut CausalLm,
    reference: Reference<'_>,
    pairs: Vec<TokenizedPair>,
    pad_id: u32,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<DpoPair>, AlignError> {
    match reference {
        Reference::Policy => precompute_reference(model, pairs, pad_id, batch_size, device),
        Reference::WithoutAdapters(adapter) => {
            precompute_reference_without_adapters(model, adapter, pairs, pad_id, batch_size, device)
        }
        Reference::Model(m) => precompute_reference(m, pairs, pad_id, batch_size, device),
    }
}

/// Runs DPO: reference log-probabilities of `train` (and `eval`) in one pass, then the shared
/// training loop of `trainer` with a [`DpoObjective`] (resuming from the newest checkpoint of
/// its output folder when its configuration says so; the reference is always the model as
/// passed here, so a resumed run uses the same reference values).
///
/// # Errors
/// Invalid settings or data, model and training errors.
#[allow(clippy::too_many_arguments)]
pub fn train_dpo(
    trainer: &Trainer,
    mut model: CausalLm,
    weights: &dyn WeightsIo,
    config: DpoConfig,
    reference: Reference<'_>,
    pad_id: u32,
    train: Vec<TokenizedPair>,
    eval: Option<Vec<TokenizedPair>>,
    device: &Device,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainOutcome, AlignError> {
    let objective = DpoObjective::new(config, pad_id)?;
    let batch = trainer.config().per_device_eval_batch_size;
    let train = reference_pairs(&mut model, reference, train, pad_id, batch, device)?;
    let eval = match eval {
        Some(e) => Some(reference_pairs(
            &mut model, reference, e, pad_id, batch, device,
        )?),
        None => None,
    };
    Ok(trainer.train_objective(
        model,
        weights,
        &objective,
        &train,
        eval.as_deref(),
        on_event,
    )?)
}
