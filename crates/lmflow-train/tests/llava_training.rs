//! LLaVA stage 1 (projector only) through the shared loop, on drawn images: noisy images of a
//! dominant colour, the prompt `<image>\nWhat colour is this?`, the answer the colour's word.
//! Training only the projector of a tiny random LLaVA reaches >= 95% held-out accuracy, every
//! weight outside the projector stays bit-identical, and the same training on blank images
//! (no visual information) stays at chance.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use lmflow_datasets::TokenizedSample;
use lmflow_datasets::multimodal::PixelValues;
use lmflow_models::{LlavaModel, ModelConfig};
use lmflow_optim::schedule::ScheduleKind;
use lmflow_train::multimodal::{
    LlavaSftObjective, LlavaStage, MultimodalItem, PROJECTOR_FILE, ProjectorWeights, prepare_stage,
};
use lmflow_train::{Trainer, TrainerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Optimizer steps of each run (batches of 8).
const STEPS: usize = 300;
const IMAGE_SIZE: usize = 16;
const PATCH: usize = 4;
const IMAGE_TOKEN: u32 = 47;
const BOS: u32 = 1;
const EOS: u32 = 2;
/// "\n What colour is this ?"
const QUESTION: [u32; 6] = [3, 10, 11, 12, 13, 14];
/// red, green, blue, yellow: base RGB and answer token.
const COLOURS: [([f32; 3], u32); 4] = [
    ([220.0, 30.0, 30.0], 20),
    ([30.0, 200.0, 40.0], 21),
    ([30.0, 40.0, 220.0], 22),
    ([220.0, 210.0, 30.0], 23),
];
/// The backend's random generator is shared by the whole process: tests that draw weights run
/// one at a time so that every run draws the same ones.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

fn tiny_llava(device: &Device) -> (ModelConfig, LlavaModel) {
    let cfg = ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llava",
            "architectures": ["LlavaForConditionalGeneration"],
            "image_token_index": IMAGE_TOKEN,
            "tie_word_embeddings": false,
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "projector_hidden_act": "gelu",
            "vision_config": {
                "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": IMAGE_SIZE,
                "patch_size": PATCH, "projection_dim": 32,
                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
            },
            "text_config": {
                "model_type": "llama", "vocab_size": 48, "hidden_size": 32,
                "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 64,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
                "tie_word_embeddings": false
            }
        }),
        "config.json".as_ref(),
    )
    .unwrap();
    let model = LlavaModel::from_config(&cfg, device).unwrap();
    (cfg, scale_language_model(model, text_init_scale()))
}

/// The language model's decoder projections are drawn 4x wider than PyTorch's default.
fn text_init_scale() -> f64 {
    4.0
}

/// Multiplies the language model's decoder projections (attention and MLP) by `factor`: a
/// larger `initializer_range`, so that what the image tokens carry reaches the logits.
fn scale_language_model(model: LlavaModel, factor: f64) -> LlavaModel {
    struct Scale {
        path: Vec<String>,
        factor: f64,
    }
    impl ModuleMapper for Scale {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let path = self.path.join(".");
            if path.starts_with("language_model.") && path.contains("layers.") && D == 2 {
                let factor = self.factor;
                param.map(|t| t.mul_scalar(factor))
            } else {
                param
            }
        }
    }
    model.map(&mut Scale {
        path: Vec::new(),
        factor,
    })
}

