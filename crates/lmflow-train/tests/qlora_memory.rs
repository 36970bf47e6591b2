//! QLoRA holds only NF4 weights: a training step with activation checkpointing never has the
//! dequantised (f32) weights of more than one decoder layer alive, so the bytes allocated
//! during the step (one layer's dequantisation temporaries, activations, adapter gradients;
//! independent of depth) stay below a third of the f32 weights of this 12-layer model — which the same step without
//! checkpointing exceeds (Burn's autodiff keeps every dequantised weight for the backward
//! pass). Bytes are counted by a global allocator.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_models::{CausalLm, ForwardInput, ModelConfig};
use lmflow_peft::{LinearVisitor, LoraConfig, Nf4Config, TargetModules, get_peft_model};
use lmflow_train::loss::{checkpointed_lm_loss_backward, chunked_lm_loss_backward};

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

/// Bytes alive now, and the most bytes alive above `now` while `f` runs.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    let peak = PEAK.load(Ordering::SeqCst);
    (out, base, peak.saturating_sub(base))
}

const HIDDEN: usize = 256;
const INTERMEDIATE: usize = 768;
const LAYERS: usize = 12;
/// f32 bytes of the decoder's linear weights (q, k, v, o with 2 of 4 KV heads; gate, up, down).
const F32_LINEAR_BYTES: usize =
    4 * LAYERS * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * HIDDEN / 2 + 3 * HIDDEN * INTERMEDIATE);

fn qlora_model(device: &Device) -> CausalLm {
    device.seed(3);
    let config = ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llama", "vocab_size": 128, "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
            "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": false
        }),
        "config.json".as_ref(),
    )
    .unwrap();
    // Parameters are drawn lazily: each linear exists in f32 only until it is quantised.
    let mut base = CausalLm::from_config(&config, device).unwrap();
    let nf4 = Nf4Config::new();
    base.visit_linears_mut(&mut |path, lin| {
        if path != "lm_head" {
            lin.quantize_nf4(&nf4);
        }
    });
    let lora = LoraConfig::new(8, 16.0, TargetModules::Pattern("all-linear".into()));
    get_peft_model(base.no_grad(), &lora, "default").unwrap().0
}

fn batch(device: &Device) -> (ForwardInput, Tensor<2, Int>) {
    let ids: Vec<i64> = (0..32).map(|i| (i * 29 + 3) % 128).collect();
    let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 32]), device);
    (ForwardInput::new(t.clone()), t)
}

#[test]
fn qlora_step_with_checkpointing_keeps_only_nf4_weights_alive() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    let before = CURRENT.load(Ordering::SeqCst);
    let model = qlora_model(&device);
    let model_bytes = CURRENT.load(Ordering::SeqCst).saturating_sub(before);
    // NF4 bases + f32 adapters, embedding, head and norms: far less than the f32 linears.
    assert!(
        model_bytes < F32_LINEAR_BYTES / 3,
        "the QLoRA model holds {model_bytes} bytes (f32 linear weights: {F32_LINEAR_BYTES})"
    );
    let (input, labels) = batch(&device);
    // Warm-up step (one-time tables such as the NF4 code book and RoPE caches).
    let _ = checkpointed_lm_loss_backward(&model, &input, labels.clone(), 16, 1.0).unwrap();

    let ((loss, grads), _, step_peak) = peak_during(|| {
        checkpointed_lm_loss_backward(&model, &input, labels.clone(), 16, 1.0).unwrap()
    });
    assert!(loss.tokens > 0 && !grads.is_empty());
    let bound = F32_LINEAR_BYTES / 3;
    assert!(
        step_peak < bound,
        "a checkpointed QLoRA step allocated up to {step_peak} bytes beyond the model; bound \
         {bound} (f32 linear weights: {F32_LINEAR_BYTES})"
    );

    // Without checkpointing, every dequantised weight is kept for backward: the bound above
    // is one that f32 weights exceed.
    let (_, _, plain_peak) = peak_during(|| {
        let hidden = model.forward_hidden(&input, None).unwrap();
        chunked_lm_loss_backward(&model, hidden, labels.clone(), 16, 1.0)
    });
    assert!(
        plain_peak > F32_LINEAR_BYTES,
        "expected the step without checkpointing to hold the dequantised weights \
         ({plain_peak} <= {F32_LINEAR_BYTES} bytes)"
    );
}
