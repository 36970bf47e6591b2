//! LoRA on a bf16 model (`finetune --dtype bf16`): the frozen base weights stay bf16 and
//! unchanged, the adapters (and so their gradients and AdamW moments) stay f32, the losses
//! stay close to the same run in f32, and a run stopped at a checkpoint resumes to the weights
//! of the run that never stopped.
#![allow(clippy::unwrap_used)]

use burn::tensor::{DType, Device, FloatDType};
use lmflow_models::{CausalLm, ModelConfig};
use lmflow_optim::schedule::ScheduleKind;
use lmflow_peft::trainable::cast_float_params;
use lmflow_peft::{LinearVisitor, LoraConfig, TargetModules, get_peft_model};
use lmflow_train::{
    IGNORE_INDEX, LoraWeights, TokenizedSample, TrainEvent, Trainer, TrainerConfig,
};

/// Tolerance of a bf16 step's loss against the f32 run on the same (bf16-rounded) weights,
/// relative. The activations of every layer are rounded to bf16 (8 significant bits), the loss
/// itself is computed in f32; measured: at most 1.2e-4.
const LOSS_RTOL: f64 = 1e-3;

fn tiny_config() -> ModelConfig {
    ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llama", "vocab_size": 48, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": false
        }),
        "config.json".as_ref(),
    )
    .unwrap()
}

fn samples() -> Vec<TokenizedSample> {
    (0..8)
        .map(|start| {
            let ids: Vec<u32> = (0..10).map(|i| 1 + (start * 7 + i * 3) % 40).collect();
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

fn config(dir: &std::path::Path, max_steps: usize) -> TrainerConfig {
    TrainerConfig {
        output_dir: dir.to_path_buf(),
        learning_rate: 1e-2,
        max_steps: Some(max_steps),
        per_device_train_batch_size: 4,
        lr_scheduler_type: ScheduleKind::Constant,
        logging_steps: 1,
        save_steps: 2,
        save_total_limit: 0,
        ..TrainerConfig::default()
    }
}

fn lora() -> LoraConfig {
    LoraConfig::new(4, 8.0, TargetModules::Pattern("all-linear".into()))
}

/// The same random base model, its weights rounded to bf16, stored in `dtype`; LoRA attached
/// with the same seed.
fn lora_model(dtype: FloatDType, device: &Device) -> CausalLm {
    device.seed(7);
    let model = CausalLm::from_config(&tiny_config(), device).unwrap();
    let model = cast_float_params(model, FloatDType::BF16);
    let model = cast_float_params(model, dtype);
    device.seed(11);
    get_peft_model(model, &lora(), "default").unwrap().0
}

/// (path, dtype, values) of every base weight and every adapter factor.
#[allow(clippy::type_complexity)]
fn tensors(
    model: &CausalLm,
) -> (
    Vec<(String, DType, Vec<f32>)>,
    Vec<(String, DType, Vec<f32>)>,
) {
    let (mut base, mut adapters) = (Vec::new(), Vec::new());
    let values = |t: burn::tensor::Tensor<2>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    model.visit_linears(&mut |path, lin| {
        let w = lin.weight.val();
        base.push((path.to_string(), w.dtype(), values(w)));
        for a in &lin.adapters {
            for (name, t) in [("lora_a", a.lora_a.val()), ("lora_b", a.lora_b.val())] {
                adapters.push((format!("{path}.{name}"), t.dtype(), values(t)));
            }
        }
    });
    (base, adapters)
}

fn run(
    trainer: &Trainer,
    model: CausalLm,
    device: &Device,
    data: &[TokenizedSample],
) -> (CausalLm, Vec<f64>, Option<usize>) {
    let io = LoraWeights::new(lora(), "default", device.clone());
    let (mut losses, mut start) = (Vec::new(), None);
    let out = trainer
        .train(model, &io, data, None, &mut |e| match e {
            TrainEvent::Step { loss, .. } => losses.push(loss),
            TrainEvent::Started { start_step, .. } => start = Some(start_step),
            _ => {}
        })
        .unwrap();
    (out.model, losses, start)
}

#[test]
fn bf16_lora_keeps_base_bf16_adapters_f32_and_tracks_the_f32_run() {
    let device = Device::flex().autodiff();
    let data = samples();

    let model16 = lora_model(FloatDType::BF16, &device);
    let (base_before, adapters_before) = tensors(&model16);
    assert!(base_before.iter().all(|(_, d, _)| *d == DType::BF16));
    assert!(adapters_before.iter().all(|(_, d, _)| *d == DType::F32));

    let dir16 = tempfile::tempdir().unwrap();
    let trainer = Trainer::new(config(dir16.path(), 4), device.clone(), 0).unwrap();
    let (trained16, losses16, _) = run(&trainer, model16, &device, &data);

    // Base: still bf16, bit for bit the weights it started with. Adapters: f32, and trained.
    let (base_after, adapters_after) = tensors(&trained16);
    assert_eq!(base_before, base_after, "the frozen bf16 base changed");
    assert!(adapters_after.iter().all(|(_, d, _)| *d == DType::F32));
    let moved = adapters_before
        .iter()
        .zip(&adapters_after)
        .filter(|(a, b)| a.2 != b.2)
        .count();
    assert_eq!(moved, adapters_after.len(), "every adapter factor trains");

    // The same run in f32 on the same (bf16-rounded) weights.
    let model32 = lora_model(FloatDType::F32, &device);
    let dir32 = tempfile::tempdir().unwrap();
    let trainer = Trainer::new(config(dir32.path(), 4), device.clone(), 0).unwrap();
    let (_, losses32, _) = run(&trainer, model32, &device, &data);
    assert_eq!(losses16.len(), 4);
    eprintln!("losses bf16 {losses16:?}, f32 {losses32:?}");
    for (step, (a, b)) in losses16.iter().zip(&losses32).enumerate() {
        let rel = (a - b).abs() / b.abs();
        assert!(
            rel < LOSS_RTOL,
            "step {}: bf16 loss {a} vs f32 {b} (relative {rel:.2e} >= {LOSS_RTOL})",
            step + 1
        );
    }
    assert!(losses16[3] < losses16[0], "bf16 loss falls: {losses16:?}");

    // Stopped after 2 steps (a checkpoint), resumed to 4: the adapters of the run that never
    // stopped (the optimizer's f32 moments came back with them).
    let split = tempfile::tempdir().unwrap();
    let first = Trainer::new(config(split.path(), 2), device.clone(), 0).unwrap();
    run(
        &first,
        lora_model(FloatDType::BF16, &device),
        &device,
        &data,
    );
    let second = Trainer::new(config(split.path(), 4), device.clone(), 0).unwrap();
    let (resumed, _, start) = run(
        &second,
        lora_model(FloatDType::BF16, &device),
        &device,
        &data,
    );
    assert_eq!(start, Some(2));
    let (base_resumed, adapters_resumed) = tensors(&resumed);
    assert_eq!(base_resumed, base_before);
    let max_diff = adapters_after
        .iter()
        .zip(&adapters_resumed)
        .flat_map(|(a, b)| a.2.iter().zip(&b.2).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-6, "resumed bf16 run differs by {max_diff}");
}
