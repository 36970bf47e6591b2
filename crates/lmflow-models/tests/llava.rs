#![allow(clippy::unwrap_used)]
//! LLaVA (CLIP tower + projector + LLaMA) against transformers: image features, logits
//! (single and batched, with and without images, left padding), greedy generation with the KV
//! cache, every checkpoint spelling, save -> load, and the image-token count check.
//!
//! Fixtures: `tests/fixtures/llava.py` (transformers 5.24). The recorded `pixel_values` are fed
//! directly, so these tests do not depend on the image processor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use lmflow_models::llava::{language_model_targets, saved_name};
use lmflow_models::{
    ForwardInput, LoadOptions, ModelError, PretrainedLlava, load_llava, save_safetensors,
};
use lmflow_peft::{LinearVisitor, LoraConfig};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llava")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

struct RefTensors(Vec<u8>);

impl RefTensors {
    fn load() -> Self {
        Self(std::fs::read(fixtures().join("reference.safetensors")).unwrap())
    }

    fn get(&self, name: &str) -> Option<(Vec<f32>, Vec<usize>)> {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let view = st.tensor(name).ok()?;
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Some((values, view.shape().to_vec()))
    }

    fn pixels(&self, name: &str, device: &Device) -> Option<Tensor<4>> {
        let (v, s) = self.get(name)?;
        Some(Tensor::from_data(
            TensorData::new(v, [s[0], s[1], s[2], s[3]]),
            device,
        ))
    }
}

