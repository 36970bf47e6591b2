//! Tokenized training samples and their right-padded batches.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::loss::IGNORE_INDEX;

/// One tokenized sample: token ids and per-token labels (`-100` = not trained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainSample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Labels aligned with `input_ids`: the token id where trained, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
}

impl TrainSample {
    /// Tokens whose label is trained (the loss shifts by one: the first token is never predicted).
    pub fn trained_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// A right-padded batch on a device.
#[derive(Debug, Clone)]
pub struct PaddedBatch {
    /// `[batch, seq]` token ids (padding: `pad_id`).
    pub input_ids: Tensor<2, Int>,
    /// `[batch, seq]` labels (padding: `-100`).
    pub labels: Tensor<2, Int>,
    /// `[batch, seq]` 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor<2, Int>,
    /// Trained tokens in the batch.
    pub trained_tokens: usize,
}

/// Pads `samples` on the right to their longest length.
pub fn pad_batch(samples: &[&TrainSample], pad_id: u32, device: &Device) -> PaddedBatch {
    let batch = samples.len();
    let seq = samples
        .iter()
        .map(|s| s.input_ids.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut ids = vec![pad_id as i64; batch * seq];
    let mut labels = vec![IGNORE_INDEX; batch * seq];
    let mut mask = vec![0i64; batch * seq];
    let mut trained = 0;
    for (b, s) in samples.iter().enumerate() {
        for (t, (&id, &label)) in s.input_ids.iter().zip(&s.labels).enumerate() {
            ids[b * seq + t] = id as i64;
            labels[b * seq + t] = label;
            mask[b * seq + t] = 1;
        }
        trained += s.trained_tokens();
    }
    PaddedBatch {
        input_ids: Tensor::from_data(TensorData::new(ids, [batch, seq]), device),
        labels: Tensor::from_data(TensorData::new(labels, [batch, seq]), device),
        attention_mask: Tensor::from_data(TensorData::new(mask, [batch, seq]), device),
        trained_tokens: trained,
    }
}
