//! Training objectives: what one loop of [`Trainer`](crate::Trainer) minimises.
//!
//! The loop (micro-batches, weighted gradient accumulation, clipping, schedules, LISA,
//! evaluation, metrics, checkpoints and exact resume) is written once, in
//! [`Trainer::train_objective`](crate::Trainer::train_objective). An [`Objective`] supplies only
//! the loss of a micro-batch of its own items and the scalar metrics to log:
//!
//! - [`SftObjective`]: causal language modelling (instruction tuning, continued pretraining)
//!   over packed rows, with chunked cross-entropy; what `lmflow finetune` runs;
//! - reward modelling and DPO live in `lmflow-align` and implement the same trait over
//!   preference pairs.
//!
//! # Accumulation
//! Every item has a weight ([`Objective::weight`]: trained tokens for SFT, 1 per pair for DPO).
//! An objective returns the *weighted sum* of its per-item losses over a micro-batch; the loop
//! divides by the total weight of the optimizer step, so the step minimises the weighted mean
//! over all its micro-batches whatever their sizes (as HF's Trainer with
//! `num_items_in_batch`).

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use lmflow_datasets::batch::collate_packed;
use lmflow_datasets::packing::PackedBlock;
use lmflow_models::{CausalLm, ForwardInput};

use crate::error::Result;
use crate::loss::{causal_lm_loss, chunked_lm_loss_backward};

/// A named metric of a micro-batch, as a sum over its items; the loop logs `sum / count` over
/// the logging window (or the evaluation set).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSum {
    /// Key in `metrics.jsonl` (e.g. `"rewards/chosen"`); evaluation metrics get an `eval_`
    /// prefix.
    pub name: String,
    /// Sum of the metric over the items.
    pub sum: f64,
    /// Number of items (or other denominator) the sum covers.
    pub count: f64,
}

impl MetricSum {
    /// A metric summed over `count` items.
    pub fn new(name: impl Into<String>, sum: f64, count: f64) -> Self {
        Self {
            name: name.into(),
            sum,
            count,
        }
    }
}

/// The loss of one micro-batch, before differentiation.
#[derive(Debug, Clone)]
pub struct ObjectiveLoss {
    /// Weighted sum of the items' losses, tracked by autodiff, shape `[1]`.
    pub sum: Tensor<1>,
    /// Metrics of the batch.
    pub metrics: Vec<MetricSum>,
}

/// The differentiated loss of one micro-batch.
#[derive(Debug)]
pub struct ObjectiveStep {
    /// Value of the (unscaled) weighted loss sum.
    pub loss_sum: f64,
    /// Gradients of `scale × loss sum` for every trainable parameter.
    pub grads: GradientsParams,
    /// Metrics of the batch.
    pub metrics: Vec<MetricSum>,
}

/// What the shared training loop minimises: the loss and logged metrics of a micro-batch.
///
/// `M` is the model the loop trains: a [`CausalLm`] by default; an objective over another
/// Burn module (e.g. a vision-language model) implements `Objective<ThatModule>`.
///
/// Implement [`Objective::weight`], [`Objective::tokens`] and [`Objective::loss`]; override
/// [`Objective::backward`] only to differentiate in pieces (as [`SftObjective`] does with
/// chunked cross-entropy) and [`Objective::evaluate`] to evaluate differently from training.
pub trait Objective<M: Module = CausalLm> {
    /// One training example: a token row, a preference pair, ...
    type Item;

    /// Weight of `item` in an optimizer step's mean loss (trained tokens, or 1 per pair).
    fn weight(&self, item: &Self::Item) -> f64;

    /// Tokens `item` trains on, for throughput and `tokens_seen`.
    fn tokens(&self, item: &Self::Item) -> usize;

    /// The weighted loss sum and metrics of a micro-batch (`batch` is never empty). `model`
    /// lives on an autodiff `device`.
    fn loss(&self, model: &M, batch: &[&Self::Item], device: &Device) -> Result<ObjectiveLoss>;

    /// The loss of a micro-batch and the gradients of `scale × loss sum`. The default
    /// differentiates [`Objective::loss`] in one `backward()`.
    fn backward(
        &self,
        model: &M,
        batch: &[&Self::Item],
        scale: f64,
        device: &Device,
    ) -> Result<ObjectiveStep> {
        let loss = self.loss(model, batch, device)?;
        let loss_sum = f64::from(loss.sum.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.sum.mul_scalar(scale).backward(), model);
        Ok(ObjectiveStep {
            loss_sum,
            grads,
            metrics: loss.metrics,
        })
    }

    /// The weighted loss sum (a value) and metrics of an evaluation batch. The default runs
    /// [`Objective::loss`].
    fn evaluate(
        &self,
        model: &M,
        batch: &[&Self::Item],
        device: &Device,
    ) -> Result<(f64, Vec<MetricSum>)> {
        let loss = self.loss(model, batch, device)?;
        Ok((f64::from(loss.sum.into_scalar::<f32>()), loss.metrics))
    }
}

