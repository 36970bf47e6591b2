//! Full fine-tuning and LISA keep one copy of the weights: the model handed to
//! [`Trainer::train`] is updated in place of its old tensors (each optimizer step replaces a
//! parameter and drops the old one), so the bytes alive after every step are the weights plus
//! the optimizer moments and nothing of the size of a second model. Bytes are counted by a
//! global allocator.
//!
//! Each bound is shown to be one a second copy breaks: the same run while the caller keeps a
//! clone of the model (as `finetune` once kept the loaded model next to the trained one)
//! exceeds it, because every updated parameter then stays alive twice.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::Device;
use lmflow_models::{CausalLm, ModelConfig};
use lmflow_optim::schedule::ScheduleKind;
use lmflow_train::{
    FullModelWeights, IGNORE_INDEX, TokenizedSample, TrainEvent, Trainer, TrainerConfig,
};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CURRENT.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        CURRENT.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed);
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

/// The tests of this file measure the whole process: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const VOCAB: usize = 1024;
const HIDDEN: usize = 64;
const INTERMEDIATE: usize = 192;
const LAYERS: usize = 6;
const KV_DIM: usize = HIDDEN / 2; // 2 of 4 heads

/// f32 bytes of one decoder layer: q, k, v, o, gate, up, down and two norms.
const LAYER_BYTES: usize =
    4 * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_DIM + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN);
/// f32 bytes of the embedding table and of the (untied) head.
const TABLE_BYTES: usize = 4 * VOCAB * HIDDEN;
/// f32 bytes of every weight.
const WEIGHT_BYTES: usize = 2 * TABLE_BYTES + LAYERS * LAYER_BYTES + 4 * HIDDEN;

fn model_config() -> ModelConfig {
    ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llama", "vocab_size": VOCAB, "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
            "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "tie_word_embeddings": false
        }),
        "config.json".as_ref(),
    )
    .unwrap()
}

fn samples() -> Vec<TokenizedSample> {
    (0..16)
        .map(|start| {
            let ids: Vec<u32> = (0..12)
                .map(|i| 1 + ((start * 37 + i * 11) % 1000) as u32)
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < 2 { IGNORE_INDEX } else { t as i64 })
                .collect();
            TokenizedSample {
                original_len: ids.len(),
                input_ids: ids,
                labels,
                truncated: false,
                target_lost: false,
            }
        })
        .collect()
}

fn trainer_config(dir: &std::path::Path, lisa: Option<usize>) -> TrainerConfig {
    TrainerConfig {
        output_dir: dir.to_path_buf(),
        learning_rate: 1e-3,
        max_steps: Some(6),
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 1,
        lr_scheduler_type: ScheduleKind::Constant,
        logging_steps: 1000,
        save_steps: 1000,
        save_total_limit: 0,
        lisa_activated_layers: lisa,
        // LISA draws new layers at steps 0, 2 and 4: the bound must hold across switches
        // (the moments of layers switched off are freed).
        lisa_interval_steps: 2,
        ..TrainerConfig::default()
    }
}

/// Trains 6 steps and returns the bytes alive after each step, counted from before the
/// model was built. With `keep_clone`, the caller holds a clone of the model meanwhile.
fn alive_after_steps(lisa: Option<usize>, keep_clone: bool) -> Vec<usize> {
    let device = Device::flex().autodiff();
    device.seed(5);
    let data = samples();
    let io = FullModelWeights::new(model_config(), device.clone());
    let dir = tempfile::tempdir().unwrap();
    let trainer = Trainer::new(trainer_config(dir.path(), lisa), device.clone(), 0).unwrap();
    let base = CURRENT.load(Ordering::SeqCst);
    let model = CausalLm::from_config(&model_config(), &device).unwrap();
    // Draw every (lazily initialised) parameter now, so that a clone shares real tensors.
    drop(model.state_dict());
    let held = keep_clone.then(|| model.clone());
    let mut alive = Vec::new();
    let outcome = trainer
        .train(model, &io, &data, None, &mut |event| {
            if let TrainEvent::Step { .. } = event {
                alive.push(CURRENT.load(Ordering::SeqCst).saturating_sub(base));
            }
        })
        .unwrap();
    assert_eq!(outcome.state.global_step, 6);
    drop(held);
    alive
}

