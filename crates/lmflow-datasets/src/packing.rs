//! Best-fit packing of several samples into fixed-size blocks.
//!
//! Within a block, position ids restart at 0 for each sample and each sample gets its own
//! segment id (1, 2, ...), so attention can be confined to equal segment ids: no
//! cross-contamination between samples. The first label of every packed sample is set to
//! `-100`, so the loss never predicts a sample's first token from the previous sample; with
//! that, the loss of a block equals the sum of its samples' losses computed alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::tokenize::{IGNORE_INDEX, TokenizedSample};

/// One packed block (unpadded; its length is at most the block size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBlock {
    /// Concatenated token ids.
    pub input_ids: Vec<u32>,
    /// Concatenated labels (first label of each sample set to `-100`).
    pub labels: Vec<i64>,
    /// Positions, restarting at 0 for each sample.
    pub position_ids: Vec<i64>,
    /// Segment ids: 1 for the first sample, 2 for the second, ...
    pub segment_ids: Vec<i64>,
    /// Indices (into the input slice) of the samples in this block, in order.
    pub samples: Vec<usize>,
}

impl PackedBlock {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// Packs samples into blocks of at most `block_size` tokens with best-fit decreasing: samples
/// are taken longest first and each goes into the open block with the least room that still
/// fits it. The result is deterministic. Samples longer than `block_size` are an error
/// (truncate first).
pub fn pack_best_fit(samples: &[TokenizedSample], block_size: usize) -> Result<Vec<PackedBlock>> {
    if block_size == 0 {
        return Err(DatasetError::Config("block_size must be positive".into()));
    }
    if let Some((i, s)) = samples
        .iter()
        .enumerate()
        .find(|(_, s)| s.len() > block_size)
    {
        return Err(DatasetError::Config(format!(
            "sample {i} has {} tokens, more than block_size {block_size}",
            s.len()
        )));
    }
    let mut order: Vec<usize> = (0..samples.len())
        .filter(|&i| !samples[i].is_empty())
        .collect();
    order.sort_by(|&a, &b| samples[b].len().cmp(&samples[a].len()).then(a.cmp(&b)));
    // remaining room -> blocks with that room (block indices in creation order)
    let mut by_room: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut bins: Vec<Vec<usize>> = Vec::new();
    let mut room: Vec<usize> = Vec::new();
    for i in order {
        let need = samples[i].len();
        let found = by_room.range(need..).next().map(|(&r, v)| (r, v[0]));
        let b = match found {
            Some((r, b)) => {
                let v = by_room.get_mut(&r).expect("key exists");
                v.remove(0);
                if v.is_empty() {
                    by_room.remove(&r);
                }
                b
            }
            None => {
                bins.push(Vec::new());
                room.push(block_size);
                bins.len() - 1
            }
        };
        bins[b].push(i);
        room[b] -= need;
        by_room.entry(room[b]).or_default().push(b);
        by_room
            .get_mut(&room[b])
            .expect("just inserted")
            .sort_unstable();
    }
    Ok(bins
        .into_iter()
        .map(|members| build_block(samples, members))
        .collect())
}

/// Concatenates samples (in the given order) into one block.
pub fn build_block(samples: &[TokenizedSample], members: Vec<usize>) -> PackedBlock {
    let mut block = PackedBlock {
        input_ids: Vec::new(),
        labels: Vec::new(),
        position_ids: Vec::new(),
        segment_ids: Vec::new(),
        samples: Vec::new(),
    };
    for (seg, &i) in members.iter().enumerate() {
        let s = &samples[i];
        block.input_ids.extend(&s.input_ids);
        for (t, &l) in s.labels.iter().enumerate() {
            block.labels.push(if t == 0 { IGNORE_INDEX } else { l });
        }
        block.position_ids.extend(0..s.len() as i64);
        block
            .segment_ids
            .extend(std::iter::repeat_n(seg as i64 + 1, s.len()));
    }
    block.samples = members;
    block
}
