//! lmflow-peft against Hugging Face PEFT (fixtures from tests/fixtures/peft_adapters.py, peft 0.21):
//! adapters made by PEFT give PEFT's logits here; merged models match `merge_and_unload`;
//! an adapter saved here loads in PEFT with the same logits (recorded by `peft_adapters.py check`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_models::{CausalLm, ForwardInput, LoadOptions, load_pretrained};
use lmflow_peft::config::{LoraConfig, TargetModules};
use lmflow_peft::{LinearVisitor, LoraAdapter};

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/peft"))
}

fn read(path: &Path) -> HashMap<String, (Vec<usize>, Vec<u8>, safetensors::Dtype)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.data().to_vec(), v.dtype())))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn input_ids(device: &Device) -> Tensor<2, Int> {
    let t = read(&fixtures().join("inputs.safetensors"));
    let (shape, bytes, _) = &t["input_ids"];
    let ids: Vec<i64> = bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Tensor::from_data(TensorData::new(ids, [shape[0], shape[1]]), device)
}

fn load(dir: &str, device: &Device) -> CausalLm {
    load_pretrained(&fixtures().join(dir), device, &LoadOptions::default())
        .unwrap()
        .model
}

fn logits(model: &CausalLm, device: &Device) -> Vec<f32> {
    let out = model
        .forward(ForwardInput::new(input_ids(device)), None)
        .unwrap();
    vec_of(out.logits)
}

fn check_case(case: &str, base: &str) {
    let device = Device::flex();
    let expected = read(&fixtures().join(case).join("expected.safetensors"));
    let mut model = load(base, &device);
    let cfg =
        lmflow_peft::load_adapter(&mut model, &fixtures().join(case), "default", &device).unwrap();
    let got = logits(&model, &device);
    let d = max_diff(&got, &f32s(&expected["logits"].1));
    assert!(d < TOL, "{case}: adapter logits differ from PEFT by {d}");
    // Merged: logits and every merged weight match PEFT's merge_and_unload.
    lmflow_peft::merge_and_unload(&mut model, "default").unwrap();
    let got = logits(&model, &device);
    let d = max_diff(&got, &f32s(&expected["merged_logits"].1));
    assert!(d < TOL, "{case}: merged logits differ from PEFT by {d}");
    let fan_in_fan_out = cfg.fan_in_fan_out;
    let mut compared = 0;
    model.visit_linears(&mut |path, lin| {
        let Some((shape, bytes, _)) = expected.get(&format!("merged.{path}.weight")) else {
            return;
        };
        let mut w = lin.dense_weight();
        if fan_in_fan_out && path != "lm_head" {
            w = w.transpose(); // GPT-2 Conv1D stores [in, out]
        }
        assert_eq!(w.dims().to_vec(), *shape, "{case} {path}");
        let d = max_diff(&vec_of(w), &f32s(bytes));
        assert!(d < 1e-5, "{case} {path}: merged weight differs by {d}");
        compared += 1;
    });
    assert!(compared > 0, "{case}: no merged weight compared");
}

#[test]
fn peft_lora_with_modules_to_save_matches() {
    check_case("lora", "base");
}

#[test]
fn peft_rslora_with_patterns_and_layers_to_transform_matches() {
    check_case("rslora", "base");
}

#[test]
fn peft_dora_matches() {
    check_case("dora", "base");
}

#[test]
fn peft_all_linear_matches() {
    check_case("all_linear", "base");
}

#[test]
fn peft_regex_targets_match() {
    check_case("regex", "base");
}

#[test]
fn peft_gpt2_fan_in_fan_out_matches() {
    check_case("gpt2_lora", "gpt2_base");
}

/// The adapter this test saves: deterministic values, rsLoRA + DoRA, on three module kinds.
fn rust_adapter(model: &mut CausalLm) -> LoraConfig {
    let mut cfg = LoraConfig::new(
        2,
        4.0,
        TargetModules::Names(vec!["q_proj".into(), "k_proj".into(), "up_proj".into()]),
    );
    cfg.use_rslora = true;
    cfg.use_dora = true;
    cfg.base_model_name_or_path = Some("../base".into());
    cfg.extra
        .insert("lmflow_note".into(), "saved by lmflow-peft".into());
    lmflow_peft::inject_adapter(model, &cfg, "default").unwrap();
    let mut k = 0usize;
    model.visit_linears_mut(&mut |_, lin| {
        let Some(ad) = lin.adapter_mut("default") else {
            return;
        };
        k += 1;
        let device = ad.lora_a.device();
        let fill = |shape: [usize; 2], salt: f32| {
            let v: Vec<f32> = (0..shape[0] * shape[1])
                .map(|i| 0.1 * ((i as f32) * 0.37 + salt).sin())
                .collect();
            Tensor::<2>::from_data(TensorData::new(v, shape), &device)
        };
        let a = fill(ad.lora_a.dims(), k as f32);
        let b = fill(ad.lora_b.dims(), 2.0 * k as f32);
        let m = ad.magnitude.as_ref().unwrap().val() * 1.1;
        *ad = LoraAdapter::from_tensors("default", a, b, Some(m), ad.scale, 0.0);
    });
    cfg
}