fn int2(rows: &Value, device: &Device) -> Tensor<2, Int> {
    let rows: Vec<Vec<i64>> = serde_json::from_value(rows.clone()).unwrap();
    let (b, s) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.into_iter().flatten().collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load(folder: &str, device: &Device) -> PretrainedLlava {
    load_llava(&fixtures().join(folder), device, &LoadOptions::default()).unwrap()
}

fn cases(r: &Value, variant: &str) -> Vec<(String, Value)> {
    r["variants"][variant]["cases"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn image_features_match_transformers() {
    let device = Device::flex();
    let r = reference();
    let refs = RefTensors::load();
    let mut checked = 0;
    for (variant, folder) in [("default", "model"), ("full", "model_full")] {
        let llava = load(folder, &device);
        for (case, _) in cases(&r, variant) {
            let key = format!("{variant}.{case}");
            let Some(pixels) = refs.pixels(&format!("{key}.pixel_values"), &device) else {
                continue;
            };
            let (want, shape) = refs.get(&format!("{key}.image_features")).unwrap();
            let got = llava.model.image_features(pixels).unwrap();
            assert_eq!(got.dims().to_vec(), shape, "{key}");
            let err = max_abs(&values(got), &want);
            eprintln!("{key}: image features max abs error {err:e}");
            assert!(err < TOL, "{key}: image features differ by {err}");
            checked += 1;
        }
    }
    assert_eq!(checked, 5);
}

#[test]
fn logits_match_transformers_single_batched_with_and_without_images() {
    let device = Device::flex();
    let r = reference();
    let refs = RefTensors::load();
    let mut checked = Vec::new();
    for (variant, folder) in [("default", "model"), ("full", "model_full")] {
        let llava = load(folder, &device);
        for (case, entry) in cases(&r, variant) {
            let key = format!("{variant}.{case}");
            let Some((want, shape)) = refs.get(&format!("{key}.logits")) else {
                continue;
            };
            let ids = int2(&entry["input_ids"], &device);
            let mask = int2(&entry["attention_mask"], &device);
            let pixels = refs.pixels(&format!("{key}.pixel_values"), &device);
            let input = ForwardInput::new(ids).with_attention_mask(mask);
            let logits = llava.model.forward(input, pixels, None).unwrap().logits;
            assert_eq!(logits.dims().to_vec(), shape, "{key}");
            // The real positions (the outputs of fully masked left-padding queries are
            // meaningless and differ between attention implementations).
            let keep: Vec<i64> =
                serde_json::from_value::<Vec<Vec<i64>>>(entry["attention_mask"].clone())
                    .unwrap()
                    .concat();
            let got = values(logits);
            let v = shape[2];
            let bad: Vec<(usize, f32)> = got
                .chunks(v)
                .zip(want.chunks(v))
                .enumerate()
                .filter(|&(i, _)| keep[i] == 1)
                .map(|(i, (a, b))| (i, max_abs(a, b)))
                .collect();
            let worst = bad.iter().map(|&(_, e)| e).fold(0.0, f32::max);
            eprintln!("{key}: logits max abs error {worst:e}");
            let bad: Vec<_> = bad.into_iter().filter(|&(_, e)| e >= TOL).collect();
            assert!(
                bad.is_empty(),
                "{key}: logits differ at (flat position, error) {bad:?}"
            );
            checked.push(key);
        }
    }
    assert_eq!(checked.len(), 5, "{checked:?}");
}

#[test]
fn greedy_generation_with_cache_equals_transformers() {
    let device = Device::flex();
    let r = reference();
    let refs = RefTensors::load();
    let llava = load("model", &device);
    let per_image = llava.model.config.image_tokens_per_image();
    let image_token = i64::from(llava.model.config.image_token_id);
    for (case, entry) in cases(&r, "default") {
        let rows: Vec<Vec<i64>> = serde_json::from_value(entry["input_ids"].clone()).unwrap();
        let masks: Vec<Vec<i64>> = serde_json::from_value(entry["attention_mask"].clone()).unwrap();
        let greedy: Vec<Vec<u32>> = serde_json::from_value(entry["greedy"].clone()).unwrap();
        let pixels = refs.pixels(&format!("default.{case}.pixel_values"), &device);
        let mut images_before = 0;
        for (row, (ids, mask)) in rows.iter().zip(&masks).enumerate() {
            let ids: Vec<i64> = ids
                .iter()
                .zip(mask)
                .filter(|&(_, &m)| m == 1)
                .map(|(&t, _)| t)
                .collect();
            let n_images = ids.iter().filter(|&&t| t == image_token).count() / per_image;
            let row_pixels =
                (n_images > 0).then(|| pixels.clone().unwrap().narrow(0, images_before, n_images));
            images_before += n_images;
            let len = ids.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &device);
            let got = llava
                .model
                .greedy_generate(ids, None, row_pixels, greedy[row].len(), &[4])
                .unwrap();
            assert_eq!(got[0], greedy[row], "{case} row {row}");
        }
    }
}

/// Loads the `single` case's logits from a folder.
fn single_logits(dir: &Path, device: &Device) -> Vec<f32> {
    let r = reference();
    let refs = RefTensors::load();
    let entry = &r["variants"]["default"]["cases"]["single"];
    let llava = load_llava(dir, device, &LoadOptions::default()).unwrap();
    let ids = int2(&entry["input_ids"], device);
    let pixels = refs.pixels("default.single.pixel_values", device);
    values(
        llava
            .model
            .forward(ForwardInput::new(ids), pixels, None)
            .unwrap()
            .logits,
    )
}

/// A copy of the fixture model whose tensors are renamed by `rename` (from transformers'
/// saved names).
fn respelled(rename: &dyn Fn(&str) -> String) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("model");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "model.safetensors" {
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, TensorData)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (rename(&name), TensorData::new(v, view.shape().to_vec()))
        })
        .collect();
    save_safetensors(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    tmp
}

#[test]
fn every_checkpoint_spelling_loads_to_the_same_model() {
    let device = Device::flex();
    let original = single_logits(&fixtures().join("model"), &device);
    // transformers 4.52+ / module names: model.vision_tower.*, model.language_model.*, lm_head.
    let canonical = respelled(&|n| {
        if let Some(rest) = n.strip_prefix("language_model.model.") {
            format!("model.language_model.{rest}")
        } else if let Some(rest) = n.strip_prefix("language_model.") {
            rest.to_string()
        } else {
            format!("model.{n}")
        }
    });
    // The Hub's older layout: vision_tower.vision_model.*.
    let hub = respelled(&|n| match n.strip_prefix("vision_tower.") {
        Some(rest) => format!("vision_tower.vision_model.{rest}"),
        None => n.to_string(),
    });
    // transformers 4.5x saves of Hub checkpoints: model.vision_tower.vision_model.*.
    let mixed = respelled(&|n| {
        if let Some(rest) = n.strip_prefix("vision_tower.") {
            format!("model.vision_tower.vision_model.{rest}")
        } else if let Some(rest) = n.strip_prefix("language_model.model.") {
            format!("model.language_model.{rest}")
        } else if let Some(rest) = n.strip_prefix("language_model.") {
            rest.to_string()
        } else {
            format!("model.{n}")
        }
    });
    for dir in [&canonical, &hub, &mixed] {
        assert_eq!(single_logits(dir.path(), &device), original);
    }
    // A missing tensor is named in transformers' spelling, with the file.
    let broken = respelled(&|n| n.replace("multi_modal_projector.linear_2", "other"));
    let err = load_llava(broken.path(), &device, &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("multi_modal_projector.linear_2.weight") && msg.contains("model.safetensors"),
        "{msg}"
    );
}

