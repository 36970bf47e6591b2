//! Data-parallel training: the gradient-synchronisation seam of the training loop.
//!
//! Every rank (a process, or a thread driving one device) runs the same loop on its own shard of
//! the data. Once per optimizer step — after the backward passes of all its micro-batches and
//! before gradient clipping and the optimizer step — the loop hands the accumulated gradients to
//! a [`GradientSync`], which sums them over the ranks. Every rank then clips and steps with the
//! same gradients and keeps the same weights.
//!
//! # What is summed, and why the result equals one process on the union of the shards
//! The loss of an optimizer step is a weighted mean over all its items (trained tokens for
//! supervised fine-tuning): `Σ_items loss / Σ_items weight`. Each rank knows only its own items,
//! so the loop first all-reduces the *weights* of the step (one number), differentiates its local
//! loss sum scaled by `1 / global weight`, and [`all_reduce_gradients`] then *sums* the
//! gradients. The sum of the ranks' `∂(local sum)/∂θ / global weight` is exactly the gradient of
//! the single-process step over all items; no rank's tokens count more than another's.
//!
//! # Layout of the reduced buffers
//! The trainable parameters are visited in module order (identical on every rank), each
//! gradient flattened and cast to f32, and packed into a few large host buffers
//! ([`BUCKET_ELEMENTS`] elements or one whole parameter, whichever is larger). A parameter that
//! received no gradient on a rank contributes zeros and a presence flag of 0; after the
//! reduction a parameter gets a gradient when any rank produced one, so every rank hands the
//! optimizer the same set.
//!
//! # Implementations
//! - [`SingleProcess`]: world size 1, nothing to do (the default of the trainer);
//! - [`ThreadGroup`]: N ranks as threads of one process, averaging through shared memory — one
//!   thread per device on a single node, and the CPU tests;
//! - `MpiSync` (cargo feature `mpi`): one process per rank launched by `mpirun`/`srun`,
//!   `MPI_Allreduce` of the host buffers.
//!
//! Data sharding ([`shard_range`]) and the per-rank dropout seed ([`rank_seed`]) live here too;
//! see `docs/distributed.md` for launching and the scaling arithmetic.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};

use crate::error::{Result, TrainError};

#[cfg(feature = "mpi")]
mod mpi_sync;
#[cfg(feature = "mpi")]
pub use mpi_sync::{MpiSync, abort_world};

/// Elements of f32 per reduced buffer (a parameter larger than this gets a buffer of its own):
/// 32 Mi elements = 128 MiB, large enough for full bandwidth, small enough to stage on the host.
pub const BUCKET_ELEMENTS: usize = 32 << 20;

/// Collective operations among the ranks of a data-parallel run.
///
/// Every rank must call the same operations in the same order with buffers of the same length
/// (the training loop guarantees it); an implementation blocks until all ranks have called.
pub trait GradientSync {
    /// This rank, `0..world_size()`. Rank 0 writes checkpoints, metrics and progress.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces `buf` on every rank by the element-wise sum over all ranks.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Replaces `buf` on every rank by the element-wise sum over all ranks (token counts, loss
    /// sums, checks).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Copies `buf` of rank `root` into `buf` on every rank.
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// A short name for logs (`single`, `threads`, `mpi`).
    fn kind(&self) -> &'static str;
    /// Whether this rank is rank 0.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// The one-process "group": world size 1, every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl GradientSync for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "single"
    }
}

// ---------------------------------------------------------------------------------------------
// In-process group: ranks as threads.

/// N ranks as threads of one process, reducing through shared host memory.
///
/// [`ThreadGroup::new`] returns one [`ThreadRank`] per rank; move each into its thread. Sums are
/// computed in rank order, so every rank receives bit-identical results, and the work is split:
/// rank `r` adds up the `r`-th slice of the buffers (reduce-scatter), then every rank copies all
/// slices (all-gather). A rank that is dropped while others wait in a collective (because its
/// thread failed) makes their collective fail instead of hanging.
#[derive(Debug)]
pub struct ThreadGroup;