#[test]
fn adapter_saved_here_loads_in_peft() {
    let device = Device::flex();
    let mut model = load("base", &device);
    let cfg = rust_adapter(&mut model);
    let ours = logits(&model, &device);
    let dir = fixtures().join("rust_saved");
    if std::env::var_os("LMFLOW_WRITE_FIXTURES").is_some() {
        lmflow_peft::save_adapter(&mut model, &cfg, "default", &dir).unwrap();
        let bytes: Vec<u8> = ours.iter().flat_map(|x| x.to_le_bytes()).collect();
        let n = ours.len();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![2, 7, n / 14],
            &bytes,
        )
        .unwrap();
        safetensors::serialize_to_file(
            [("logits", view)],
            None,
            &dir.join("rust_logits.safetensors"),
        )
        .unwrap();
    }
    // What we save now is what PEFT checked (tensors and config).
    let tmp = tempfile::tempdir().unwrap();
    lmflow_peft::save_adapter(&mut model, &cfg, "default", tmp.path()).unwrap();
    let now = read(&tmp.path().join("adapter_model.safetensors"));
    let committed = read(&dir.join("adapter_model.safetensors"));
    assert_eq!(
        now.keys().collect::<std::collections::BTreeSet<_>>(),
        committed.keys().collect()
    );
    for (k, (shape, bytes, _)) in &now {
        assert_eq!(shape, &committed[k].0, "{k}");
        let d = max_diff(&f32s(bytes), &f32s(&committed[k].1));
        assert!(d < 1e-6, "{k} differs from the committed fixture by {d}");
    }
    let cfg_now: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let cfg_committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_now, cfg_committed);
    // PEFT's record.
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("peft_check.json"))
            .expect("run `tests/fixtures/peft_adapters.py check`"),
    )
    .unwrap();
    assert!(
        rec["max_abs_diff_vs_rust"].as_f64().unwrap() < TOL as f64,
        "{rec}"
    );
    assert!(
        rec["max_abs_diff_merged_vs_rust"].as_f64().unwrap() < TOL as f64,
        "{rec}"
    );
    let peft: Vec<f32> = rec["peft_logits_flat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let d = max_diff(&ours[..peft.len()], &peft);
    assert!(d < TOL, "PEFT's logits for our adapter differ by {d}");
}

#[test]
fn qlora_on_a_loaded_model_reports_base_memory() {
    let device = Device::flex();
    let mut model = load("base", &device);
    let dense_logits = logits(&model, &device);
    let cfg = lmflow_peft::nf4::Nf4Config::new();
    let (mut dense, mut quant, mut data, mut n) = (0usize, 0usize, 0usize, 0usize);
    model.visit_linears_mut(&mut |path, lin| {
        if path == "lm_head" {
            return;
        }
        lin.quantize_nf4(&cfg);
        let q = lin.quant.as_ref().unwrap();
        dense += 4 * q.rows * q.cols;
        quant += q.storage_bytes();
        data += q.data_bytes();
        n += q.rows * q.cols;
    });
    let bits = 8.0 * quant as f64 / n as f64;
    let data_bits = 8.0 * data as f64 / n as f64;
    eprintln!(
        "NF4 frozen base: {quant} B for {n} weights ({bits:.3} bits/weight with tables, \
         {data_bits:.3} without; f32 {dense} B)"
    );
    // 4 bits + 8 bits / 64 + 32 bits / (64 * 256) with double quantisation (+ offset and
    // padding of partial blocks). The constant tables (1 KiB per layer) dominate on these
    // 1K-weight toy layers, so they are reported, not bounded, here.
    assert!(data_bits < 4.2, "{data_bits}");
    // Logits stay close to the dense model (NF4 error only).
    let q_logits = logits(&model, &device);
    let d = max_diff(&q_logits, &dense_logits);
    assert!(d > 0.0 && d < 0.5, "NF4 logits differ by {d}");
    // LoRA on top of the NF4 base: adapters present, base still quantised.
    let lcfg = LoraConfig::new(4, 8.0, TargetModules::Pattern("all-linear".into()));
    let report = lmflow_peft::inject_adapter(&mut model, &lcfg, "default").unwrap();
    assert_eq!(report.adapted.len(), 2 * 7);
    // A fresh LoRA (B = 0) leaves the NF4 model's logits unchanged.
    let adapted = logits(&model, &device);
    let d = max_diff(&adapted, &q_logits);
    assert!(d < 1e-5, "fresh adapters changed the NF4 logits by {d}");
}

#[test]
fn merged_model_saved_as_hub_folder_matches_peft() {
    // What `lmflow merge` does: load base + adapter, merge_and_unload, save a full folder.
    let device = Device::flex();
    let expected = read(&fixtures().join("dora/expected.safetensors"));
    let mut pretrained =
        load_pretrained(&fixtures().join("base"), &device, &LoadOptions::default()).unwrap();
    lmflow_peft::load_adapter(
        &mut pretrained.model,
        &fixtures().join("dora"),
        "default",
        &device,
    )
    .unwrap();
    lmflow_peft::merge_and_unload(&mut pretrained.model, "default").unwrap();
    let out = tempfile::tempdir().unwrap();
    pretrained.save(out.path()).unwrap();
    let reloaded = load_pretrained(out.path(), &device, &LoadOptions::default()).unwrap();
    let mut adapters = 0;
    reloaded
        .model
        .visit_linears(&mut |_, lin| adapters += lin.adapters.len());
    assert_eq!(adapters, 0);
    let d = max_diff(
        &logits(&reloaded.model, &device),
        &f32s(&expected["merged_logits"].1),
    );
    assert!(
        d < TOL,
        "saved merged model differs from PEFT's merge by {d}"
    );
}
