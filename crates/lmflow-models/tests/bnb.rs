//! bitsandbytes-quantised Hub checkpoints (`tests/fixtures/bnb_nf4.py`: transformers +
//! bitsandbytes 0.50 quantised and saved them): NF4 layers are read straight into NF4,
//! dequantise to exactly bitsandbytes' values, and the logits match transformers running the
//! same folder; unsupported quantisation settings are refused by name.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_models::{ForwardInput, LoadOptions, ModelError, load_pretrained};
use lmflow_peft::LinearVisitor;

/// transformers computes the reference in f32 from the same stored weights; the remaining
/// difference is summation order (logits here are O(1)).
const LOGITS_TOL: f32 = 1e-4;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/bnb")
        .join(case)
}

fn expected(case: &str) -> BTreeMap<String, (Vec<u8>, Vec<usize>)> {
    let bytes = std::fs::read(fixture(case).join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.data().to_vec(), v.shape().to_vec())))
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn i64s(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Loads `case`, checks its NF4 layers against bitsandbytes' dequantisation and its logits
/// against transformers'. Returns the number of NF4 layers.
fn check_case(case: &str, dense_layers: &[&str]) -> usize {
    let device = Device::flex();
    let p = load_pretrained(&fixture(case), &device, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let want = expected(case);
    let mut quantised = 0;
    let mut dense = Vec::new();
    p.model.visit_linears(&mut |path, lin| {
        match &lin.quant {
            Some(q) => {
                quantised += 1;
                // No dense copy of a quantised layer is kept.
                assert_eq!(lin.weight.dims()[0], 0, "{case}: {path}");
                if let Some((bytes, shape)) = want.get(&format!("dequant.{path}")) {
                    let got = q.dequantize();
                    assert_eq!(got.dims().to_vec(), *shape, "{case}: {path}");
                    let got: Vec<f32> = got.into_data().try_into_vec().unwrap();
                    let want = f32s(bytes);
                    // Bit-for-bit: same levels, same absmax (double quantisation included),
                    // same rounding to the quant_state dtype.
                    let diff = got
                        .iter()
                        .zip(&want)
                        .filter(|(a, b)| a.to_bits() != b.to_bits())
                        .count();
                    assert_eq!(
                        diff, 0,
                        "{case}: {path}: {diff} values differ from bitsandbytes"
                    );
                }
            }
            None => dense.push(path.to_string()),
        }
    });
    assert_eq!(dense, dense_layers, "{case}: layers left unquantised");
    for key in want.keys().filter(|k| k.starts_with("dequant.")) {
        assert!(
            p.model
                .linear_paths()
                .contains(&key["dequant.".len()..].to_string()),
            "{case}: {key} not a layer"
        );
    }
    // Every stored tensor is read: the packed codes and all their quantisation companions.
    let weights =
        lmflow_models::WeightSource::open(&fixture(case), &device, burn::tensor::FloatDType::F32)
            .unwrap();
    lmflow_models::CausalLm::load(&p.config, &weights).unwrap();
    assert_eq!(weights.unused(), Vec::<String>::new(), "{case}");
    let (ids, ids_shape) = &want["input_ids"];
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(i64s(ids), [ids_shape[0], ids_shape[1]]),
        &device,
    );
    let logits = p
        .model
        .forward(ForwardInput::new(ids), None)
        .unwrap()
        .logits;
    let got: Vec<f32> = logits.into_data().try_into_vec().unwrap();
    let (bytes, _) = &want["logits"];
    let err = max_abs(&got, &f32s(bytes));
    eprintln!("{case}: max |logits - transformers| = {err:e}");
    assert!(
        err <= LOGITS_TOL,
        "{case}: logits differ from transformers + bitsandbytes by {err}"
    );
    quantised
}

trait Paths {
    fn linear_paths(&self) -> Vec<String>;
}

impl<M: LinearVisitor> Paths for M {
    fn linear_paths(&self) -> Vec<String> {
        let mut v = Vec::new();
        self.visit_linears(&mut |path, _| v.push(path.to_string()));
        v
    }
}

#[test]
fn llama_nf4_double_quant_bf16_checkpoint_matches_bitsandbytes() {
    // 4 layers × 7 linears; the head is tied to the (bf16-stored) embedding.
    assert_eq!(check_case("tiny-llama-nf4", &[]), 28);
}

#[test]
fn qwen2_nf4_f32_checkpoint_with_biases_and_untied_head_matches_bitsandbytes() {
    // 2 layers × 7 linears; q/k/v biases are ordinary tensors; lm_head stays dense.
    assert_eq!(check_case("qwen2-nf4", &["lm_head"]), 14);
}

#[test]
fn bnb_checkpoint_loads_through_the_linear_hook_and_bf16() {
    let device = Device::flex();
    let mut seen = Vec::new();
    let p = lmflow_models::model::load_pretrained_with_linear_hook(
        &fixture("tiny-llama-nf4"),
        &device,
        &LoadOptions::default(),
        &mut |path, lin| {
            seen.push((path.to_string(), lin.quant.is_some()));
            // What `finetune --qlora` does: a no-op on a layer that is NF4 already.
            lin.quantize_nf4(&lmflow_peft::Nf4Config::new());
        },
    )
    .unwrap();
    assert_eq!(seen.len(), 28);
    assert!(seen.iter().all(|(_, q)| *q), "hook saw a dense layer");
    let bnb = lmflow_models::bnb::bnb_quantization(&p.config)
        .unwrap()
        .unwrap();
    assert!(bnb.double_quant);
    assert_eq!(bnb.compute_dtype.as_deref(), Some("bfloat16"));
    // Non-quantised tensors are stored bf16; loading in bf16 keeps them and runs.
    let opts = LoadOptions {
        dtype: Some(burn::tensor::FloatDType::BF16),
        ..Default::default()
    };
    let p16 = load_pretrained(&fixture("tiny-llama-nf4"), &device, &opts).unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9], [1, 3]), &device);
    let logits = p16
        .model
        .forward(ForwardInput::new(ids), None)
        .unwrap()
        .logits;
    assert_eq!(logits.dtype(), burn::tensor::DType::BF16);
    assert_eq!(logits.dims(), [1, 3, 2048]);
}