fn file_tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec()))
        .collect()
}

#[test]
fn save_writes_transformers_layout_and_loads_back() {
    let device = Device::flex();
    let llava = load("model", &device);
    let out = tempfile::tempdir().unwrap();
    llava.save(out.path()).unwrap();
    // Same names and bytes as transformers' save_pretrained wrote.
    assert_eq!(
        file_tensors(&out.path().join("model.safetensors")),
        file_tensors(&fixtures().join("model/model.safetensors"))
    );
    for f in [
        "tokenizer.json",
        "preprocessor_config.json",
        "processor_config.json",
    ] {
        let present = out.path().join(f).is_file();
        assert_eq!(present, fixtures().join("model").join(f).is_file(), "{f}");
    }
    assert_eq!(
        single_logits(out.path(), &device),
        single_logits(&fixtures().join("model"), &device)
    );
    // Loading in bf16 works and keeps the layout.
    let bf16 = load_llava(
        out.path(),
        &device,
        &LoadOptions {
            dtype: Some(FloatDType::BF16),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        bf16.model.state_dict().len(),
        llava.model.state_dict().len()
    );
    // ... and runs on f32 pixel values, close to the f32 logits.
    let r = reference();
    let refs = RefTensors::load();
    let entry = &r["variants"]["default"]["cases"]["single"];
    let logits = bf16
        .model
        .forward(
            ForwardInput::new(int2(&entry["input_ids"], &device)),
            refs.pixels("default.single.pixel_values", &device),
            None,
        )
        .unwrap()
        .logits;
    let (want, _) = refs.get("default.single.logits").unwrap();
    let err = max_abs(&values(logits), &want);
    eprintln!("bf16 logits max abs error {err}");
    assert!(err < 0.5, "bf16 logits differ by {err}");
    // The projector alone round-trips through its own file.
    let proj = out.path().join("projector.safetensors");
    save_safetensors(&proj, &llava.model.projector_state_dict()).unwrap();
    let names: Vec<String> = llava
        .model
        .projector_state_dict()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "multi_modal_projector.linear_1.weight",
            "multi_modal_projector.linear_1.bias",
            "multi_modal_projector.linear_2.weight",
            "multi_modal_projector.linear_2.bias"
        ]
    );
    let mut fresh = lmflow_models::LlavaModel::from_config(&llava.config, &device).unwrap();
    let weights =
        lmflow_models::WeightSource::from_files(out.path(), &[proj], &device, FloatDType::F32)
            .unwrap();
    fresh.load_projector(&weights).unwrap();
    assert_eq!(
        values(fresh.multi_modal_projector.linear_2.weight.val()),
        values(llava.model.multi_modal_projector.linear_2.weight.val())
    );
}

