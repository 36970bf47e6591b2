//! Attention masks and scaled dot-product attention shared by every architecture.
//!
//! Masks follow `transformers`' semantics: causal, plus the 2-D padding `attention_mask`
//! (`1` = attend, `0` = padding, covering cached positions too), plus an optional sliding
//! window (`kv_idx > q_idx - window`, as `masking_utils.sliding_window_overlay`), plus packed
//! segment ids (attend only within the same segment). Masked scores get the most negative `f32`
//! rather than `-inf`, so a fully masked row (a left-padding query) yields a uniform
//! distribution instead of NaN, as `transformers` does.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, Device, Int, Tensor};

use crate::error::ModelError;

/// The value added to masked attention scores.
pub const MASKED: f32 = f32::MIN;

/// What restricts attention beyond causality.
#[derive(Debug, Clone, Default)]
pub struct MaskSpec<'a> {
    /// `[batch, past + seq]`: `1` attend, `0` padding.
    pub attention_mask: Option<&'a Tensor<2, Int>>,
    /// `[batch, seq]`: packed sample ids; queries attend only to keys with the same id.
    pub segment_ids: Option<&'a Tensor<2, Int>>,
    /// Keys at distance `>= window` from the query are masked.
    pub sliding_window: Option<usize>,
}

/// Builds the boolean "may attend" mask `[batch, seq, past + seq]` for queries at positions
/// `past..past + seq`.
///
/// # Errors
/// [`ModelError::Input`] when the attention mask or segment ids have the wrong shape, or segment
/// ids are combined with cached positions.
pub fn allowed_mask(
    batch: usize,
    seq: usize,
    past: usize,
    spec: &MaskSpec<'_>,
    device: &Device,
) -> Result<Tensor<3, Bool>, ModelError> {
    let kv = past + seq;
    let shape = [batch, seq, kv];
    let q_pos = Tensor::<1, Int>::arange(past as i64..kv as i64, device)
        .reshape([1, seq, 1])
        .expand(shape);
    let k_pos = Tensor::<1, Int>::arange(0..kv as i64, device)
        .reshape([1, 1, kv])
        .expand(shape);
    let mut allowed = k_pos.clone().lower_equal(q_pos.clone());
    if let Some(window) = spec.sliding_window {
        allowed = allowed.bool_and(k_pos.add_scalar(window as i64).greater(q_pos));
    }
    if let Some(mask) = spec.attention_mask {
        let dims = mask.dims();
        if dims != [batch, kv] {
            return Err(ModelError::Input(format!(
                "attention_mask has shape {dims:?}, expected [batch {batch}, past + seq {kv}]"
            )));
        }
        let keep = mask
            .clone()
            .not_equal_elem(0)
            .reshape([batch, 1, kv])
            .expand(shape);
        allowed = allowed.bool_and(keep);
    }
    if let Some(segments) = spec.segment_ids {
        let dims = segments.dims();
        if past != 0 {
            return Err(ModelError::Input(
                "segment_ids cannot be combined with a non-empty KV cache".into(),
            ));
        }
        if dims != [batch, seq] {
            return Err(ModelError::Input(format!(
                "segment_ids has shape {dims:?}, expected [batch {batch}, seq {seq}]"
            )));
        }
        let q_seg = segments.clone().reshape([batch, seq, 1]).expand(shape);
        let k_seg = segments.clone().reshape([batch, 1, seq]).expand(shape);
        allowed = allowed.bool_and(q_seg.equal(k_seg));
    }
    Ok(allowed)
}

/// Additive f32 attention bias `[batch, 1, seq, past + seq]`: `0` where attention is allowed,
/// [`MASKED`] elsewhere.
///
/// # Errors
/// As [`allowed_mask`].
pub fn attention_bias(
    batch: usize,
    seq: usize,
    past: usize,
    spec: &MaskSpec<'_>,
    device: &Device,
) -> Result<Tensor<4>, ModelError> {
    let allowed = allowed_mask(batch, seq, past, spec, device)?;
    let zeros = Tensor::<3>::zeros([batch, seq, past + seq], (device, DType::F32));
    Ok(zeros.mask_fill(allowed.bool_not(), MASKED).unsqueeze_dim(1))
}

/// Position ids as `transformers`' `generate` derives them from a (left-padded) attention mask:
/// `cumsum(mask) - 1`, with padding positions set to `1`.
///
/// # Shapes
/// - attention_mask: `[batch, len]`
/// - output: `[batch, len]`
pub fn position_ids_from_attention_mask(attention_mask: Tensor<2, Int>) -> Tensor<2, Int> {
    let padding = attention_mask.clone().equal_elem(0);
    let positions = attention_mask.cumsum(1).sub_scalar(1);
    positions.mask_fill(padding, 1)
}

/// Scaled dot-product attention with an additive bias; scores and softmax in f32, output in the
/// dtype of `values`.
///
/// Grouped-query attention is computed without repeating keys and values: the queries of the
/// `heads / kv_heads` heads that share a key/value head are viewed as one group
/// (`[batch, kv_heads, group, seq, head_dim]`) and multiplied against that head's keys by a
/// broadcast batched matmul, so no `[batch, heads, kv_len, head_dim]` copy of the cache is made
/// (equal to `transformers`' `repeat_kv` + attention).
///
/// # Shapes
/// - queries: `[batch, heads, seq, head_dim]`
/// - keys, values: `[batch, kv_heads, kv_len, head_dim]` (`heads` a multiple of `kv_heads`)
/// - bias: `[batch, 1, seq, kv_len]` (f32, see [`attention_bias`])
/// - output: `[batch, heads, seq, head_dim]`
pub fn scaled_dot_product_attention(
    queries: Tensor<4>,
    keys: Tensor<4>,
    values: Tensor<4>,
    bias: Option<&Tensor<4>>,
    scale: f64,
) -> Tensor<4> {
    let [b, heads, seq, d] = queries.dims();
    let kv_heads = keys.dims()[1];
    let group = heads / kv_heads.max(1);
    let out_dtype = values.dtype();
    let q: Tensor<5> = queries.reshape([b, kv_heads, group, seq, d]);
    let k: Tensor<5> = keys.unsqueeze_dim(2);
    let v: Tensor<5> = values.unsqueeze_dim(2);
    let mut scores = q
        .matmul(k.swap_dims(3, 4))
        .cast(DType::F32)
        .mul_scalar(scale);
    if let Some(bias) = bias {
        let bias: Tensor<5> = bias.clone().unsqueeze_dim(2);
        scores = scores.add(bias);
    }
    let probs = softmax(scores, 4).cast(out_dtype);
    probs.matmul(v).reshape([b, heads, seq, d])
}