/// Causal language modelling over (packed) rows: next-token cross-entropy of the trained
/// tokens, each token weighing 1 (the loss of `lmflow finetune`).
#[derive(Debug, Clone)]
pub struct SftObjective {
    /// Pad id of batches.
    pub pad_id: u32,
    /// Chunked cross-entropy: token positions projected to the vocabulary at a time (0: the
    /// whole micro-batch at once); see
    /// [`chunked_lm_loss_backward`].
    pub loss_chunk_tokens: usize,
    /// Activation checkpointing per decoder layer (see
    /// [`checkpointed_lm_loss_backward`](crate::loss::checkpointed_lm_loss_backward)).
    pub gradient_checkpointing: bool,
}

impl SftObjective {
    /// Token batches padded with `pad_id`, the loss computed `loss_chunk_tokens` positions at a
    /// time.
    pub fn new(pad_id: u32, loss_chunk_tokens: usize) -> Self {
        Self {
            pad_id,
            loss_chunk_tokens,
            gradient_checkpointing: false,
        }
    }

    /// Turns activation checkpointing per decoder layer on or off.
    pub fn with_gradient_checkpointing(mut self, on: bool) -> Self {
        self.gradient_checkpointing = on;
        self
    }

    /// The model input and labels of rows; segment ids (attention confined to each packed
    /// sample) only when `segments` is set.
    fn input(
        &self,
        batch: &[&PackedBlock],
        segments: bool,
        device: &Device,
    ) -> Result<(ForwardInput, Tensor<2, Int>)> {
        let batch_t = collate_packed(batch, self.pad_id, device)?;
        let mut input = ForwardInput::new(batch_t.input_ids)
            .with_attention_mask(batch_t.attention_mask)
            .with_position_ids(batch_t.position_ids);
        if let (true, Some(ids)) = (segments, batch_t.segment_ids) {
            input = input.with_segment_ids(ids);
        }
        Ok((input, batch_t.labels))
    }
}

impl Objective for SftObjective {
    type Item = PackedBlock;

    fn weight(&self, item: &PackedBlock) -> f64 {
        predicted_tokens(&item.labels) as f64
    }

    fn tokens(&self, item: &PackedBlock) -> usize {
        predicted_tokens(&item.labels)
    }

    fn loss(
        &self,
        model: &CausalLm,
        batch: &[&PackedBlock],
        device: &Device,
    ) -> Result<ObjectiveLoss> {
        let (input, labels) = self.input(batch, true, device)?;
        let out = model.forward(input, None)?;
        Ok(ObjectiveLoss {
            sum: causal_lm_loss(out.logits, labels).sum,
            metrics: Vec::new(),
        })
    }

    fn backward(
        &self,
        model: &CausalLm,
        batch: &[&PackedBlock],
        scale: f64,
        device: &Device,
    ) -> Result<ObjectiveStep> {
        if self.gradient_checkpointing {
            let (input, labels) = self.input(batch, true, device)?;
            let (loss, grads) = crate::loss::checkpointed_lm_loss_backward(
                model,
                &input,
                labels,
                self.loss_chunk_tokens,
                scale,
            )?;
            return Ok(ObjectiveStep {
                loss_sum: f64::from(loss.sum.into_scalar::<f32>()),
                grads,
                metrics: Vec::new(),
            });
        }
        if self.loss_chunk_tokens == 0 {
            let loss = self.loss(model, batch, device)?;
            let loss_sum = f64::from(loss.sum.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.sum.mul_scalar(scale).backward(), model);
            return Ok(ObjectiveStep {
                loss_sum,
                grads,
                metrics: Vec::new(),
            });
        }
        let (input, labels) = self.input(batch, true, device)?;
        let hidden = model.forward_hidden(&input, None)?;
        let (loss, grads) =
            chunked_lm_loss_backward(model, hidden, labels, self.loss_chunk_tokens, scale);
        Ok(ObjectiveStep {
            loss_sum: f64::from(loss.sum.into_scalar::<f32>()),
            grads,
            metrics: Vec::new(),
        })
    }

    /// Evaluation rows of one sample each are batched without segment ids, exactly as
    /// [`collate`](lmflow_datasets::batch::collate) batches samples.
    fn evaluate(
        &self,
        model: &CausalLm,
        batch: &[&PackedBlock],
        device: &Device,
    ) -> Result<(f64, Vec<MetricSum>)> {
        let packed = batch.iter().any(|row| row.samples.len() > 1);
        let (input, labels) = self.input(batch, packed, device)?;
        let out = model.forward(input, None)?;
        let loss = causal_lm_loss(out.logits, labels);
        Ok((f64::from(loss.sum.into_scalar::<f32>()), Vec::new()))
    }
}

/// Tokens the next-token loss covers in a row (trained labels after the first position).
pub(crate) fn predicted_tokens(labels: &[i64]) -> usize {
    labels
        .iter()
        .skip(1)
        .filter(|&&l| l != crate::loss::IGNORE_INDEX)
        .count()
}
