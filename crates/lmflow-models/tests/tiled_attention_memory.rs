//! Tiled attention keeps memory linear in the sequence: the bytes a tracked forward pass keeps
//! for the backward pass grow about 2x from 1,024 to 2,048 tokens, and a whole training step
//! (forward and backward) at 2,048 tokens never has as many bytes alive as one layer's
//! materialised `[heads, seq, seq]` f32 scores, which the materialised path keeps for every
//! layer (it exceeds the same bound). Bytes are counted by a global allocator.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_models::attention_tiled::AttentionImpl;
use lmflow_models::{CausalLm, ForwardInput, ModelConfig};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grow(new_size - layout.size());
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static SERIAL: Mutex<()> = Mutex::new(());

const HEADS: usize = 4;

fn model(attention: AttentionImpl, device: &Device) -> CausalLm {
    device.seed(3);
    let config = ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llama", "vocab_size": 64, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": HEADS,
            "num_key_value_heads": 2, "max_position_embeddings": 4096
        }),
        "config.json".as_ref(),
    )
    .unwrap();
    let mut model = CausalLm::from_config(&config, device).unwrap();
    model.set_attention_impl(attention).unwrap();
    // Draw the lazily initialised weights now, outside the measured region.
    let _ = model.forward(input(4, device), None).unwrap();
    model
}

fn input(seq: usize, device: &Device) -> ForwardInput {
    let ids: Vec<i64> = (0..seq as i64).map(|i| (i * 7 + 1) % 64).collect();
    ForwardInput::new(Tensor::<2, Int>::from_data(
        TensorData::new(ids, [1, seq]),
        device,
    ))
}

/// Bytes kept after a tracked forward pass (graph and logits alive), and the peak above the
/// starting point during forward and backward.
fn measure(attention: AttentionImpl, seq: usize) -> (usize, usize) {
    let device = Device::flex().autodiff();
    let model = model(attention, &device);
    let input = input(seq, &device);
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let logits = model.forward(input, None).unwrap().logits;
    let kept = CURRENT.load(Ordering::SeqCst).saturating_sub(base);
    let grads = logits.mul_scalar(0.01).sum().backward();
    let peak = PEAK.load(Ordering::SeqCst).saturating_sub(base);
    drop(grads);
    (kept, peak)
}

#[test]
fn tiled_attention_memory_grows_linearly() {
    let _guard = SERIAL.lock().unwrap();
    let (kept_1k, _) = measure(AttentionImpl::Tiled, 1024);
    let (kept_2k, peak_2k) = measure(AttentionImpl::Tiled, 2048);
    // One layer's f32 scores at 2,048 tokens: 4 heads x 2048 x 2048 x 4 bytes = 64 MiB.
    let scores = HEADS * 2048 * 2048 * 4;
    eprintln!(
        "tiled: kept {kept_1k} B at 1024, {kept_2k} B at 2048; step peak {peak_2k} B; \
         one layer's scores {scores} B"
    );
    assert!(
        (kept_2k as f64) < 2.3 * kept_1k as f64,
        "kept bytes grow faster than linearly: {kept_1k} -> {kept_2k}"
    );
    assert!(peak_2k < scores / 2, "step peak {peak_2k} B");
}

#[test]
fn materialised_attention_exceeds_the_bound() {
    let _guard = SERIAL.lock().unwrap();
    let (kept_1k, _) = measure(AttentionImpl::Eager, 1024);
    let (kept_2k, peak_2k) = measure(AttentionImpl::Eager, 2048);
    let scores = HEADS * 2048 * 2048 * 4;
    eprintln!("eager: kept {kept_1k} B at 1024, {kept_2k} B at 2048; step peak {peak_2k} B");
    assert!(kept_2k > 3 * kept_1k, "{kept_1k} -> {kept_2k}");
    assert!(kept_2k > scores, "kept {kept_2k} B");
}