#[test]
fn image_token_count_mismatch_is_an_error_naming_both_counts() {
    let device = Device::flex();
    let refs = RefTensors::load();
    let llava = load("model", &device);
    let image_token = i64::from(llava.model.config.image_token_id);
    // 15 image tokens for one image of 16 features.
    let mut ids = vec![3i64];
    ids.extend(std::iter::repeat_n(image_token, 15));
    ids.extend([10, 11]);
    let len = ids.len();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &device);
    let pixels = refs.pixels("default.single.pixel_values", &device);
    let err = llava
        .model
        .forward(ForwardInput::new(ids), pixels, None)
        .unwrap_err();
    assert!(matches!(err, ModelError::Input(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("15 image tokens") && msg.contains("16 features"),
        "{msg}"
    );
}

#[test]
fn linear_paths_are_peft_module_names_and_lora_can_skip_the_vision_tower() {
    let device = Device::flex();
    let llava = load("model", &device);
    let mut paths = Vec::new();
    llava
        .model
        .visit_linears(&mut |p, _| paths.push(p.to_string()));
    for want in [
        "model.vision_tower.encoder.layers.0.self_attn.q_proj",
        "model.vision_tower.encoder.layers.2.mlp.fc2",
        "model.multi_modal_projector.linear_1",
        "model.language_model.layers.1.self_attn.q_proj",
        "model.language_model.layers.0.mlp.down_proj",
        "lm_head",
    ] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
    assert_eq!(
        saved_name("model.language_model.layers.0.self_attn.q_proj"),
        "language_model.model.layers.0.self_attn.q_proj"
    );
    let cfg = LoraConfig::new(4, 8.0, language_model_targets(&["q_proj", "v_proj"]));
    let matcher = lmflow_peft::inject::TargetMatcher::new(&cfg).unwrap();
    let targets: Vec<&String> = paths.iter().filter(|p| matcher.is_target(p)).collect();
    assert_eq!(targets.len(), 4, "{targets:?}");
    assert!(
        targets
            .iter()
            .all(|p| p.starts_with("model.language_model.")),
        "{targets:?}"
    );
}

#[test]
fn gradients_reach_the_projector_and_vision_tower_through_the_image_tokens() {
    let device = Device::flex().autodiff();
    let r = reference();
    let refs = RefTensors::load();
    let llava = load("model", &device);
    let entry = &r["variants"]["default"]["cases"]["single"];
    let ids = int2(&entry["input_ids"], &device);
    let pixels = refs.pixels("default.single.pixel_values", &device);
    let logits = llava
        .model
        .forward(ForwardInput::new(ids), pixels, None)
        .unwrap()
        .logits;
    let grads = logits.sum().backward();
    let model = &llava.model;
    let norm = |g: Option<Tensor<2>>| values(g.unwrap().abs().sum());
    let projector = norm(model.multi_modal_projector.linear_1.weight.grad(&grads));
    let tower = norm(
        model.vision_tower.layers[0]
            .self_attn
            .q_proj
            .weight
            .grad(&grads),
    );
    assert!(
        projector[0] > 0.0 && tower[0] > 0.0,
        "{projector:?} {tower:?}"
    );
    // The last CLIP layer is not used by vision_feature_layer -2: no gradient reaches it.
    assert!(
        model.vision_tower.layers[2]
            .self_attn
            .q_proj
            .weight
            .grad(&grads)
            .is_none()
    );
}

#[test]
fn left_padded_batch_generation_equals_transformers() {
    let device = Device::flex();
    let r = reference();
    let refs = RefTensors::load();
    let llava = load("model", &device);
    let mut checked = 0;
    for (case, entry) in cases(&r, "default") {
        let Some(want) = entry.get("greedy_batched") else {
            continue;
        };
        let want: Vec<Vec<u32>> = serde_json::from_value(want.clone()).unwrap();
        let ids = int2(&entry["input_ids"], &device);
        let mask = int2(&entry["attention_mask"], &device);
        let pixels = refs.pixels(&format!("default.{case}.pixel_values"), &device);
        let got = llava
            .model
            .greedy_generate(ids, Some(mask), pixels, want[0].len(), &[4])
            .unwrap();
        assert_eq!(got, want, "{case}");
        checked += 1;
    }
    assert_eq!(checked, 2);
}

#[test]
fn unsupported_configurations_are_errors_naming_the_key() {
    let device = Device::flex();
    let base = load("model", &device).config;
    for (edit, key) in [
        (
            serde_json::json!({"vision_config": {"model_type": "siglip_vision_model"}}),
            "vision_config.model_type",
        ),
        (
            serde_json::json!({"text_config": {"model_type": "gpt2"}}),
            "text_config.model_type",
        ),
        (
            serde_json::json!({"vision_feature_layer": -5}),
            "vision_feature_layer",
        ),
        (
            serde_json::json!({"vision_feature_select_strategy": "cls"}),
            "vision_feature_select_strategy",
        ),
        (
            serde_json::json!({"projector_hidden_act": "mish"}),
            "projector_hidden_act",
        ),
    ] {
        let mut config = base.clone();
        for (k, v) in edit.as_object().unwrap() {
            match (config.raw.get_mut(k), v) {
                (Some(Value::Object(old)), Value::Object(new)) => {
                    old.extend(new.clone());
                }
                _ => config.set(k, v.clone()),
            }
        }
        let err = lmflow_models::LlavaModel::from_config(&config, &device).unwrap_err();
        assert!(
            err.to_string().contains(&format!("`{key}`")),
            "{key}: {err}"
        );
    }
}

#[test]
fn inputs_embeds_equal_token_ids_and_are_refused_outside_the_llama_family() {
    let device = Device::flex();
    let llava = load("model", &device);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 20, 30, 40], [1, 4]), &device);
    let lm = llava.model.language_model();
    let plain = values(
        lm.forward(ForwardInput::new(ids.clone()), None)
            .unwrap()
            .logits,
    );
    let embeds = llava.model.embed(&ids, None).unwrap();
    let via = ForwardInput::new(ids.clone()).with_inputs_embeds(embeds.clone());
    assert_eq!(values(lm.forward(via, None).unwrap().logits), plain);
    // A wrong width is an input error, not a panic.
    let bad = ForwardInput::new(ids.clone()).with_inputs_embeds(embeds.narrow(2, 0, 8));
    assert!(matches!(lm.forward(bad, None), Err(ModelError::Input(_))));
    let gpt2 = lmflow_models::ModelConfig::from_json(
        serde_json::json!({"model_type": "gpt2", "vocab_size": 64, "n_embd": 16, "n_layer": 1,
                           "n_head": 2, "n_positions": 32}),
        "config.json".as_ref(),
    )
    .unwrap();
    let gpt2 = lmflow_models::CausalLm::from_config(&gpt2, &device).unwrap();
    let input = ForwardInput::new(ids).with_inputs_embeds(Tensor::zeros([1, 4, 16], &device));
    let err = gpt2.forward(input, None).unwrap_err().to_string();
    assert!(err.contains("inputs_embeds"), "{err}");
}

