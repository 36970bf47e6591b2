//! Key/value cache for incremental decoding.
//!
//! A [`KvCache`] holds, per layer, keys and values of shape `[batch, kv_heads, capacity,
//! head_dim]`, allocated on first use with the dtype and device of the first keys written and
//! grown (doubling) as positions arrive, never beyond `max_len`.
//! A forward pass writes its new keys/values at positions `len()..len() + seq` of every layer
//! ([`KvCache::update`]) and then advances the length once ([`KvCache::advance`]); models do
//! both, callers only create, truncate or reset caches.

use burn::tensor::{Tensor, s};

use crate::error::ModelError;

/// Positions allocated at least when a layer's buffers are first created.
const MIN_CAPACITY: usize = 64;

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
        // Buffers grow on demand (doubling, capped at `max_len`) rather than being allocated at
        // `max_len` up front: a caller asking for a huge capacity (`max_new_tokens` 1e8) pays
        // only for the positions it actually uses.
        let grown = |cap: usize| {
            end.max(cap.saturating_mul(2))
                .max(MIN_CAPACITY)
                .min(self.max_len)
        };
        let mut kv = match slot.take() {
            Some(kv) => kv,
            None => {
                let shape = [batch, heads, grown(0), head_dim];
                let options = (&keys.device(), keys.dtype());
                LayerKv {
                    keys: Tensor::zeros(shape, options),
                    values: Tensor::zeros(shape, (&values.device(), values.dtype())),
                }
            }
        };
        let [cb, ch, cap, cd] = kv.keys.dims();
        if [cb, ch, cd] != [batch, heads, head_dim] {
            return Err(ModelError::Input(format!(
                "KV cache holds [batch {cb}, heads {ch}, head_dim {cd}], \
                 got [batch {batch}, heads {heads}, head_dim {head_dim}]"
            )));
        }
        if end > cap {
            let shape = [batch, heads, grown(cap), head_dim];
            let grow = |old: Tensor<4>| {
                Tensor::zeros(shape, (&old.device(), old.dtype()))
                    .slice_assign(s![.., .., 0..cap, ..], old)
            };
            kv.keys = grow(kv.keys);
            kv.values = grow(kv.values);
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

    /// Keys and values `[batch, kv_heads, len(), head_dim]` of `layer` (`None` before the
    /// layer's first update). Views of the cache's buffers, e.g. for regrouping the rows of
    /// several caches into one batch (continuous batching).
    pub fn layer(&self, layer: usize) -> Option<(Tensor<4>, Tensor<4>)> {
        let kv = self.layers.get(layer)?.as_ref()?;
        Some((
            kv.keys.clone().slice(s![.., .., 0..self.len, ..]),
            kv.values.clone().slice(s![.., .., 0..self.len, ..]),
        ))
    }

    /// A cache holding `layers` (keys and values `[batch, kv_heads, len, head_dim]` per layer,
    /// the same `len` for all) with room for `max_len` positions.
    ///
    /// # Errors
    /// [`ModelError::Input`] when the layers disagree in length or batch, or `len > max_len`.
    pub fn from_layers(
        layers: Vec<(Tensor<4>, Tensor<4>)>,
        max_len: usize,
    ) -> Result<Self, ModelError> {
        let Some(first) = layers.first() else {
            return Err(ModelError::Input("KV cache with no layers".into()));
        };
        let [batch, _, len, _] = first.0.dims();
        if len > max_len {
            return Err(ModelError::Input(format!(
                "KV cache of {len} positions exceeds its capacity {max_len}"
            )));
        }
        let mut out = Vec::with_capacity(layers.len());
        for (i, (keys, values)) in layers.into_iter().enumerate() {
            let [b, _, l, _] = keys.dims();
            if [b, l] != [batch, len] || values.dims()[..3] != keys.dims()[..3] {
                return Err(ModelError::Input(format!(
                    "KV cache layer {i}: keys {:?} / values {:?}, expected batch {batch} and \
                     {len} positions",
                    keys.dims(),
                    values.dims()
                )));
            }
            out.push(Some(LayerKv { keys, values }));
        }
        Ok(Self {
            layers: out,
            len,
            max_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn a_huge_capacity_is_not_allocated_up_front_and_growth_keeps_the_contents() {
        let device = Device::flex();
        // 1e8 positions of [1, 2, _, 4] f32 would be 6.4 GB per layer and buffer.
        let mut cache = KvCache::new(1, 100_000_000);
        let mut expected = Vec::new();
        for pos in 0..150 {
            let step = Tensor::<4>::full([1, 2, 1, 4], pos as f32, &device);
            let (k, v) = cache.update(0, step.clone(), step).unwrap();
            cache.advance(1);
            expected.extend(std::iter::repeat_n(pos as f32, 4));
            assert_eq!(k.dims(), [1, 2, pos + 1, 4]);
            let got: Vec<f32> = v
                .slice(s![0..1, 0..1, .., ..])
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert_eq!(got, expected);
        }
        let Some(Some(layer)) = cache.layers.first() else {
            panic!("layer 0 not allocated");
        };
        assert_eq!(layer.keys.dims()[2], 256);
    }
}