impl ThreadGroup {
    /// The `world_size` ranks of a new group (`world_size ≥ 1`).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world_size: usize) -> Vec<ThreadRank> {
        let world_size = world_size.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(GroupState {
                arrived: 0,
                generation: 0,
                departed: None,
                f32_in: vec![None; world_size],
                f32_out: vec![None; world_size],
                f64_in: vec![None; world_size],
            }),
            wake: Condvar::new(),
            world_size,
        });
        (0..world_size)
            .map(|rank| ThreadRank {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One rank of a [`ThreadGroup`].
#[derive(Debug)]
pub struct ThreadRank {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<GroupState>,
    wake: Condvar,
    world_size: usize,
}

#[derive(Debug)]
struct GroupState {
    arrived: usize,
    generation: u64,
    /// A rank that left the group (its thread ended, normally or not).
    departed: Option<usize>,
    f32_in: Vec<Option<Arc<Vec<f32>>>>,
    f32_out: Vec<Option<Arc<Vec<f32>>>>,
    f64_in: Vec<Option<Arc<Vec<f64>>>>,
}

impl ThreadRank {
    fn lock(&self) -> Result<MutexGuard<'_, GroupState>> {
        self.shared
            .state
            .lock()
            .map_err(|_| self.error("a rank panicked inside a collective"))
    }

    fn error(&self, message: impl Into<String>) -> TrainError {
        TrainError::Distributed {
            rank: self.rank,
            message: message.into(),
        }
    }

    /// Waits until every rank has reached this barrier.
    fn barrier<'a>(
        &'a self,
        mut state: MutexGuard<'a, GroupState>,
    ) -> Result<MutexGuard<'a, GroupState>> {
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == self.shared.world_size {
            state.arrived = 0;
            state.generation += 1;
            self.shared.wake.notify_all();
            return Ok(state);
        }
        loop {
            if let Some(gone) = state.departed {
                return Err(self.error(format!(
                    "rank {gone} left the group while this rank waited in a collective (it \
                     failed; see its error)"
                )));
            }
            state = self
                .shared
                .wake
                .wait(state)
                .map_err(|_| self.error("a rank panicked inside a collective"))?;
            if state.generation != generation {
                return Ok(state);
            }
        }
    }

    fn slice_of(&self, len: usize, rank: usize) -> Range<usize> {
        let per = len.div_ceil(self.shared.world_size);
        (rank * per).min(len)..((rank + 1) * per).min(len)
    }
}

impl Drop for ThreadRank {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.departed.get_or_insert(self.rank);
            self.shared.wake.notify_all();
        }
    }
}