/// A `[3, 16, 16]` image of colour `colour` with strong per-pixel noise and a quarter of the
/// pixels replaced by random colours, normalised as CLIP's processor does. `blank`: a uniform
/// mid-grey image instead (no information).
fn draw(rng: &mut StdRng, colour: usize, blank: bool) -> PixelValues {
    let n = IMAGE_SIZE * IMAGE_SIZE;
    let mut data = vec![0f32; 3 * n];
    for p in 0..n {
        let random_pixel = rng.random::<f32>() < 0.25;
        for c in 0..3 {
            let v = if blank {
                128.0
            } else if random_pixel {
                rng.random::<f32>() * 255.0
            } else {
                (COLOURS[colour].0[c] + (rng.random::<f32>() - 0.5) * 120.0).clamp(0.0, 255.0)
            };
            data[c * n + p] = (v.round() / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    PixelValues {
        data,
        shape: [3, IMAGE_SIZE, IMAGE_SIZE],
    }
}

/// `<s> <image>x16 \n What colour is this ? <answer> </s>`, trained on the answer and EOS.
fn item(rng: &mut StdRng, colour: usize, blank: bool) -> MultimodalItem {
    let tokens_per_image = (IMAGE_SIZE / PATCH) * (IMAGE_SIZE / PATCH);
    let mut ids = vec![BOS];
    ids.extend(std::iter::repeat_n(IMAGE_TOKEN, tokens_per_image));
    ids.extend(QUESTION);
    let prompt = ids.len();
    ids.extend([COLOURS[colour].1, EOS]);
    let labels = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| if i < prompt { -100 } else { i64::from(t) })
        .collect();
    let sample = TokenizedSample {
        original_len: ids.len(),
        input_ids: ids,
        labels,
        truncated: false,
        target_lost: false,
    };
    MultimodalItem::with_pixels(sample, vec![draw(rng, colour, blank)])
}

fn dataset(seed: u64, per_colour: usize, blank: bool) -> Vec<MultimodalItem> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..per_colour * COLOURS.len())
        .map(|i| item(&mut rng, i % COLOURS.len(), blank))
        .collect()
}

/// Share of items whose greedy answer (argmax over the whole vocabulary after the question)
/// is their colour word.
fn accuracy(model: &LlavaModel, items: &[MultimodalItem]) -> f64 {
    let model = model.valid();
    let device = Device::flex();
    let objective = LlavaSftObjective::new(0, None);
    let refs: Vec<&MultimodalItem> = items.iter().collect();
    let (input, _, pixels) = objective.input(&refs, &device).unwrap();
    let logits = model.forward(input, pixels, None).unwrap().logits;
    let answer_pos = 1 + (IMAGE_SIZE / PATCH).pow(2) + QUESTION.len() - 1;
    let [b, _, v] = logits.dims();
    let predicted: Vec<i64> = logits
        .narrow(1, answer_pos, 1)
        .reshape([b, v])
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    let correct = items
        .iter()
        .zip(&predicted)
        .filter(|(item, p)| item.sample.input_ids[answer_pos + 1] as i64 == **p)
        .count();
    correct as f64 / items.len() as f64
}

fn weights(model: &LlavaModel) -> HashMap<String, TensorData> {
    model.state_dict().into_iter().collect()
}

/// Trains the projector of a fresh tiny LLaVA (same seed every time) on `train`; returns the
/// model before and after training and the output folder.
fn train_stage1(
    train: &[MultimodalItem],
    steps: usize,
) -> (LlavaModel, LlavaModel, tempfile::TempDir) {
    let device = Device::flex().autodiff();
    device.seed(7);
    let (_, model) = tiny_llava(&device);
    let (model, _) = prepare_stage(model, &LlavaStage::Projector).unwrap();
    let before = model.clone();
    let dir = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        output_dir: dir.path().to_path_buf(),
        learning_rate: 1e-2,
        max_steps: Some(steps),
        per_device_train_batch_size: 8,
        lr_scheduler_type: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        weight_decay: 0.0,
        logging_steps: 10,
        save_steps: 0,
        seed: 3,
        ..TrainerConfig::default()
    };
    let trainer = Trainer::new(config, device.clone(), 0).unwrap();
    let io = ProjectorWeights::new(device.clone(), None);
    let outcome = trainer
        .train_objective(
            model,
            &io,
            &LlavaSftObjective::new(0, None),
            train,
            None,
            &mut |e| {
                if let lmflow_train::TrainEvent::Step { step, loss, .. } = e
                    && step % 100 == 0
                {
                    eprintln!("step {step}: loss {loss:.4}");
                }
            },
        )
        .unwrap();
    (before, outcome.model, dir)
}

