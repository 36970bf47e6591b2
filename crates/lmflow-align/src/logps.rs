//! Per-sequence log-likelihoods of labelled tokens (the policy/reference scores of DPO).

use burn::tensor::{Int, Tensor};
use lmflow_train::shifted_token_logprobs;

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
