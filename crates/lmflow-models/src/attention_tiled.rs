//! Attention whose memory grows linearly with the sequence: a tiled online-softmax forward
//! (FlashAttention-2's schedule) and a backward pass that recomputes each tile's probabilities
//! from the saved per-row maximum and log-sum, as one custom autodiff operation.
//!
//! The materialised path ([`scaled_dot_product_attention`](crate::attention::scaled_dot_product_attention))
//! builds `[batch, heads, seq, kv_len]` scores and probabilities, and Burn's autodiff keeps them
//! (and their gradients) for the backward pass: at 8,192 tokens and 8 heads that is 2 GiB per
//! tensor per layer in f32. Here only queries, keys, values, the output and two `f32` values per
//! query row are kept; scores exist one `[query_tile, key_tile]` block at a time, in the forward
//! pass and again in the backward pass.
//!
//! Masks are the same as the materialised path's ([`crate::attention::MaskSpec`]: causal,
//! padding `attention_mask`, sliding window, packed segment ids) and are applied per tile from a
//! host-side description ([`TiledMask`]), never as a `[seq, seq]` tensor. Tiles that causality or
//! the sliding window masks entirely are skipped (unless some query row is fully masked, e.g. a
//! left-padding position: the materialised path gives such a row a uniform distribution over
//! every key, and so does this one). Masked scores get [`MASKED`] added, as in the materialised
//! path, so results agree to rounding (1e-5 in f32; `tests/tiled_attention.rs`).
//!
//! Grouped-query attention is computed without repeating keys and values (the queries of one
//! key/value head are viewed as a group and multiplied by a broadcast batched matmul).
//!
//! The custom backward is registered for Burn's `flex` CPU backend under autodiff. On other
//! backends the same tiled computation runs through ordinary autodiff operations: correct
//! gradients, but each tile's probabilities are kept for the backward pass.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::attention::MASKED;
use crate::error::ModelError;

/// Sequence length from which [`AttentionImpl::Auto`] uses tiled attention.
pub const AUTO_TILED_MIN_SEQ: usize = 2048;

/// Default number of query rows per tile.
pub const DEFAULT_QUERY_TILE: usize = 256;

/// Default number of keys per tile.
pub const DEFAULT_KEY_TILE: usize = 256;

/// Which attention implementation a LLaMA-family model uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AttentionImpl {
    /// Tiled when the pass has at least [`AUTO_TILED_MIN_SEQ`] new tokens, materialised below.
    #[default]
    Auto,
    /// Always the materialised `[seq, kv_len]` scores (the reference path).
    Eager,
    /// Always tiled (memory linear in the sequence).
    Tiled,
}

impl AttentionImpl {
    /// Whether a pass over `seq` new tokens uses tiled attention.
    pub fn use_tiled(self, seq: usize) -> bool {
        match self {
            Self::Auto => seq >= AUTO_TILED_MIN_SEQ,
            Self::Eager => false,
            Self::Tiled => true,
        }
    }
}

impl fmt::Display for AttentionImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Eager => "eager",
            Self::Tiled => "tiled",
        })
    }
}

impl FromStr for AttentionImpl {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "eager" => Ok(Self::Eager),
            "tiled" => Ok(Self::Tiled),
            other => Err(ModelError::Input(format!(
                "unknown attention implementation `{other}` (expected auto, eager or tiled)"
            ))),
        }
    }
}