#[test]
fn stage1_projector_learns_colours_and_nothing_else_moves() {
    let _serial = serial();
    let train = dataset(1, 24, false);
    let held_out = dataset(2, 20, false);
    let started = std::time::Instant::now();
    let (before, after, dir) = train_stage1(&train, STEPS);
    let acc_before = accuracy(&before, &held_out);
    let acc = accuracy(&after, &held_out);
    eprintln!(
        "held-out accuracy {acc_before:.3} -> {acc:.3} ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    assert!(acc >= 0.95, "held-out accuracy {acc} < 0.95");

    // Every weight outside the projector is bit-identical; the projector moved.
    let (w0, w1) = (weights(&before), weights(&after));
    assert_eq!(w0.len(), w1.len());
    let mut projector_moved = false;
    for (name, t0) in &w0 {
        let t1 = &w1[name];
        if name.starts_with("multi_modal_projector.") {
            projector_moved |= t0 != t1;
        } else {
            assert_eq!(
                t0.as_bytes(),
                t1.as_bytes(),
                "{name} changed during stage 1"
            );
        }
    }
    assert!(projector_moved, "the projector did not train");

    // The final folder holds the projector file and a PEFT modules_to_save adapter.
    let final_dir = dir.path().join("final");
    assert!(final_dir.join(PROJECTOR_FILE).is_file());
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(final_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["target_modules"], "dummy-target-modules");
    assert_eq!(cfg["modules_to_save"][0], "multi_modal_projector");
    // Reloading the projector file into the untrained model gives the trained logits.
    let device = Device::flex().autodiff();
    let reloaded = lmflow_train::multimodal::load_projector(
        before.clone(),
        &final_dir.join(PROJECTOR_FILE),
        &device,
    )
    .unwrap();
    assert_eq!(accuracy(&reloaded, &held_out), acc);
}

#[test]
fn stage1_on_blank_images_stays_at_chance() {
    let _serial = serial();
    let train = dataset(1, 24, true);
    let held_out = dataset(2, 20, true);
    let (_, after, _dir) = train_stage1(&train, STEPS);
    let acc = accuracy(&after, &held_out);
    eprintln!("blank-image control: held-out accuracy {acc:.3}");
    // Every blank input is the same, so one answer is given to all: 1 in 4 colours.
    assert!(acc <= 0.3, "accuracy {acc} without visual information");
}

// ---------------------------------------------------------------------------------------------
// Reload in transformers / PEFT.
//
// `tests/fixtures/llava_train/` holds what this code writes after a short stage 1 (the model
// folder with its projector files, `stage1/`) and a short stage 2 (a LoRA adapter on the
// language model with the projector as `modules_to_save`, `stage2_adapter/`) and the inputs
// used (`inputs.safetensors`). `tests/fixtures/llava_train_reload.py` loads them with
// `LlavaForConditionalGeneration.from_pretrained` and `PeftModel.from_pretrained` and records
// transformers' logits (`reference.safetensors`). Regenerate with
// `LMFLOW_WRITE_LLAVA_FIXTURE=1 cargo test -p lmflow-train --test llava_training reload`, then
// run the script.

use std::path::{Path, PathBuf};

use lmflow_models::llava::language_model_targets;
use lmflow_models::{ForwardInput, WeightSource, load_llava};
use lmflow_peft::{LoraConfig, load_adapter};
use lmflow_train::LoraWeights;
use lmflow_train::multimodal::save_projector;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llava_train")
}

