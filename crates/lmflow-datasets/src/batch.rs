//! Batching tokenized samples into Burn tensors.
//!
//! A [`Batch`] holds `[batch, seq]` integer tensors:
//! - `input_ids`: token ids, right-padded with the pad id;
//! - `labels`: unshifted labels, `-100` on padding and untrained tokens;
//! - `attention_mask`: 1 for real tokens, 0 for padding;
//! - `position_ids`: 0, 1, ... per sample (restarting at each packed sample);
//! - `segment_ids`: for packed rows, 1, 2, ... per sample and 0 on padding; attention must be
//!   confined to equal segment ids. `None` for unpacked batches.
//!
//! The models' forward takes `input_ids`, an optional `attention_mask`, optional
//! `position_ids` and optional `segment_ids` with exactly these meanings.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{DatasetError, Result};
use crate::packing::PackedBlock;
use crate::tokenize::{IGNORE_INDEX, TokenizedPair, TokenizedSample};

/// A batch of token rows as Burn tensors.
///
/// # Shapes
/// Every tensor is `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids.
    pub input_ids: Tensor<2, Int>,
    /// Unshifted labels (`-100`: not trained).
    pub labels: Tensor<2, Int>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Tensor<2, Int>,
    /// Position of each token within its sample.
    pub position_ids: Tensor<2, Int>,
    /// Sample (segment) ids of packed rows, 0 on padding; `None` when rows hold one sample.
    pub segment_ids: Option<Tensor<2, Int>>,
}

/// The plain data of a batch before it becomes tensors (row-major `[batch, seq]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchData {
    /// Rows.
    pub batch: usize,
    /// Columns.
    pub seq: usize,
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Labels.
    pub labels: Vec<i64>,
    /// Attention mask.
    pub attention_mask: Vec<i64>,
    /// Position ids.
    pub position_ids: Vec<i64>,
    /// Segment ids (packed rows only).
    pub segment_ids: Option<Vec<i64>>,
}

impl BatchData {
    /// Moves the data to tensors on `device`.
    pub fn to_batch(&self, device: &Device) -> Batch {
        let shape = [self.batch, self.seq];
        let t =
            |v: &Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v.clone(), shape), device);
        Batch {
            input_ids: t(&self.input_ids),
            labels: t(&self.labels),
            attention_mask: t(&self.attention_mask),
            position_ids: t(&self.position_ids),
            segment_ids: self.segment_ids.as_ref().map(t),
        }
    }
}

fn check_nonempty(n: usize) -> Result<()> {
    if n == 0 {
        return Err(DatasetError::Config("cannot batch zero samples".into()));
    }
    Ok(())
}

/// Right-pads samples to the longest one (or to a multiple of `pad_to_multiple_of`).
pub fn collate_data(
    samples: &[&TokenizedSample],
    pad_id: u32,
    pad_to_multiple_of: Option<usize>,
) -> Result<BatchData> {
    check_nonempty(samples.len())?;
    let mut seq = samples.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
    if let Some(m) = pad_to_multiple_of.filter(|&m| m > 1) {
        seq = seq.div_ceil(m) * m;
    }
    let mut d = BatchData {
        batch: samples.len(),
        seq,
        ..Default::default()
    };
    for s in samples {
        let pad = seq - s.len();
        d.input_ids
            .extend(s.input_ids.iter().map(|&x| i64::from(x)));
        d.input_ids
            .extend(std::iter::repeat_n(i64::from(pad_id), pad));
        d.labels.extend(&s.labels);
        d.labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        d.attention_mask.extend(std::iter::repeat_n(1, s.len()));
        d.attention_mask.extend(std::iter::repeat_n(0, pad));
        d.position_ids.extend(0..s.len() as i64);
        d.position_ids.extend(std::iter::repeat_n(0, pad));
    }
    Ok(d)
}

/// Right-padded batch of unpacked samples on `device`.
pub fn collate(samples: &[&TokenizedSample], pad_id: u32, device: &Device) -> Result<Batch> {
    Ok(collate_data(samples, pad_id, None)?.to_batch(device))
}