impl GradientSync for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world_size
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let world = self.shared.world_size;
        if world == 1 {
            return Ok(());
        }
        let mut state = self.lock()?;
        state.f32_in[self.rank] = Some(Arc::new(buf.to_vec()));
        let state = self.barrier(state)?;
        let inputs: Vec<Arc<Vec<f32>>> = state.f32_in.iter().flatten().cloned().collect();
        drop(state);
        if inputs.len() != world || inputs.iter().any(|b| b.len() != buf.len()) {
            return Err(self.error(
                "ranks reduced buffers of different lengths (they train different parameters)",
            ));
        }
        // Reduce-scatter: this rank sums its slice, in rank order.
        let mine = self.slice_of(buf.len(), self.rank);
        let mut part = inputs[0][mine.clone()].to_vec();
        for input in &inputs[1..] {
            for (acc, x) in part.iter_mut().zip(&input[mine.clone()]) {
                *acc += x;
            }
        }
        drop(inputs);
        let mut state = self.lock()?;
        state.f32_out[self.rank] = Some(Arc::new(part));
        let state = self.barrier(state)?;
        // All-gather.
        let outputs: Vec<Arc<Vec<f32>>> = state.f32_out.iter().flatten().cloned().collect();
        drop(state);
        if outputs.len() != world {
            return Err(self.error("a rank's reduced slice is missing"));
        }
        for (rank, part) in outputs.iter().enumerate() {
            let range = self.slice_of(buf.len(), rank);
            buf[range].copy_from_slice(part);
        }
        drop(outputs);
        // Slots are cleared only once every rank has read them.
        let state = self.lock()?;
        let mut state = self.barrier(state)?;
        state.f32_in[self.rank] = None;
        state.f32_out[self.rank] = None;
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let world = self.shared.world_size;
        if world == 1 {
            return Ok(());
        }
        let mut state = self.lock()?;
        state.f64_in[self.rank] = Some(Arc::new(buf.to_vec()));
        let state = self.barrier(state)?;
        let inputs: Vec<Arc<Vec<f64>>> = state.f64_in.iter().flatten().cloned().collect();
        drop(state);
        if inputs.len() != world || inputs.iter().any(|b| b.len() != buf.len()) {
            return Err(self.error("ranks reduced buffers of different lengths"));
        }
        buf.fill(0.0);
        for input in &inputs {
            for (acc, x) in buf.iter_mut().zip(input.iter()) {
                *acc += x;
            }
        }
        drop(inputs);
        let state = self.lock()?;
        let mut state = self.barrier(state)?;
        state.f64_in[self.rank] = None;
        Ok(())
    }

    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        if self.shared.world_size == 1 {
            return Ok(());
        }
        if root >= self.shared.world_size {
            return Err(self.error(format!("broadcast from rank {root}, which does not exist")));
        }
        let mut state = self.lock()?;
        if self.rank == root {
            state.f32_in[root] = Some(Arc::new(buf.to_vec()));
        }
        let state = self.barrier(state)?;
        let source = state.f32_in[root].clone();
        drop(state);
        match source {
            Some(src) if src.len() == buf.len() => {
                if self.rank != root {
                    buf.copy_from_slice(&src);
                }
            }
            _ => return Err(self.error("broadcast buffers of different lengths")),
        }
        let state = self.lock()?;
        let mut state = self.barrier(state)?;
        if self.rank == root {
            state.f32_in[root] = None;
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "threads"
    }
}

// ---------------------------------------------------------------------------------------------
// Flattening gradients and parameters.

/// One trainable parameter in module order.
struct Slot {
    elements: usize,
    dims: Vec<usize>,
    dtype: DType,
}

/// Collects the trainable parameters' flattened, f32 gradients (zeros where absent).
struct GradGather<'a> {
    grads: &'a mut GradientsParams,
    slots: Vec<Slot>,
    flat: Vec<Tensor<1>>,
    present: Vec<f32>,
}

impl ModuleVisitor for GradGather<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        let dims = value.dims().to_vec();
        let elements: usize = dims.iter().product();
        let (grad, present) = match self.grads.remove::<D>(param.id) {
            Some(g) => (g, 1.0),
            None => (value.inner().zeros_like(), 0.0),
        };
        self.slots.push(Slot {
            elements,
            dims,
            dtype: grad.dtype(),
        });
        self.flat
            .push(grad.reshape([elements]).cast(FloatDType::F32));
        self.present.push(present);
    }
}

/// Registers the reduced gradients back, in the same module order.
struct GradScatter<'a> {
    grads: &'a mut GradientsParams,
    reduced: std::vec::IntoIter<Option<Tensor<1>>>,
    slots: std::slice::Iter<'a, Slot>,
}

impl ModuleVisitor for GradScatter<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.val().is_require_grad() {
            return;
        }
        let (Some(Some(flat)), Some(slot)) = (self.reduced.next(), self.slots.next()) else {
            return;
        };
        let dims: [usize; D] = match slot.dims.clone().try_into() {
            Ok(d) => d,
            Err(_) => return,
        };
        let mut grad = flat.reshape(dims);
        if slot.dtype != DType::F32 {
            grad = grad.cast(slot.dtype);
        }
        self.grads.register(param.id, grad);
    }
}