/// Trains `model` for `steps` with `io` and returns the trained model.
fn train_with<W: lmflow_train::WeightsIo<LlavaModel>>(
    model: LlavaModel,
    io: &W,
    train: &[MultimodalItem],
    steps: usize,
    device: &Device,
) -> LlavaModel {
    let dir = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        output_dir: dir.path().to_path_buf(),
        learning_rate: 1e-2,
        max_steps: Some(steps),
        per_device_train_batch_size: 4,
        lr_scheduler_type: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        weight_decay: 0.0,
        save_steps: 0,
        seed: 5,
        ..TrainerConfig::default()
    };
    Trainer::new(config, device.clone(), 0)
        .unwrap()
        .train_objective(
            model,
            io,
            &LlavaSftObjective::new(0, None),
            train,
            None,
            &mut |_| {},
        )
        .unwrap()
        .model
}

/// Two rows (one image each) and their stacked pixel values, on the plain device.
fn reload_inputs() -> (Tensor<2, burn::tensor::Int>, Tensor<4>) {
    let items = dataset(9, 1, false)[..2].to_vec();
    let refs: Vec<&MultimodalItem> = items.iter().collect();
    let (input, _, pixels) = LlavaSftObjective::new(0, None)
        .input(&refs, &Device::flex())
        .unwrap();
    (input.input_ids, pixels.unwrap())
}

