//! Per-token and per-sequence log-probabilities of labelled tokens: the primitives below the
//! trainer's cross-entropy and the alignment objectives (DPO, reward scores), in one place.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Label value of tokens that are not trained or scored (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

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
    let logits = logits.slice([0..batch, 0..seq - 1, 0..vocab]);
    let targets = labels.slice([0..batch, 1..seq]);
    Some(aligned_token_logprobs(logits, targets))
}

/// `log p(targets[b, t] | logits[b, t])` in f32 (0 where the target is [`IGNORE_INDEX`]): the
/// unshifted core of [`shifted_token_logprobs`].
///
/// # Shapes
/// - logits: `[batch, len, vocab]`
/// - targets: `[batch, len]`
pub fn aligned_token_logprobs(logits: Tensor<3>, targets: Tensor<2, Int>) -> TokenLogprobs {
    let logits = logits.cast(burn::tensor::FloatDType::F32);
    let trained = targets.clone().not_equal_elem(IGNORE_INDEX);
    // Ignored positions gather index 0 and are zeroed afterwards.
    let safe_targets = targets.mask_fill(trained.clone().bool_not(), 0);
    let logp = log_softmax(logits, 2);
    let picked = logp
        .gather(2, safe_targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2)
        .mask_fill(trained.clone().bool_not(), 0.0);
    TokenLogprobs {
        logprobs: picked,
        trained,
    }
}

/// Summed log-probability of each sequence's labelled next tokens, and how many tokens that is.
#[derive(Debug, Clone)]
pub struct SequenceLogprobs {
    /// `Σ_t log p(labels[t+1] | ..= t)` per sequence, `[batch]`.
    pub sum: Tensor<1>,
    /// Labelled tokens per sequence.
    pub tokens: Vec<usize>,
}

impl SequenceLogprobs {
    /// Mean log-probability per labelled token (IPO-style length normalisation), `[batch]`.
    pub fn mean(&self) -> Tensor<1> {
        let device = self.sum.device();
        let counts: Vec<f32> = self.tokens.iter().map(|&t| t.max(1) as f32).collect();
        let n = counts.len();
        self.sum.clone().div(Tensor::from_data(
            burn::tensor::TensorData::new(counts, [n]),
            &device,
        ))
    }
}

/// Log-likelihood of each sequence's labelled tokens (labels `-100` skipped), in f32, as TRL's
/// `get_batch_logps` computes it.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`
/// - labels: `[batch, seq]`
pub fn sequence_logprobs(logits: Tensor<3>, labels: Tensor<2, Int>) -> SequenceLogprobs {
    let [batch, _, _] = logits.dims();
    let device = logits.device();
    match shifted_token_logprobs(logits, labels) {
        Some(t) => {
            let tokens = t
                .trained
                .int()
                .sum_dim(1)
                .into_data()
                .iter::<i64>()
                .map(|c| c.max(0) as usize)
                .collect();
            SequenceLogprobs {
                sum: t.logprobs.sum_dim(1).squeeze_dim::<1>(1),
                tokens,
            }
        }
        None => SequenceLogprobs {
            sum: Tensor::zeros([batch], &device),
            tokens: vec![0; batch],
        },
    }
}