/// Right-pads packed blocks to the longest one; padding has segment id 0.
pub fn collate_packed_data(blocks: &[&PackedBlock], pad_id: u32) -> Result<BatchData> {
    check_nonempty(blocks.len())?;
    let seq = blocks.iter().map(|b| b.len()).max().unwrap_or(0).max(1);
    let mut d = BatchData {
        batch: blocks.len(),
        seq,
        segment_ids: Some(Vec::new()),
        ..Default::default()
    };
    let mut segs = Vec::new();
    for b in blocks {
        let pad = seq - b.len();
        d.input_ids
            .extend(b.input_ids.iter().map(|&x| i64::from(x)));
        d.input_ids
            .extend(std::iter::repeat_n(i64::from(pad_id), pad));
        d.labels.extend(&b.labels);
        d.labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        d.attention_mask.extend(std::iter::repeat_n(1, b.len()));
        d.attention_mask.extend(std::iter::repeat_n(0, pad));
        d.position_ids.extend(&b.position_ids);
        d.position_ids.extend(std::iter::repeat_n(0, pad));
        segs.extend(&b.segment_ids);
        segs.extend(std::iter::repeat_n(0, pad));
    }
    d.segment_ids = Some(segs);
    Ok(d)
}

/// Batch of packed blocks on `device` (with `segment_ids`).
pub fn collate_packed(blocks: &[&PackedBlock], pad_id: u32, device: &Device) -> Result<Batch> {
    Ok(collate_packed_data(blocks, pad_id)?.to_batch(device))
}

/// Padding-free batch: all samples concatenated into a single row `[1, total]` with
/// restarting positions and segment ids (for backends whose attention honours segment ids).
pub fn collate_padding_free(samples: &[&TokenizedSample], device: &Device) -> Result<Batch> {
    check_nonempty(samples.len())?;
    let owned: Vec<TokenizedSample> = samples.iter().map(|s| (*s).clone()).collect();
    let block = crate::packing::build_block(&owned, (0..owned.len()).collect());
    collate_packed(&[&block], 0, device)
}

/// A batch of preference pairs: chosen and rejected rows padded to one common length.
#[derive(Debug, Clone)]
pub struct PairedBatch {
    /// Preferred samples, `[batch, seq]`.
    pub chosen: Batch,
    /// Dispreferred samples, `[batch, seq]`.
    pub rejected: Batch,
    /// Margins `[batch]` when every pair has one.
    pub margin: Option<Tensor<1>>,
}

/// Collates preference pairs (reward modelling, DPO): both sides are padded to the same
/// length so they can also be concatenated along the batch.
pub fn collate_pairs(
    pairs: &[&TokenizedPair],
    pad_id: u32,
    device: &Device,
) -> Result<PairedBatch> {
    check_nonempty(pairs.len())?;
    let longest = pairs
        .iter()
        .map(|p| p.chosen.len().max(p.rejected.len()))
        .max()
        .unwrap_or(1)
        .max(1);
    let chosen: Vec<&TokenizedSample> = pairs.iter().map(|p| &p.chosen).collect();
    let rejected: Vec<&TokenizedSample> = pairs.iter().map(|p| &p.rejected).collect();
    let pad_to = |d: BatchData| pad_rows(d, longest, pad_id);
    let chosen = pad_to(collate_data(&chosen, pad_id, None)?).to_batch(device);
    let rejected = pad_to(collate_data(&rejected, pad_id, None)?).to_batch(device);
    let margin = pairs
        .iter()
        .map(|p| p.margin.map(|m| m as f32))
        .collect::<Option<Vec<f32>>>()
        .map(|m| Tensor::<1>::from_data(TensorData::new(m, [pairs.len()]), device));
    Ok(PairedBatch {
        chosen,
        rejected,
        margin,
    })
}

/// Extends every row of `d` to `seq` columns with padding.
fn pad_rows(d: BatchData, seq: usize, pad_id: u32) -> BatchData {
    if d.seq >= seq {
        return d;
    }
    let extra = seq - d.seq;
    let widen = |v: &[i64], fill: i64| -> Vec<i64> {
        v.chunks(d.seq)
            .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(fill, extra)))
            .collect()
    };
    BatchData {
        batch: d.batch,
        seq,
        input_ids: widen(&d.input_ids, i64::from(pad_id)),
        labels: widen(&d.labels, IGNORE_INDEX),
        attention_mask: widen(&d.attention_mask, 0),
        position_ids: widen(&d.position_ids, 0),
        segment_ids: d.segment_ids.as_ref().map(|s| widen(s, 0)),
    }
}
