//! With LoRA, DPO holds one copy of the base weights: the reference log-probabilities come
//! from the same model with its adapter disabled, precomputed once. A counting global
//! allocator measures the peak of live heap bytes during the whole DPO run (reference pass,
//! training steps, checkpoint) against the size of the base weights.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{Device, Int, Tensor};
use lmflow_align::{DpoConfig, Reference, train_dpo};
use lmflow_datasets::{TokenizedPair, TokenizedSample};
use lmflow_models::{CausalLm, ForwardInput, ModelConfig};
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model};
use lmflow_train::{IGNORE_INDEX, LoraWeights, Trainer, TrainerConfig};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
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
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        grow(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn sample(prompt: &[u32], completion: &[u32]) -> TokenizedSample {
    let input_ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let labels = prompt
        .iter()
        .map(|_| IGNORE_INDEX)
        .chain(completion.iter().map(|&t| i64::from(t)))
        .collect();
    TokenizedSample {
        original_len: input_ids.len(),
        input_ids,
        labels,
        truncated: false,
        target_lost: false,
    }
}

#[test]
fn lora_dpo_holds_one_copy_of_the_base_weights() {
    let device = Device::flex().autodiff();
    // Weights dominate: 2 wide layers, short sequences.
    let cfg = ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llama", "vocab_size": 512, "hidden_size": 256,
            "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "max_position_embeddings": 64, "tie_word_embeddings": false
        }),
        "config.json".as_ref(),
    )
    .unwrap();
    let before_model = LIVE.load(Ordering::SeqCst);
    let model = CausalLm::from_config(&cfg, &device).unwrap();
    // Materialise every parameter (initialisation may be lazy).
    let ids = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
    let _ = model
        .forward(ForwardInput::new(ids), None)
        .unwrap()
        .logits
        .into_data();
    let base_bytes = LIVE.load(Ordering::SeqCst) - before_model;
    let params: usize = model
        .state_dict()
        .iter()
        .map(|(_, d)| d.num_elements())
        .sum();
    assert!(
        base_bytes >= params * 4,
        "{base_bytes} live bytes for {params} f32 parameters"
    );

    let lora = LoraConfig::new(4, 8.0, TargetModules::Pattern("all-linear".into()));
    let (model, _) = get_peft_model(model, &lora, "default").unwrap();
    let pairs: Vec<TokenizedPair> = (0..4u32)
        .map(|k| TokenizedPair {
            chosen: sample(&[1 + k, 2, 3], &[10 + k, 11, 12, 13]),
            rejected: sample(&[1 + k, 2, 3], &[40 + k, 41, 42]),
            margin: None,
        })
        .collect();
    let out = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        output_dir: out.path().to_path_buf(),
        learning_rate: 1e-3,
        max_steps: Some(2),
        per_device_train_batch_size: 2,
        per_device_eval_batch_size: 4,
        save_steps: 1,
        ..TrainerConfig::default()
    };
    let trainer = Trainer::new(config, device.clone(), 0).unwrap();
    let weights = LoraWeights::new(lora, "default", device.clone());

    let start = LIVE.load(Ordering::SeqCst);
    PEAK.store(start, Ordering::SeqCst);
    let outcome = train_dpo(
        &trainer,
        model,
        &weights,
        DpoConfig::default(),
        Reference::WithoutAdapters("default"),
        0,
        pairs,
        None,
        &device,
        &mut |_| {},
    )
    .unwrap();
    let extra = PEAK.load(Ordering::SeqCst) - start;
    assert_eq!(outcome.state.global_step, 2);
    eprintln!(
        "base weights {base_bytes} bytes; peak above the loaded policy during DPO: {extra} bytes ({:.2} of the base)",
        extra as f64 / base_bytes as f64
    );
    // A second copy of the base (a reference model) would add `base_bytes` by itself. Measured
    // here: 0.62 of the base, the activations, gradients and transient buffers of backward.
    assert!(
        extra * 10 < base_bytes * 9,
        "DPO allocated {extra} bytes beyond the policy; the base weights take {base_bytes}"
    );
}