/// Bytes alive do not grow from step to step (by more than a few small records).
fn assert_steady(alive: &[usize]) {
    let (lo, hi) = (alive.iter().min().unwrap(), alive.iter().max().unwrap());
    assert!(
        hi - lo < 16 * 1024,
        "bytes alive grew over the run: {alive:?}"
    );
}

/// The first training run of a thread allocates lasting backend state: about 2.2 MB here,
/// the same for a model twice as deep or with four times the vocabulary, and still alive
/// after the model and the optimizer are dropped (so not a copy of any weight). Allocate it
/// before measuring.
fn warm_up() {
    let _ = alive_after_steps(Some(2), false);
    let _ = alive_after_steps(None, false);
}

#[test]
fn full_fine_tuning_keeps_one_copy_of_the_weights() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Weights once plus AdamW's two moments per weight, plus the run's own small state (data
    // rows, RoPE tables, metric windows: about 0.23 MB measured): under half a model.
    let bound = 3 * WEIGHT_BYTES + WEIGHT_BYTES / 2;
    warm_up();
    let alive = alive_after_steps(None, false);
    eprintln!("full: weights {WEIGHT_BYTES} B, alive after each step {alive:?}, bound {bound}");
    for (step, &bytes) in alive.iter().enumerate() {
        assert!(
            bytes >= 3 * WEIGHT_BYTES,
            "step {}: {bytes} B alive, less than weights + moments",
            step + 1
        );
        assert!(
            bytes < bound,
            "step {}: {bytes} B alive after a full fine-tuning step; bound {bound} (weights \
             {WEIGHT_BYTES} B: a second copy would add that much)",
            step + 1
        );
    }
    assert_steady(&alive);
    // A second copy of the weights (a clone kept by the caller) breaks the bound.
    let cloned = alive_after_steps(None, true);
    eprintln!("full with a clone kept: {cloned:?}");
    assert!(
        cloned.iter().all(|&b| b >= bound),
        "with a second copy alive the bound {bound} should fail: {cloned:?}"
    );
}

#[test]
fn lisa_keeps_one_copy_of_the_weights() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Always trained: embedding, head and the final norm; plus 2 active layers.
    let trained = 2 * TABLE_BYTES + 4 * HIDDEN + 2 * LAYER_BYTES;
    // Weights once, AdamW moments for the trained parameters only, and the run's own small
    // state (data rows, RoPE tables, metric windows: about 0.23 MB measured, the same in
    // both tests and at every step).
    let bound = WEIGHT_BYTES + 2 * trained + trained / 2;
    warm_up();
    let alive = alive_after_steps(Some(2), false);
    eprintln!(
        "lisa: weights {WEIGHT_BYTES} B, trained {trained} B, alive {alive:?}, bound {bound}"
    );
    for (step, &bytes) in alive.iter().enumerate() {
        assert!(
            bytes >= WEIGHT_BYTES + 2 * trained,
            "step {}: {bytes} B alive, less than weights + moments",
            step + 1
        );
        assert!(
            bytes < bound,
            "step {}: {bytes} B alive after a LISA step; bound {bound} (weights \
             {WEIGHT_BYTES} B, trained {trained} B)",
            step + 1
        );
    }
    // Layers switched off free their moments: nothing accumulates across the switches.
    assert_steady(&alive);
    // A clone kept by the caller holds the old value of every parameter LISA has updated
    // (at least the trained set: more than the bound's slack).
    let cloned = alive_after_steps(Some(2), true);
    eprintln!("lisa with a clone kept: {cloned:?}");
    assert!(
        cloned.iter().all(|&b| b >= bound),
        "with a second copy alive the bound {bound} should fail: {cloned:?}"
    );
}