/// Index ranges of the buckets over `sizes` (consecutive parameters, each bucket at least one
/// parameter and at most [`BUCKET_ELEMENTS`] elements unless one parameter is larger).
fn buckets(sizes: &[usize]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut filled) = (0, 0usize);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && filled + n > BUCKET_ELEMENTS {
            out.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

fn read_f32(t: Tensor<1>) -> Result<Vec<f32>> {
    t.try_into_data()
        .map_err(|e| TrainError::Config(format!("cannot read a gradient back to the host: {e}")))?
        .try_into_vec_as::<f32>()
        .map_err(|e| TrainError::Config(format!("cannot convert a gradient to f32: {e:?}")))
}

/// Sums the gradients of the trainable parameters of `model` over all ranks of `sync`, in place
/// of `grads` (see the [module documentation](self) for the layout and why a sum).
///
/// With a world size of 1 `grads` is returned untouched. Every rank must call this with the
/// same model structure and the same set of trainable parameters.
pub fn all_reduce_gradients<M: Module>(
    model: &M,
    mut grads: GradientsParams,
    sync: &dyn GradientSync,
) -> Result<GradientsParams> {
    if sync.world_size() == 1 {
        return Ok(grads);
    }
    let mut gather = GradGather {
        grads: &mut grads,
        slots: Vec::new(),
        flat: Vec::new(),
        present: Vec::new(),
    };
    model.visit(&mut gather);
    let GradGather {
        slots,
        flat,
        mut present,
        ..
    } = gather;
    sync.all_reduce_sum_f32(&mut present)?;
    let sizes: Vec<usize> = slots.iter().map(|s| s.elements).collect();
    let mut flat: Vec<Option<Tensor<1>>> = flat.into_iter().map(Some).collect();
    let mut reduced: Vec<Option<Tensor<1>>> = vec![None; slots.len()];
    for bucket in buckets(&sizes) {
        let parts: Vec<Tensor<1>> = bucket.clone().filter_map(|i| flat[i].take()).collect();
        let Some(device) = parts.first().map(|p| p.device()) else {
            continue;
        };
        let joined = Tensor::cat(parts, 0);
        let mut host = read_f32(joined)?;
        sync.all_reduce_sum_f32(&mut host)?;
        let len = host.len();
        let joined = Tensor::<1>::from_data(TensorData::new(host, [len]), &device);
        let mut offset = 0;
        for i in bucket {
            let n = sizes[i];
            if present[i] > 0.0 {
                reduced[i] = Some(joined.clone().slice(offset..offset + n));
            }
            offset += n;
        }
    }
    model.visit(&mut GradScatter {
        grads: &mut grads,
        reduced: reduced.into_iter(),
        slots: slots.iter(),
    });
    Ok(grads)
}

/// Collects the trainable parameters' values, flattened to f32.
struct ValueGather {
    flat: Vec<Tensor<1>>,
}

impl ModuleVisitor for ValueGather {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if value.is_require_grad() {
            let n = value.shape().num_elements();
            self.flat
                .push(value.inner().reshape([n]).cast(FloatDType::F32));
        }
    }
}

/// Replaces the trainable parameters' values by the received ones, in module order.
struct ValueScatter {
    values: std::vec::IntoIter<Vec<f32>>,
}

impl ModuleMapper for ValueScatter {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !param.val().is_require_grad() {
            return param;
        }
        let Some(values) = self.values.next() else {
            return param;
        };
        param.map(|t| {
            let (device, dtype, dims) = (t.device(), t.dtype(), t.dims());
            let mut fresh = Tensor::<D>::from_data(TensorData::new(values, dims), &device);
            if dtype != DType::F32 {
                fresh = fresh.cast(dtype);
            }
            fresh.set_require_grad(true)
        })
    }
}