#[test]
fn linear_hook_sees_module_names_and_can_quantise_the_language_model() {
    let device = Device::flex();
    let dir = fixtures().join("model");
    let config = lmflow_models::ModelConfig::from_dir(&dir).unwrap();
    let weights = lmflow_models::WeightSource::open(&dir, &device, FloatDType::F32).unwrap();
    let nf4 = lmflow_peft::Nf4Config::new();
    let mut seen = Vec::new();
    let model = lmflow_models::LlavaModel::load_with_linear_hook(&config, &weights, &mut |p, l| {
        seen.push(p.to_string());
        if p.starts_with(lmflow_models::llava::LANGUAGE_MODEL_PREFIX) {
            l.quantize_nf4(&nf4);
        }
    })
    .unwrap();
    let mut all = Vec::new();
    model.visit_linears(&mut |p, _| all.push(p.to_string()));
    assert_eq!(seen, all);
    let mut quantised = 0;
    model.visit_linears(&mut |p, l| {
        assert_eq!(
            l.quant.is_some(),
            p.starts_with("model.language_model."),
            "{p}"
        );
        quantised += usize::from(l.quant.is_some());
    });
    assert_eq!(quantised, 14);
    let r = reference();
    let refs = RefTensors::load();
    let entry = &r["variants"]["default"]["cases"]["single"];
    let logits = model
        .forward(
            ForwardInput::new(int2(&entry["input_ids"], &device)),
            refs.pixels("default.single.pixel_values", &device),
            None,
        )
        .unwrap()
        .logits;
    // The same as quantising those layers after a plain load.
    let mut after = load("model", &device).model;
    after.visit_linears_mut(&mut |p, l| {
        if p.starts_with("model.language_model.") {
            l.quantize_nf4(&nf4);
        }
    });
    let want = after
        .forward(
            ForwardInput::new(int2(&entry["input_ids"], &device)),
            refs.pixels("default.single.pixel_values", &device),
            None,
        )
        .unwrap()
        .logits;
    assert_eq!(values(logits), values(want));
}
