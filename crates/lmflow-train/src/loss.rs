//! Causal language-modelling loss: next-token cross-entropy over trained tokens.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Label value of tokens that are not trained (as in PyTorch's `ignore_index` and HF datasets).
pub const IGNORE_INDEX: i64 = -100;

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
    let tokens: usize = token
        .trained
        .int()
        .sum()
        .into_scalar::<i64>()
        .try_into()
        .unwrap_or(0);
    LossOutput {
        sum: token.logprobs.neg().sum(),
        tokens,
    }
}

/// Log-probabilities of the next tokens, aligned with `labels[:, 1:]`.
#[derive(Debug, Clone)]
pub struct TokenLogprobs {
    /// `log p(labels[t + 1] | tokens ..= t)` in f32, 0 where the label is ignored.
    ///
    /// Shape `[batch, seq - 1]`.
    pub logprobs: Tensor<2>,
    /// Whether each position is trained (label not [`IGNORE_INDEX`]), `[batch, seq - 1]`.
    pub trained: Tensor<2, burn::tensor::Bool>,
}

/// Next-token log-probabilities of the labelled tokens (f32), the building block of the
/// cross-entropy loss and of sequence log-likelihoods (reward models, DPO). `None` when the
/// sequence is shorter than two tokens.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`
/// - labels: `[batch, seq]`
pub fn shifted_token_logprobs(logits: Tensor<3>, labels: Tensor<2, Int>) -> Option<TokenLogprobs> {
    let [batch, seq, vocab] = logits.dims();
    if seq < 2 {
        return None;
    }
    let logits = logits
        .slice([0..batch, 0..seq - 1, 0..vocab])
        .cast(burn::tensor::FloatDType::F32);
    let targets = labels.slice([0..batch, 1..seq]);
    let trained = targets.clone().not_equal_elem(IGNORE_INDEX);
    // Ignored positions gather index 0 and are zeroed afterwards.
    let safe_targets = targets.mask_fill(trained.clone().bool_not(), 0);
    let logp = log_softmax(logits, 2);
    let picked = logp
        .gather(2, safe_targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2)
        .mask_fill(trained.clone().bool_not(), 0.0);
    Some(TokenLogprobs {
        logprobs: picked,
        trained,
    })
}
