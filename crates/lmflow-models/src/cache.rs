//! Key/value cache for incremental decoding.
//!
//! A [`KvCache`] holds, per layer, keys and values of shape `[batch, kv_heads, max_len,
//! head_dim]`, allocated on first use with the dtype and device of the first keys written.
//! A forward pass writes its new keys/values at positions `len()..len() + seq` of every layer
//! ([`KvCache::update`]) and then advances the length once ([`KvCache::advance`]); models do
//! both, callers only create, truncate or reset caches.

use burn::tensor::{Tensor, s};

use crate::error::ModelError;

/// One layer's preallocated keys and values, `[batch, kv_heads, max_len, head_dim]`.
#[derive(Debug, Clone)]
struct LayerKv {
    keys: Tensor<4>,
    values: Tensor<4>,
}

/// Preallocated per-layer keys and values.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    max_len: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` layers holding up to `max_len` positions.
    pub fn new(num_layers: usize, max_len: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            max_len,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity in positions.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Forgets positions from `len` on (e.g. rejected draft tokens in speculative decoding).
    /// A `len` beyond the current length changes nothing.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Forgets every position (the buffers are kept for reuse).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Writes `keys`/`values` `[batch, kv_heads, seq, head_dim]` of `layer` at positions
    /// `len()..len() + seq` and returns the layer's keys and values for positions
    /// `0..len() + seq`. The length itself only grows with [`KvCache::advance`].
    ///
    /// # Errors
    /// [`ModelError::Input`] when the cache would overflow, the layer does not exist, or the
    /// batch/head shape differs from what the cache holds.
    pub fn update(
        &mut self,
        layer: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> Result<(Tensor<4>, Tensor<4>), ModelError> {
        let [batch, heads, seq, head_dim] = keys.dims();
        let end = self.len + seq;
        if end > self.max_len {
            return Err(ModelError::Input(format!(
                "KV cache overflow: {} cached + {seq} new positions > capacity {}",
                self.len, self.max_len
            )));
        }
        let num_layers = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or_else(|| {
            ModelError::Input(format!(
                "KV cache has {num_layers} layers, got layer {layer}"
            ))
        })?;
        let mut kv = match slot.take() {
            Some(kv) => kv,
            None => {
                let shape = [batch, heads, self.max_len, head_dim];
                let options = (&keys.device(), keys.dtype());
                LayerKv {
                    keys: Tensor::zeros(shape, options),
                    values: Tensor::zeros(shape, (&values.device(), values.dtype())),
                }
            }
        };
        let [cb, ch, _, cd] = kv.keys.dims();
        if [cb, ch, cd] != [batch, heads, head_dim] {
            return Err(ModelError::Input(format!(
                "KV cache holds [batch {cb}, heads {ch}, head_dim {cd}], \
                 got [batch {batch}, heads {heads}, head_dim {head_dim}]"
            )));
        }
        let start = self.len;
        kv.keys = kv.keys.slice_assign(s![.., .., start..end, ..], keys);
        kv.values = kv.values.slice_assign(s![.., .., start..end, ..], values);
        let out = (
            kv.keys.clone().slice(s![.., .., 0..end, ..]),
            kv.values.clone().slice(s![.., .., 0..end, ..]),
        );
        *slot = Some(kv);
        Ok(out)
    }

    /// Advances the length by `seq` positions after every layer has been updated.
    pub fn advance(&mut self, seq: usize) {
        self.len = (self.len + seq).min(self.max_len);
    }
}