/// Copies the trainable parameters of rank 0 to every rank (as PyTorch's DDP does when it wraps
/// a model), so that ranks start from identical weights even when their random initialisation
/// (adapters) could differ. Frozen parameters are not sent: every rank loads them from the same
/// files.
pub fn broadcast_trainable<M: Module>(model: M, sync: &dyn GradientSync) -> Result<M> {
    if sync.world_size() == 1 {
        return Ok(model);
    }
    let mut gather = ValueGather { flat: Vec::new() };
    model.visit(&mut gather);
    let sizes: Vec<usize> = gather.flat.iter().map(|t| t.dims()[0]).collect();
    let mut flat: Vec<Option<Tensor<1>>> = gather.flat.into_iter().map(Some).collect();
    let mut values: Vec<Vec<f32>> = Vec::with_capacity(sizes.len());
    for bucket in buckets(&sizes) {
        let parts: Vec<Tensor<1>> = bucket.clone().filter_map(|i| flat[i].take()).collect();
        let mut host = read_f32(Tensor::cat(parts, 0))?;
        sync.broadcast_f32(&mut host, 0)?;
        let mut offset = 0;
        for i in bucket {
            values.push(host[offset..offset + sizes[i]].to_vec());
            offset += sizes[i];
        }
    }
    Ok(model.map(&mut ValueScatter {
        values: values.into_iter(),
    }))
}

/// Names and shapes of the trainable parameters, hashed: equal on ranks that train the same
/// parameters.
struct LayoutHash {
    path: Vec<String>,
    hash: u64,
}

impl ModuleVisitor for LayoutHash {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if value.is_require_grad() {
            self.hash = fnv1a(self.hash, self.path.join(".").as_bytes());
            for d in value.dims() {
                self.hash = fnv1a(self.hash, &(d as u64).to_le_bytes());
            }
        }
    }
}

/// 64-bit FNV-1a, continuing from `hash`.
pub(crate) fn fnv1a(mut hash: u64, data: &[u8]) -> u64 {
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// FNV-1a offset basis.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Hash of the names and shapes of the trainable parameters of `model`.
pub fn trainable_layout_hash<M: Module>(model: &M) -> u64 {
    let mut v = LayoutHash {
        path: Vec::new(),
        hash: FNV_OFFSET,
    };
    model.visit(&mut v);
    v.hash
}

/// Checks that every rank holds the same `value` (a hash, a count, a step), failing with a
/// message naming `what` and each rank's value otherwise. A collective: every rank calls it.
pub fn agree(sync: &dyn GradientSync, what: &str, value: u64) -> Result<()> {
    let values = gather_u64(sync, value)?;
    if values.iter().any(|&v| v != values[0]) {
        let list: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(rank, v)| format!("rank {rank}: {v}"))
            .collect();
        return Err(TrainError::Distributed {
            rank: sync.rank(),
            message: format!(
                "the ranks disagree on {what} ({}); every rank must run the same command on \
                 the same files",
                list.join(", ")
            ),
        });
    }
    Ok(())
}

/// Whether every rank holds the same `value` (a collective, like [`agree`], that only reports).
pub fn same_everywhere(sync: &dyn GradientSync, value: u64) -> Result<bool> {
    let values = gather_u64(sync, value)?;
    Ok(values.iter().all(|&v| v == value))
}

