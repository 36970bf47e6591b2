//! Negative log-likelihood and perplexity of token sequences (`lmflow eval --metric nll|ppl`).
//!
//! The NLL of a sequence is the summed negative log-likelihood (nats) of its tokens after the
//! first, each predicted from the tokens before it. Over a dataset, [`NllStats`] keeps the total
//! and the number of predicted tokens: `nll_mean_per_sample` is LMFlow's figure (total / number
//! of samples) and `ppl` is `exp(total / predicted tokens)`.

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::error::ModelError;
use crate::model::{CausalLm, ForwardInput};

/// Accumulated negative log-likelihood over samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NllStats {
    /// Number of samples.
    pub samples: usize,
    /// Summed NLL in nats.
    pub nll_sum: f64,
    /// Number of predicted tokens (sum over samples of `len - 1`).
    pub predicted_tokens: usize,
}

impl NllStats {
    /// `nll_sum / samples` (LMFlow's "nll" figure); 0 without samples.
    pub fn nll_mean_per_sample(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.nll_sum / self.samples as f64
        }
    }

    /// Mean NLL per predicted token.
    pub fn nll_per_token(&self) -> f64 {
        if self.predicted_tokens == 0 {
            f64::NAN
        } else {
            self.nll_sum / self.predicted_tokens as f64
        }
    }

    /// Perplexity `exp(nll_sum / predicted_tokens)`.
    pub fn ppl(&self) -> f64 {
        self.nll_per_token().exp()
    }
}

/// Per-sample NLL of a batch of sequences (each truncated to `block_size` tokens), computed in
/// batches of `batch_size` right-padded sequences.
///
/// Returns one `(nll, predicted_tokens)` per sequence, in order. Sequences shorter than two
/// tokens predict nothing and contribute `(0.0, 0)`.
///
/// # Errors
/// [`ModelError::Input`] for a zero `batch_size` or `block_size`, or errors of the forward pass.
pub fn sequence_nlls(
    model: &CausalLm,
    sequences: &[Vec<u32>],
    block_size: usize,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<(f64, usize)>, ModelError> {
    if batch_size == 0 || block_size == 0 {
        return Err(ModelError::Input(
            "batch_size and block_size must be positive".into(),
        ));
    }
    let vocab = model.vocab_size();
    let mut out = Vec::with_capacity(sequences.len());
    for chunk in sequences.chunks(batch_size) {
        let seqs: Vec<&[u32]> = chunk
            .iter()
            .map(|s| &s[..s.len().min(block_size)])
            .collect();
        let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if width < 2 {
            out.extend(seqs.iter().map(|_| (0.0, 0)));
            continue;
        }
        if let Some(bad) = seqs
            .iter()
            .flat_map(|s| s.iter())
            .find(|&&t| t as usize >= vocab)
        {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the model's vocabulary ({vocab})"
            )));
        }
        let b = seqs.len();
        let mut ids = vec![0i64; b * width];
        let mut mask = vec![0i64; b * width];
        for (i, s) in seqs.iter().enumerate() {
            for (j, &t) in s.iter().enumerate() {
                ids[i * width + j] = i64::from(t);
                mask[i * width + j] = 1;
            }
        }
        let input_ids =
            Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, width]), device);
        let attention_mask = Tensor::<2, Int>::from_data(TensorData::new(mask, [b, width]), device);
        let mut input = ForwardInput::new(input_ids.clone());
        if seqs.iter().any(|s| s.len() < width) {
            input = input.with_attention_mask(attention_mask);
        }
        let logits = model.forward(input, None)?.logits;
        let logits = logits
            .slice([0..b, 0..width - 1, 0..vocab])
            .cast(DType::F32);
        let logp = log_softmax(logits, 2);
        let targets = input_ids.slice([0..b, 1..width]).reshape([b, width - 1, 1]);
        let picked: Vec<f32> = logp
            .gather(2, targets)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Input(format!("reading log-probabilities: {e:?}")))?;
        for (i, s) in seqs.iter().enumerate() {
            let n = s.len().saturating_sub(1);
            let row = &picked[i * (width - 1)..i * (width - 1) + n];
            let nll: f64 = -row.iter().map(|&x| f64::from(x)).sum::<f64>();
            out.push((nll, n));
        }
    }
    Ok(out)
}

/// [`NllStats`] over sequences (see [`sequence_nlls`]).
///
/// # Errors
/// As [`sequence_nlls`].
pub fn evaluate_nll(
    model: &CausalLm,
    sequences: &[Vec<u32>],
    block_size: usize,
    batch_size: usize,
    device: &Device,
) -> Result<NllStats, ModelError> {
    let per_sample = sequence_nlls(model, sequences, block_size, batch_size, device)?;
    let mut stats = NllStats {
        samples: per_sample.len(),
        ..Default::default()
    };
    for (nll, n) in per_sample {
        stats.nll_sum += nll;
        stats.predicted_tokens += n;
    }
    Ok(stats)
}
