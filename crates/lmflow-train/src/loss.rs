//! Causal language-modelling loss: next-token cross-entropy over trained tokens.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Int, Tensor};
use lmflow_models::CausalLm;

pub use lmflow_models::logprobs::{
    IGNORE_INDEX, TokenLogprobs, aligned_token_logprobs, shifted_token_logprobs,
};

/// Summed next-token loss of a batch, with the number of trained tokens it covers.
///
/// Keeping the sum (not the mean) lets gradient accumulation weight micro-batches by their
/// token counts: the loss of an optimizer step is `Σ sum / Σ tokens`, as HF's Trainer computes it
/// when `num_items_in_batch` is known.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Sum of the negative log-likelihoods (nats) of the trained tokens, shape `[1]`.
    pub sum: Tensor<1>,
    /// Number of trained tokens (labels other than [`IGNORE_INDEX`] after the shift).
    pub tokens: usize,
}

impl LossOutput {
    /// Mean loss per trained token (`sum / tokens`), shape `[1]`; zero when no token is trained.
    pub fn mean(&self) -> Tensor<1> {
        self.sum.clone().div_scalar(self.tokens.max(1) as f64)
    }
}

/// Next-token cross-entropy: position `t` predicts `labels[t + 1]`, tokens labelled
/// [`IGNORE_INDEX`] are skipped. Computed in f32 whatever the logits' dtype.
///
/// Equals `torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
/// labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")`, i.e. what
/// `transformers`' causal-LM models compute (times the number of trained tokens).
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`
/// - labels: `[batch, seq]`
pub fn causal_lm_loss(logits: Tensor<3>, labels: Tensor<2, Int>) -> LossOutput {
    let device = logits.device();
    let Some(token) = shifted_token_logprobs(logits, labels) else {
        return LossOutput {
            sum: Tensor::zeros([1], &device),
            tokens: 0,
        };
    };
    let tokens = count_trained(&token.trained);
    LossOutput {
        sum: token.logprobs.neg().sum(),
        tokens,
    }
}

/// Most logits one loss chunk holds: 2^24 values (64 MiB in f32). A chunk of `loss_chunk_tokens`
/// positions is cut further for large vocabularies (151,936 for Qwen2: 110 positions), where one
/// `[positions, vocab]` block in f32 plus its bf16 copy and the softmax backward would otherwise
/// dominate a step's memory. Results do not depend on the chunk size.
pub const MAX_CHUNK_LOGITS: usize = 1 << 24;

/// Rows of one loss chunk: `chunk_rows`, at most [`MAX_CHUNK_LOGITS`]` / vocab`; 0 asks for
/// all `rows` at once (unchunked, no bound).
fn chunk_len(chunk_rows: usize, rows: usize, vocab: usize) -> usize {
    if chunk_rows == 0 {
        return rows.max(1);
    }
    chunk_rows.min(MAX_CHUNK_LOGITS / vocab.max(1)).max(1)
}

/// The next-token loss of a batch and the gradients of every parameter of `model`, with at most
/// `chunk_rows` rows of `[rows, vocab]` logits alive at a time (chunked cross-entropy; fewer
/// when a chunk would exceed [`MAX_CHUNK_LOGITS`]).
///
/// The decoder has run once with autodiff up to `hidden`. For each chunk of positions the head
/// projects a detached copy of the chunk's hidden states, the chunk's cross-entropy is
/// differentiated on its own (giving the head's gradient and the gradient of those hidden
/// states) and its logits are freed. The decoder is then differentiated through
/// `Σ hidden · ∂loss/∂hidden`. The parts add up to the gradient of the unchunked loss (a tied
/// head receives both its embedding and its head contributions).
///
/// The loss is multiplied by `scale` before differentiation (e.g. `1 / tokens of the step` for
/// token-weighted accumulation); the returned [`LossOutput::sum`] is the unscaled sum.
///
/// # Shapes
/// - hidden: `[batch, seq, hidden]` (final hidden states, tracked by autodiff)
/// - labels: `[batch, seq]` (unshifted, as for [`causal_lm_loss`])
pub fn chunked_lm_loss_backward(
    model: &CausalLm,
    hidden: Tensor<3>,
    labels: Tensor<2, Int>,
    chunk_rows: usize,
    scale: f64,
) -> (LossOutput, GradientsParams) {
    let device = hidden.device();
    let [batch, seq, width] = hidden.dims();
    let mut acc = GradientsAccumulator::<CausalLm>::new();
    let (mut sum, mut tokens) = (0.0f64, 0usize);
    if seq >= 2 {
        // Position t predicts labels[t + 1].
        let rows = batch * (seq - 1);
        let hidden_s: Tensor<2> = hidden
            .slice([0..batch, 0..seq - 1, 0..width])
            .reshape([rows, width]);
        let targets: Tensor<2, Int> = labels.slice([0..batch, 1..seq]).reshape([1, rows]);
        let detached = hidden_s.clone().detach();
        let chunk = chunk_len(chunk_rows.max(1), rows, model.vocab_size());
        let mut hidden_grads = Vec::with_capacity(rows.div_ceil(chunk));
        for start in (0..rows).step_by(chunk) {
            let end = (start + chunk).min(rows);
            let h = detached
                .clone()
                .slice([start..end, 0..width])
                .require_grad();
            let logits = model.logits(h.clone().unsqueeze_dim::<3>(0));
            let t = targets.clone().slice([0..1, start..end]);
            let part = aligned_token_logprobs(logits, t);
            tokens += count_trained(&part.trained);
            let nll = part.logprobs.neg().sum();
            sum += f64::from(nll.clone().into_scalar::<f32>());
            let grads = nll.mul_scalar(scale).backward();
            let g = match h.grad(&grads) {
                Some(g) => g,
                None => h.clone().inner().zeros_like(),
            };
            hidden_grads.push(g);
            acc.accumulate(model, GradientsParams::from_grads(grads, model));
        }
        // `inner` tensors are constants to autodiff: only `hidden_s` is differentiated.
        let g_hidden = Tensor::cat(hidden_grads, 0).inner();
        let surrogate = (hidden_s * g_hidden).sum();
        acc.accumulate(
            model,
            GradientsParams::from_grads(surrogate.backward(), model),
        );
    }
    (
        LossOutput {
            sum: Tensor::from_data([sum as f32], &device),
            tokens,
        },
        acc.grads(),
    )
}

/// The next-token loss of a batch and the gradients of every parameter of `model`, with
/// activation checkpointing per decoder layer: only the input of each layer is kept from the
/// forward pass (which runs outside autodiff), and each layer is run again, tracked, when the
/// backward pass reaches it. The head and loss are chunked as in [`chunked_lm_loss_backward`]
/// (`chunk_rows` rows of logits at a time, at most [`MAX_CHUNK_LOGITS`] logits; 0: all rows at
/// once). Loss and gradients equal
/// those of the model run without checkpointing; the forward pass costs twice as much.
///
/// Peak activation memory becomes one `[batch, seq, hidden]` tensor per layer plus one
/// layer's intermediate activations, instead of every layer's.
///
/// # Errors
/// [`crate::TrainError::Config`] for architectures without a [`lmflow_models::model::Layerwise`] view
/// (GPT-2, OPT); input errors of the model.
///
/// # Shapes
/// - labels: `[batch, seq]` (unshifted, as for [`causal_lm_loss`])
pub fn checkpointed_lm_loss_backward(
    model: &CausalLm,
    input: &lmflow_models::ForwardInput,
    labels: Tensor<2, Int>,
    chunk_rows: usize,
    scale: f64,
) -> crate::error::Result<(LossOutput, GradientsParams)> {
    use burn::module::Module;
    let unsupported = || {
        crate::error::TrainError::Config(format!(
            "gradient checkpointing is implemented for the LLaMA family, not `{}`",
            model.model_type()
        ))
    };
    let tracked = model.layerwise().ok_or_else(unsupported)?;
    let num_layers = model.num_layers();
    let device = input.input_ids.device();
    // Forward outside autodiff, keeping each layer's input.
    let (mut inputs, context) = {
        let plain = model.valid();
        let layers = plain.layerwise().ok_or_else(unsupported)?;
        let (mut x, context) = layers.embed(&input.inner())?;
        let mut inputs = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            inputs.push(x.clone());
            x = layers.layer(i, x, &context)?;
        }
        inputs.push(x);
        (inputs, context.inner())
    };
    let mut acc = GradientsAccumulator::<CausalLm>::new();
    // Final norm, head and loss, differentiated up to the last layer's output.
    let last = Tensor::from_inner(inputs.pop().expect("num_layers + 1 entries")).require_grad();
    let hidden = tracked.final_norm(last.clone());
    let [batch, seq, width] = hidden.dims();
    let (mut sum, mut tokens) = (0.0f64, 0usize);
    let mut grad = if seq >= 2 {
        let rows = batch * (seq - 1);
        let hidden_s: Tensor<2> = hidden
            .clone()
            .slice([0..batch, 0..seq - 1, 0..width])
            .reshape([rows, width]);
        let targets: Tensor<2, Int> = labels.slice([0..batch, 1..seq]).reshape([1, rows]);
        let detached = hidden_s.clone().detach();
        let chunk = chunk_len(chunk_rows, rows, model.vocab_size());
        let mut hidden_grads = Vec::with_capacity(rows.div_ceil(chunk));
        for start in (0..rows).step_by(chunk) {
            let end = (start + chunk).min(rows);
            let h = detached
                .clone()
                .slice([start..end, 0..width])
                .require_grad();
            let logits = model.logits(h.clone().unsqueeze_dim::<3>(0));
            let part = aligned_token_logprobs(logits, targets.clone().slice([0..1, start..end]));
            tokens += count_trained(&part.trained);
            let nll = part.logprobs.neg().sum();
            sum += f64::from(nll.clone().into_scalar::<f32>());
            let grads = nll.mul_scalar(scale).backward();
            hidden_grads.push(match h.grad(&grads) {
                Some(g) => g,
                None => h.clone().inner().zeros_like(),
            });
            acc.accumulate(model, GradientsParams::from_grads(grads, model));
        }
        let g_hidden = Tensor::cat(hidden_grads, 0).inner();
        let grads = (hidden_s * g_hidden).sum().backward();
        let g = last.grad(&grads);
        acc.accumulate(model, GradientsParams::from_grads(grads, model));
        g
    } else {
        None
    };
    // Each layer again, tracked, from the last to the first.
    for i in (0..num_layers).rev() {
        let x_in = inputs.pop().expect("one input per layer");
        let Some(g) = grad.take() else { break };
        let x = Tensor::from_inner(x_in).require_grad();
        let y = tracked.layer(i, x.clone(), &context)?;
        let grads = (y * g).sum().backward();
        grad = x.grad(&grads);
        acc.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    // The embedding, when it trains.
    if let Some(g) = grad {
        let (x, _) = tracked.embed(input)?;
        if x.is_tracked() {
            let grads = (x * g).sum().backward();
            acc.accumulate(model, GradientsParams::from_grads(grads, model));
        }
    }
    Ok((
        LossOutput {
            sum: Tensor::from_data([sum as f32], &device),
            tokens,
        },
        acc.grads(),
    ))
}

fn count_trained(trained: &Tensor<2, burn::tensor::Bool>) -> usize {
    trained
        .clone()
        .int()
        .sum()
        .into_scalar::<i64>()
        .try_into()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_chunks_are_cut_for_large_vocabularies_only() {
        // Qwen2's 151,936-token vocabulary: 2^24 / 151,936 = 110 positions per chunk.
        assert_eq!(chunk_len(512, 511, 151_936), 110);
        // Llama-2's 32,000 and the bundled 2,048: the requested 512 stays.
        assert_eq!(chunk_len(512, 511, 32_000), 512);
        assert_eq!(chunk_len(512, 511, 2_048), 512);
        // 0 asks for the whole micro-batch at once; a chunk always has a row.
        assert_eq!(chunk_len(0, 511, 151_936), 511);
        assert_eq!(chunk_len(512, 511, usize::MAX), 1);
    }
}