fn logits_of(
    model: &LlavaModel,
    ids: &Tensor<2, burn::tensor::Int>,
    pixels: &Tensor<4>,
) -> Vec<f32> {
    model
        .valid()
        .forward(ForwardInput::new(ids.clone()), Some(pixels.clone()), None)
        .unwrap()
        .logits
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn read_f32(file: &Path, name: &str) -> Vec<f32> {
    let source = WeightSource::from_files(
        file.parent().unwrap(),
        &[file.to_path_buf()],
        &Device::flex(),
        burn::tensor::FloatDType::F32,
    )
    .unwrap();
    let (_, bytes) = source
        .raw(name)
        .unwrap_or_else(|| panic!("{}: no {name}", file.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn reload_stage1_model_and_stage2_adapter_match_transformers() {
    let _serial = serial();
    let device = Device::flex().autodiff();
    device.seed(11);
    let (cfg, model) = tiny_llava(&device);
    let train = dataset(4, 4, false);

    // Stage 1: the projector.
    let (model, _) = prepare_stage(model, &LlavaStage::Projector).unwrap();
    let stage1 = train_with(
        model,
        &ProjectorWeights::new(device.clone(), None),
        &train,
        8,
        &device,
    );
    // Stage 2: LoRA on the language model, the projector as modules_to_save.
    let lora = LoraConfig::new(4, 8.0, language_model_targets(&["q_proj", "v_proj"]));
    let (model, lora) = prepare_stage(stage1.clone(), &LlavaStage::Lora(Box::new(lora))).unwrap();
    let lora = lora.unwrap();
    let stage2 = train_with(
        model,
        &LoraWeights::new(lora.clone(), "default", device.clone()),
        &train,
        8,
        &device,
    );
    // Stage 2 moved the projector and the adapters only: every base weight (vision tower and
    // language model) is the stage-1 one, bit for bit.
    let (w1, w2) = (weights(&stage1), weights(&stage2));
    for (name, t1) in &w1 {
        if !name.starts_with("multi_modal_projector.") {
            assert_eq!(
                t1.as_bytes(),
                w2[name].as_bytes(),
                "{name} changed in stage 2"
            );
        }
    }
    assert!(
        w1.iter()
            .any(|(n, t)| n.starts_with("multi_modal_projector.") && *t != w2[n]),
        "the projector did not train in stage 2"
    );
    let (ids, pixels) = reload_inputs();
    let [rows, seq] = ids.dims();
    let rust_stage1 = logits_of(&stage1, &ids, &pixels);
    let rust_stage2 = logits_of(&stage2, &ids, &pixels);
    assert!(
        max_abs_diff(&rust_stage1, &rust_stage2) > 1e-3,
        "stage 2 did not change the logits"
    );

    let fixture = fixture_dir();
    if std::env::var_os("LMFLOW_WRITE_LLAVA_FIXTURE").is_some() {
        let stage1_dir = fixture.join("stage1");
        let plain = stage1.valid();
        plain.save(&stage1_dir, &cfg).unwrap();
        save_projector(&plain, &stage1_dir, None).unwrap();
        let adapter_dir = fixture.join("stage2_adapter");
        let mut view = stage2.valid();
        lmflow_peft::save_adapter(&mut view, &lora, "default", &adapter_dir).unwrap();
        let ids_data = ids.clone().into_data().convert::<i64>();
        lmflow_models::save_safetensors(
            &fixture.join("inputs.safetensors"),
            &[
                ("input_ids".into(), ids_data),
                ("pixel_values".into(), pixels.clone().into_data()),
                (
                    "rust_logits_stage1".into(),
                    TensorData::new(rust_stage1.clone(), [rows, seq, 48]),
                ),
                (
                    "rust_logits_stage2".into(),
                    TensorData::new(rust_stage2.clone(), [rows, seq, 48]),
                ),
            ],
        )
        .unwrap();
        eprintln!(
            "wrote {}; now run tests/fixtures/llava_train_reload.py",
            fixture.display()
        );
        return;
    }

    // This code still produces the committed fixture (same seeds, same training).
    let inputs = fixture.join("inputs.safetensors");
    let committed1 = read_f32(&inputs, "rust_logits_stage1");
    let committed2 = read_f32(&inputs, "rust_logits_stage2");
    assert!(max_abs_diff(&rust_stage1, &committed1) < 1e-4);
    assert!(max_abs_diff(&rust_stage2, &committed2) < 1e-4);

    // transformers' logits of the committed folders (recorded by the script) ...
    let reference = fixture.join("reference.safetensors");
    let hf_stage1 = read_f32(&reference, "logits_stage1");
    let hf_stage2 = read_f32(&reference, "logits_stage2");
    // The stage-1 PEFT folder (projector as modules_to_save) applied by PEFT on a model with a
    // scrambled projector.
    let hf_stage1_peft = read_f32(&reference, "logits_stage1_peft");
    assert!(max_abs_diff(&rust_stage1, &hf_stage1_peft) < 1e-4);
    let d1 = max_abs_diff(&rust_stage1, &hf_stage1);
    let d2 = max_abs_diff(&rust_stage2, &hf_stage2);
    eprintln!("max |rust - transformers|: stage 1 {d1:.2e}, stage 2 (PEFT) {d2:.2e}");
    assert!(d1 < 1e-4, "stage-1 model: {d1}");
    assert!(d2 < 1e-4, "stage-2 adapter: {d2}");

    // ... and Rust reading the same folders back gives them too.
    let plain = Device::flex();
    let loaded = load_llava(&fixture.join("stage1"), &plain, &Default::default()).unwrap();
    let reloaded1 = logits_of(&loaded.model, &ids, &pixels);
    assert!(max_abs_diff(&reloaded1, &hf_stage1) < 1e-4);
    let mut with_adapter = loaded.model;
    load_adapter(
        &mut with_adapter,
        &fixture.join("stage2_adapter"),
        "default",
        &plain,
    )
    .unwrap();
    let reloaded2 = logits_of(&with_adapter, &ids, &pixels);
    assert!(max_abs_diff(&reloaded2, &hf_stage2) < 1e-4);
}

#[test]
fn stage2_lora_refuses_vision_tower_targets() {
    let _serial = serial();
    let (_, model) = tiny_llava(&Device::flex());
    // A plain name list also matches CLIP's q_proj (as in PEFT): refused.
    let lora = LoraConfig::new(
        4,
        8.0,
        lmflow_peft::TargetModules::Names(vec!["q_proj".into()]),
    );
    let err = prepare_stage(model, &LlavaStage::Lora(Box::new(lora)))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.vision_tower."), "{err}");
    assert!(err.contains("language model"), "{err}");
}