/// Every rank's `value`, in rank order: an all-gather through a sum, each rank filling its own
/// slots with two exact 32-bit halves.
fn gather_u64(sync: &dyn GradientSync, value: u64) -> Result<Vec<u64>> {
    let world = sync.world_size();
    if world == 1 {
        return Ok(vec![value]);
    }
    let mut slots = vec![0.0f64; 2 * world];
    let r = sync.rank();
    slots[2 * r] = (value >> 32) as f64;
    slots[2 * r + 1] = (value & 0xffff_ffff) as f64;
    sync.all_reduce_sum_f64(&mut slots)?;
    Ok(slots
        .chunks(2)
        .map(|c| ((c[0] as u64) << 32) | (c[1] as u64))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Data sharding and seeds.

/// Micro-batches per epoch of a data-parallel run: the epoch's shuffled rows are cut into
/// global micro-batches of `world_size × batch` rows (the last one may be short).
pub fn micro_batches_per_epoch(rows: usize, batch: usize, world_size: usize) -> usize {
    rows.div_ceil((batch * world_size).max(1))
}

/// Positions (into an epoch's shuffled order) of the rows rank `rank` trains in global
/// micro-batch `micro`: the `rank`-th block of `batch` rows of the global micro-batch. Ranks get
/// disjoint positions whose union is the global micro-batch, so a run on `W` ranks with batch
/// `B` sees exactly the rows a single process with batch `W × B` sees. A rank may get fewer
/// rows, or none, in the last (short) micro-batch of an epoch.
pub fn shard_range(
    rows: usize,
    batch: usize,
    world_size: usize,
    rank: usize,
    micro: usize,
) -> Range<usize> {
    let start = micro * batch * world_size + rank * batch;
    start.min(rows)..(start + batch).min(rows)
}

/// The backend seed of `rank` at optimizer step `step` of a run seeded with `seed`: rank 0 keeps
/// the single-process seed, other ranks get distinct streams (dropout masks differ per rank, as
/// in DDP, and repeat on a resume).
pub fn rank_seed(seed: u64, step: usize, rank: usize) -> u64 {
    seed.wrapping_add(step as u64)
        .wrapping_add((rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_and_cover_each_global_batch() {
        for (rows, batch, world) in [(10, 4, 2), (7, 2, 3), (12, 3, 4), (5, 8, 2)] {
            let micro = micro_batches_per_epoch(rows, batch, world);
            let mut seen = vec![0u32; rows];
            for m in 0..micro {
                let global = (m * batch * world)..((m + 1) * batch * world).min(rows);
                for r in 0..world {
                    let s = shard_range(rows, batch, world, r, m);
                    assert!(s.start >= global.start && s.end <= global.end);
                    for i in s {
                        seen[i] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&c| c == 1),
                "{rows} {batch} {world}: {seen:?}"
            );
        }
    }

    #[test]
    fn buckets_keep_parameters_whole() {
        let b = buckets(&[10, BUCKET_ELEMENTS, 5, 6]);
        assert_eq!(b, vec![0..1, 1..2, 2..4]);
        assert!(buckets(&[]).is_empty());
    }

    #[test]
    fn thread_group_sums_broadcasts_and_agrees() {
        let ranks = ThreadGroup::new(3);
        let results: Vec<(Vec<f32>, Vec<f64>, Vec<f32>)> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .into_iter()
                .map(|rank| {
                    s.spawn(move || {
                        let r = rank.rank() as f32;
                        let mut a: Vec<f32> = (0..7).map(|i| i as f32 + 10.0 * r).collect();
                        rank.all_reduce_sum_f32(&mut a).unwrap();
                        let mut b = vec![f64::from(r); 2];
                        rank.all_reduce_sum_f64(&mut b).unwrap();
                        let mut c = vec![r; 3];
                        rank.broadcast_f32(&mut c, 1).unwrap();
                        agree(&rank, "a test value", 0xdead_beef_1234).unwrap();
                        (a, b, c)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (a, b, c) in results {
            let want: Vec<f32> = (0..7).map(|i| 3.0 * i as f32 + 30.0).collect();
            assert_eq!(a, want);
            assert_eq!(b, vec![3.0, 3.0]);
            assert_eq!(c, vec![1.0; 3]);
        }
    }

    #[test]
    fn disagreement_is_reported_and_a_failed_rank_does_not_hang_the_others() {
        let ranks = ThreadGroup::new(2);
        let errors: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .into_iter()
                .map(|rank| {
                    s.spawn(move || {
                        let v = 7 + rank.rank() as u64;
                        let e = agree(&rank, "the training rows", v).unwrap_err();
                        if rank.rank() == 1 {
                            // Rank 1 gives up; rank 0's next collective must fail, not hang.
                            drop(rank);
                            return e.to_string();
                        }
                        let mut x = [1.0f32];
                        let e2 = rank.all_reduce_sum_f32(&mut x).unwrap_err();
                        format!("{e} | {e2}")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(errors[0].contains("the training rows"), "{}", errors[0]);
        assert!(errors[0].contains("rank 1: 8)"), "{}", errors[0]);
        assert!(errors[0].contains("rank 1 left the group"), "{}", errors[0]);
        assert!(errors[1].contains("rank 0: 7"), "{}", errors[1]);
    }
}