/// The mask of one attention call in a decoder layer: a dense additive bias (`None`: nothing
/// masked) for the materialised path, or a [`TiledMask`] for [`tiled_attention`].
#[derive(Debug, Clone, Copy)]
pub enum LayerMask<'a> {
    /// Additive bias `[batch, 1, seq, past + seq]` (see [`crate::attention::attention_bias`]).
    Dense(Option<&'a Tensor<4>>),
    /// Per-tile masks from a host-side description.
    Tiled(&'a Arc<TiledMask>),
}

/// What restricts attention, held on the host so that each tile's mask is built on its own:
/// causality (queries at positions `past..past + seq`, keys at `0..past + seq`), an optional
/// padding mask and optional packed segment ids. The sliding window is per layer and given to
/// [`tiled_attention`].
#[derive(Debug, Clone)]
pub struct TiledMask {
    batch: usize,
    seq: usize,
    past: usize,
    /// `[batch * kv]`: whether each key may be attended (the padding mask).
    key_valid: Option<Vec<bool>>,
    /// `[batch * kv]`: running count of invalid keys, `invalid_before[b * (kv + 1) + j]` = number
    /// of padding keys in `0..j`.
    invalid_before: Option<Vec<usize>>,
    /// `[batch * seq]`: packed segment ids.
    segments: Option<Vec<i64>>,
    /// `[batch * seq]`: last index of the run of equal segment ids starting at each position.
    segment_run_end: Option<Vec<usize>>,
    query_tile: usize,
    key_tile: usize,
}

impl TiledMask {
    /// Reads the padding mask (`[batch, past + seq]`, `1` attend) and segment ids
    /// (`[batch, seq]`) to the host (one small device read each).
    ///
    /// # Errors
    /// [`ModelError::Input`] for wrong shapes, or segment ids with cached positions.
    pub fn new(
        batch: usize,
        seq: usize,
        past: usize,
        attention_mask: Option<&Tensor<2, Int>>,
        segment_ids: Option<&Tensor<2, Int>>,
    ) -> Result<Self, ModelError> {
        let kv = past + seq;
        let read = |t: &Tensor<2, Int>, what: &str| -> Result<Vec<i64>, ModelError> {
            t.clone()
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .map_err(|e| ModelError::Input(format!("{what}: could not read ({e:?})")))
        };
        let key_valid = match attention_mask {
            None => None,
            Some(mask) => {
                if mask.dims() != [batch, kv] {
                    return Err(ModelError::Input(format!(
                        "attention_mask has shape {:?}, expected [batch {batch}, past + seq {kv}]",
                        mask.dims()
                    )));
                }
                let valid: Vec<bool> = read(mask, "attention_mask")?
                    .into_iter()
                    .map(|m| m != 0)
                    .collect();
                // An all-ones mask masks nothing.
                (!valid.iter().all(|&v| v)).then_some(valid)
            }
        };
        let invalid_before = key_valid.as_ref().map(|valid| {
            let mut out = Vec::with_capacity(batch * (kv + 1));
            for row in valid.chunks(kv) {
                let mut count = 0;
                out.push(0);
                for &v in row {
                    count += usize::from(!v);
                    out.push(count);
                }
            }
            out
        });
        let segments = match segment_ids {
            None => None,
            Some(seg) => {
                if past != 0 {
                    return Err(ModelError::Input(
                        "segment_ids cannot be combined with a non-empty KV cache".into(),
                    ));
                }
                if seg.dims() != [batch, seq] {
                    return Err(ModelError::Input(format!(
                        "segment_ids has shape {:?}, expected [batch {batch}, seq {seq}]",
                        seg.dims()
                    )));
                }
                Some(read(seg, "segment_ids")?)
            }
        };
        let segment_run_end = segments.as_ref().map(|seg| {
            let mut end = vec![0; batch * seq];
            for b in 0..batch {
                let row = &seg[b * seq..(b + 1) * seq];
                for i in (0..seq).rev() {
                    end[b * seq + i] = if i + 1 < seq && row[i + 1] == row[i] {
                        end[b * seq + i + 1]
                    } else {
                        i
                    };
                }
            }
            end
        });
        Ok(Self {
            batch,
            seq,
            past,
            key_valid,
            invalid_before,
            segments,
            segment_run_end,
            query_tile: DEFAULT_QUERY_TILE,
            key_tile: DEFAULT_KEY_TILE,
        })
    }

    /// The same mask with other tile sizes (each at least 1).
    #[must_use]
    pub fn with_tiles(mut self, query_tile: usize, key_tile: usize) -> Self {
        self.query_tile = query_tile.max(1);
        self.key_tile = key_tile.max(1);
        self
    }

    fn kv(&self) -> usize {
        self.past + self.seq
    }

    /// Whether query `i` (position `past + i`) of row `b` may attend key `j`.
    fn allowed(&self, b: usize, i: usize, j: usize, window: Option<usize>) -> bool {
        let p = self.past + i;
        if j > p || window.is_some_and(|w| j + w <= p) {
            return false;
        }
        if let Some(valid) = &self.key_valid
            && !valid[b * self.kv() + j]
        {
            return false;
        }
        if let Some(seg) = &self.segments {
            return seg[b * self.seq + i] == seg[b * self.seq + j];
        }
        true
    }

    /// Whether some query row may attend no key at all (the materialised path then gives it a
    /// uniform distribution over every key, so no tile may be skipped).
    fn has_empty_row(&self, window: Option<usize>) -> bool {
        if self.key_valid.is_none() {
            // Every query attends at least to itself.
            return false;
        }
        let kv = self.kv();
        for b in 0..self.batch {
            for i in 0..self.seq {
                let p = self.past + i;
                let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let empty = match (&self.segments, &self.invalid_before) {
                    (None, Some(inv)) => {
                        let row = &inv[b * (kv + 1)..(b + 1) * (kv + 1)];
                        row[p + 1] - row[lo] == p + 1 - lo
                    }
                    _ => !(lo..=p).rev().any(|j| self.allowed(b, i, j, window)),
                };
                if empty {
                    return true;
                }
            }
        }
        false
    }

    /// Whether causality or the window masks every pair of the tile.
    fn tile_skippable(&self, rows: (usize, usize), cols: (usize, usize), w: Option<usize>) -> bool {
        let (q_first, q_last) = (self.past + rows.0, self.past + rows.1 - 1);
        let (k_first, k_last) = (cols.0, cols.1 - 1);
        k_first > q_last || w.is_some_and(|w| k_last + w <= q_first)
    }

    /// Whether nothing in the tile is masked.
    fn tile_unmasked(&self, rows: (usize, usize), cols: (usize, usize), w: Option<usize>) -> bool {
        let (q_first, q_last) = (self.past + rows.0, self.past + rows.1 - 1);
        let (k_first, k_last) = (cols.0, cols.1 - 1);
        if k_last > q_first || w.is_some_and(|w| k_first + w <= q_last) {
            return false;
        }
        let kv = self.kv();
        if let Some(inv) = &self.invalid_before
            && (0..self.batch).any(|b| inv[b * (kv + 1) + cols.1] != inv[b * (kv + 1) + cols.0])
        {
            return false;
        }
        if let (Some(seg), Some(end)) = (&self.segments, &self.segment_run_end) {
            let s = self.seq;
            return (0..self.batch).all(|b| {
                seg[b * s + rows.0] == seg[b * s + cols.0]
                    && end[b * s + rows.0] >= rows.1 - 1
                    && end[b * s + cols.0] >= cols.1 - 1
            });
        }
        true
    }

    /// The additive bias `[batch, 1, 1, rows, cols]` of one tile, `None` when nothing in it is
    /// masked.
    fn tile_bias(
        &self,
        rows: (usize, usize),
        cols: (usize, usize),
        window: Option<usize>,
        device: &Device,
    ) -> Option<Tensor<5>> {
        if self.tile_unmasked(rows, cols, window) {
            return None;
        }
        let (tq, tk) = (rows.1 - rows.0, cols.1 - cols.0);
        let mut values = Vec::with_capacity(self.batch * tq * tk);
        for b in 0..self.batch {
            for i in rows.0..rows.1 {
                for j in cols.0..cols.1 {
                    values.push(if self.allowed(b, i, j, window) {
                        0.0f32
                    } else {
                        MASKED
                    });
                }
            }
        }
        Some(Tensor::from_data(
            TensorData::new(values, [self.batch, 1, 1, tq, tk]),
            (device, DType::F32),
        ))
    }

    /// The tiles of one attention call: query ranges, key ranges, and whether fully masked tiles
    /// may be skipped.
    fn plan(&self, window: Option<usize>) -> Plan {
        let ranges = |len: usize, tile: usize| {
            (0..len)
                .step_by(tile)
                .map(|s| (s, (s + tile).min(len)))
                .collect::<Vec<_>>()
        };
        Plan {
            rows: ranges(self.seq, self.query_tile),
            cols: ranges(self.kv(), self.key_tile),
            skip: !self.has_empty_row(window),
        }
    }
}

struct Plan {
    rows: Vec<(usize, usize)>,
    cols: Vec<(usize, usize)>,
    skip: bool,
}

/// Everything one tiled attention call needs besides queries, keys and values.
#[derive(Debug, Clone)]
struct Call {
    mask: Arc<TiledMask>,
    window: Option<usize>,
    scale: f64,
    /// `[batch, heads, seq, head_dim]` of the queries.
    q_dims: [usize; 4],
    /// `[batch, kv_heads, kv_len, head_dim]` of the keys.
    kv_dims: [usize; 4],
}

impl Call {
    fn group(&self) -> usize {
        self.q_dims[1] / self.kv_dims[1].max(1)
    }

    fn q5(&self, t: Tensor<4>) -> Tensor<5> {
        let [b, _, s, d] = self.q_dims;
        t.cast(DType::F32)
            .reshape([b, self.kv_dims[1], self.group(), s, d])
    }

    fn kv5(&self, t: Tensor<4>) -> Tensor<5> {
        t.cast(DType::F32).unsqueeze_dim(2)
    }
}

fn rows_of(t: &Tensor<5>, (r0, r1): (usize, usize)) -> Tensor<5> {
    let [b, h, g, _, d] = t.dims();
    t.clone().slice([0..b, 0..h, 0..g, r0..r1, 0..d])
}

/// The f32 output `[batch, kv_heads, group, seq, head_dim]`, row maxima and log row sums
/// `[batch, kv_heads, group, seq, 1]`.
fn forward_tiles(
    call: &Call,
    q: Tensor<5>,
    k: Tensor<5>,
    v: Tensor<5>,
) -> (Tensor<5>, Tensor<5>, Tensor<5>) {
    let plan = call.mask.plan(call.window);
    let device = q.device();
    let [b, h, g, _, d] = q.dims();
    let (mut outs, mut maxes, mut logsums) = (Vec::new(), Vec::new(), Vec::new());
    for &rows in &plan.rows {
        let tq = rows.1 - rows.0;
        let qi = rows_of(&q, rows);
        let mut m = Tensor::<5>::full([b, h, g, tq, 1], MASKED, (&device, DType::F32));
        let mut l = Tensor::<5>::zeros([b, h, g, tq, 1], (&device, DType::F32));
        let mut acc = Tensor::<5>::zeros([b, h, g, tq, d], (&device, DType::F32));
        for &cols in &plan.cols {
            if plan.skip && call.mask.tile_skippable(rows, cols, call.window) {
                continue;
            }
            let kj = rows_of(&k, cols);
            let vj = rows_of(&v, cols);
            let mut s = qi.clone().matmul(kj.swap_dims(3, 4)).mul_scalar(call.scale);
            if let Some(bias) = call.mask.tile_bias(rows, cols, call.window, &device) {
                s = s.add(bias);
            }
            let m_new = m.clone().max_pair(s.clone().max_dim(4));
            let p = s.sub(m_new.clone()).exp();
            let correction = m.sub(m_new.clone()).exp();
            l = l.mul(correction.clone()).add(p.clone().sum_dim(4));
            acc = acc.mul(correction).add(p.matmul(vj));
            m = m_new;
        }
        outs.push(acc.div(l.clone()));
        maxes.push(m);
        logsums.push(l.log());
    }
    (
        Tensor::cat(outs, 3),
        Tensor::cat(maxes, 3),
        Tensor::cat(logsums, 3),
    )
}

/// Saved for the backward pass: f32 queries `[b, kvh, g, s, d]`, keys and values
/// `[b, kvh, 1, kv, d]`, output, row maxima and log row sums.
#[derive(Debug, Clone)]
struct Saved {
    call: Call,
    q: Tensor<5>,
    k: Tensor<5>,
    v: Tensor<5>,
    out: Tensor<5>,
    max: Tensor<5>,
    logsum: Tensor<5>,
    dtypes: [DType; 3],
}

/// Gradients of queries, keys and values (f32, in the 5-D views) given the output's gradient.
fn backward_tiles(saved: &Saved, grad_out: Tensor<5>) -> (Tensor<5>, Tensor<5>, Tensor<5>) {
    let call = &saved.call;
    let plan = call.mask.plan(call.window);
    let device = saved.q.device();
    let [b, h, g, _, d] = saved.q.dims();
    let mut dk: Vec<Option<Tensor<5>>> = vec![None; plan.cols.len()];
    let mut dv: Vec<Option<Tensor<5>>> = vec![None; plan.cols.len()];
    let mut dqs = Vec::with_capacity(plan.rows.len());
    for &rows in &plan.rows {
        let tq = rows.1 - rows.0;
        let qi = rows_of(&saved.q, rows);
        let doi = rows_of(&grad_out, rows);
        let mi = rows_of(&saved.max, rows);
        let li = rows_of(&saved.logsum, rows);
        let di = doi.clone().mul(rows_of(&saved.out, rows)).sum_dim(4);
        let mut dqi = Tensor::<5>::zeros([b, h, g, tq, d], (&device, DType::F32));
        for (j, &cols) in plan.cols.iter().enumerate() {
            if plan.skip && call.mask.tile_skippable(rows, cols, call.window) {
                continue;
            }
            let kj = rows_of(&saved.k, cols);
            let vj = rows_of(&saved.v, cols);
            let mut s = qi
                .clone()
                .matmul(kj.clone().swap_dims(3, 4))
                .mul_scalar(call.scale);
            if let Some(bias) = call.mask.tile_bias(rows, cols, call.window, &device) {
                s = s.add(bias);
            }
            let p = s.sub(mi.clone()).sub(li.clone()).exp();
            let dv_part = p.clone().swap_dims(3, 4).matmul(doi.clone()).sum_dim(2);
            let dp = doi.clone().matmul(vj.swap_dims(3, 4));
            let ds = p.mul(dp.sub(di.clone()));
            dqi = dqi.add(ds.clone().matmul(kj).mul_scalar(call.scale));
            let dk_part = ds
                .swap_dims(3, 4)
                .matmul(qi.clone())
                .sum_dim(2)
                .mul_scalar(call.scale);
            dk[j] = Some(match dk[j].take() {
                Some(acc) => acc.add(dk_part),
                None => dk_part,
            });
            dv[j] = Some(match dv[j].take() {
                Some(acc) => acc.add(dv_part),
                None => dv_part,
            });
        }
        dqs.push(dqi);
    }
    let gather = |parts: Vec<Option<Tensor<5>>>| {
        let parts = parts
            .into_iter()
            .zip(&plan.cols)
            .map(|(part, &(c0, c1))| {
                part.unwrap_or_else(|| Tensor::zeros([b, h, 1, c1 - c0, d], (&device, DType::F32)))
            })
            .collect::<Vec<_>>();
        Tensor::cat(parts, 3)
    };
    (Tensor::cat(dqs, 3), gather(dk), gather(dv))
}

#[derive(Debug)]
struct TiledBackward;

impl Backward<Flex, 3> for TiledBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = Tensor::<4>::from_primitive::<Flex>(grads.consume::<Flex>(&ops.node));
        let saved = ops.state;
        let call = &saved.call;
        let grad = call.q5(grad);
        let (dq, dk, dv) = backward_tiles(&saved, grad);
        let [dq_t, dk_t, dv_t] = saved.dtypes;
        let parts = [
            (node_q, dq.reshape(call.q_dims).cast(dq_t)),
            (node_k, dk.reshape(call.kv_dims).cast(dk_t)),
            (node_v, dv.reshape(call.kv_dims).cast(dv_t)),
        ];
        for (node, g) in parts {
            if let Some(node) = node {
                let g = g
                    .try_into_primitive::<Flex>()
                    .expect("tiled attention gradients live on the flex backend");
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

/// The custom autodiff operation on `flex`; `None` when the tensors are not autodiff tensors of
/// the flex backend without Burn's own checkpointing (the caller then runs the tiles through
/// ordinary operations).
fn flex_autodiff(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, call: &Call) -> Option<Tensor<4>> {
    use burn::backend::GradientCheckpointingStrategy;
    if !q.is_autodiff()
        || q.gradient_checkpointing_strategy() != Some(GradientCheckpointingStrategy::Disabled)
    {
        return None;
    }
    let qa = q.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    let ka = k.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    let va = v.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    let inner = |t: &Tensor<4>| t.clone().inner();
    let (qi, ki, vi) = (call.q5(inner(q)), call.kv5(inner(k)), call.kv5(inner(v)));
    let out_dtype = v.dtype();
    let (out, max, logsum) = forward_tiles(call, qi.clone(), ki.clone(), vi.clone());
    let output = out
        .clone()
        .reshape(call.q_dims)
        .cast(out_dtype)
        .try_into_primitive::<Flex>()
        .ok()?;
    let result = match TiledBackward
        .prepare::<NoCheckpointing>([qa.node(), ka.node(), va.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                call: call.clone(),
                q: qi,
                k: ki,
                v: vi,
                out,
                max,
                logsum,
                dtypes: [q.dtype(), k.dtype(), v.dtype()],
            };
            prep.finish(saved, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex>>(result))
}

/// Scaled dot-product attention computed in tiles (see the module docs); equal to
/// [`scaled_dot_product_attention`](crate::attention::scaled_dot_product_attention) with the
/// bias of the same mask, within rounding. Scores and softmax in f32, output in the dtype of
/// `values`.
///
/// # Shapes
/// - queries: `[batch, heads, seq, head_dim]` (`batch`, `seq` as in `mask`)
/// - keys, values: `[batch, kv_heads, past + seq, head_dim]` (`heads` a multiple of `kv_heads`)
/// - output: `[batch, heads, seq, head_dim]`
///
/// # Errors
/// [`ModelError::Input`] when the shapes disagree with the mask or with each other.
pub fn tiled_attention(
    queries: Tensor<4>,
    keys: Tensor<4>,
    values: Tensor<4>,
    mask: &Arc<TiledMask>,
    window: Option<usize>,
    scale: f64,
) -> Result<Tensor<4>, ModelError> {
    let q_dims = queries.dims();
    let kv_dims = keys.dims();
    let [b, heads, s, d] = q_dims;
    let [kb, kvh, kv, kd] = kv_dims;
    if [b, s] != [mask.batch, mask.seq]
        || [kb, kv, kd] != [b, mask.kv(), d]
        || values.dims() != kv_dims
        || kvh == 0
        || !heads.is_multiple_of(kvh)
    {
        return Err(ModelError::Input(format!(
            "tiled attention: queries {q_dims:?}, keys {kv_dims:?}, values {:?} do not fit a \
             mask of batch {}, seq {}, past {}",
            values.dims(),
            mask.batch,
            mask.seq,
            mask.past
        )));
    }
    let call = Call {
        mask: Arc::clone(mask),
        window,
        scale,
        q_dims,
        kv_dims,
    };
    if let Some(out) = flex_autodiff(&queries, &keys, &values, &call) {
        return Ok(out);
    }
    let out_dtype = values.dtype();
    let (out, _, _) = forward_tiles(&call, call.q5(queries), call.kv5(keys), call.kv5(values));
    Ok(out.reshape(q_dims).cast(out_dtype))
}