#[test]
fn saving_a_bnb_model_writes_a_dense_folder() {
    let device = Device::flex();
    let p = load_pretrained(&fixture("qwen2-nf4"), &device, &LoadOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    p.save(tmp.path()).unwrap();
    let config = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    assert!(!config.contains("quantization_config"), "{config}");
    let q = load_pretrained(tmp.path(), &device, &LoadOptions::default()).unwrap();
    let mut n = 0;
    q.model.visit_linears(&mut |_, lin| {
        assert!(lin.quant.is_none());
        n += 1;
    });
    assert_eq!(n, 15);
    let ids = || Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 7, 11], [1, 3]), &device);
    let a: Vec<f32> = p
        .model
        .forward(ForwardInput::new(ids()), None)
        .unwrap()
        .logits
        .into_data()
        .try_into_vec()
        .unwrap();
    let b: Vec<f32> = q
        .model
        .forward(ForwardInput::new(ids()), None)
        .unwrap()
        .logits
        .into_data()
        .try_into_vec()
        .unwrap();
    assert!(max_abs(&a, &b) <= 1e-6);
}

/// A copy of the llama fixture whose `quantization_config` is edited by `edit`.
fn with_quantization_config(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = fixture("tiny-llama-nf4");
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config["quantization_config"]);
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    tmp
}

fn load_err(dir: &Path) -> String {
    let err = load_pretrained(dir, &Device::flex(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::Quantization { .. }), "{err:?}");
    err.to_string()
}

#[test]
fn unsupported_quantisation_settings_are_refused_by_name() {
    let eight = with_quantization_config(|q| {
        q["load_in_4bit"] = false.into();
        q["_load_in_4bit"] = false.into();
        q["load_in_8bit"] = true.into();
        q["_load_in_8bit"] = true.into();
    });
    let msg = load_err(eight.path());
    assert!(
        msg.contains("load_in_8bit") && msg.contains("not supported"),
        "{msg}"
    );

    let fp4 = with_quantization_config(|q| q["bnb_4bit_quant_type"] = "fp4".into());
    let msg = load_err(fp4.path());
    assert!(
        msg.contains("bnb_4bit_quant_type") && msg.contains("fp4"),
        "{msg}"
    );

    let gptq = with_quantization_config(|q| q["quant_method"] = "gptq".into());
    let msg = load_err(gptq.path());
    assert!(msg.contains("gptq"), "{msg}");

    let storage = with_quantization_config(|q| q["bnb_4bit_quant_storage"] = "bfloat16".into());
    let msg = load_err(storage.path());
    assert!(msg.contains("uint8"), "{msg}");
}

#[test]
fn damaged_quantisation_tensors_name_the_layer() {
    // Drop one layer's absmax from the checkpoint.
    let src = fixture("tiny-llama-nf4");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let victim = "model.layers.1.self_attn.v_proj.weight.absmax";
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| k != victim)
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    safetensors::serialize_to_file(kept, None, &tmp.path().join("model.safetensors")).unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains(victim), "{msg}");
}

#[test]
fn sharded_bnb_checkpoint_loads_with_a_layer_split_across_shards() {
    // Every other tensor to the second shard: a layer's packed codes and their absmax /
    // quant_state end up in different files.
    let src = fixture("qwen2-nf4");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut map = serde_json::Map::new();
    for shard in 0..2 {
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        let part: Vec<(String, safetensors::tensor::TensorView<'_>)> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == shard)
            .map(|(_, n)| {
                map.insert(n.clone(), file.clone().into());
                (n.clone(), st.tensor(n).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(part, None, &tmp.path().join(&file)).unwrap();
    }
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let device = Device::flex();
    let a = load_pretrained(&src, &device, &LoadOptions::default()).unwrap();
    let b = load_pretrained(tmp.path(), &device, &LoadOptions::default()).unwrap();
    let ids = || Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 7, 11], [1, 3]), &device);
    let la: Vec<f32> = a
        .model
        .forward(ForwardInput::new(ids()), None)
        .unwrap()
        .logits
        .into_data()
        .try_into_vec()
        .unwrap();
    let lb: Vec<f32> = b
        .model
        .forward(ForwardInput::new(ids()), None)
        .unwrap()
        .logits
        .into_data()
        .try_into_vec()
        .unwrap();
    assert_eq!(la, lb);
}
