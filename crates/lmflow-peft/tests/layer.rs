//! Layer-level tests of lmflow-peft on a toy model (no lmflow-models needed): LoRA / DoRA
//! math, merge, targeting, save/load, training (frozen base, rank scaling), PiSSA, NF4
//! against bitsandbytes fixtures, QLoRA training, LISA.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use lmflow_peft::config::{LayerIndices, LoraConfig, TargetModules};
use lmflow_peft::lisa::{Lisa, LisaConfig};
use lmflow_peft::nf4::{self, Nf4Config, Nf4Weight};
use lmflow_peft::trainable::{count_params, float_params};
use lmflow_peft::{Linear, LinearConfig, LinearVisitor, LoraAdapter, LoraInit};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/peft"
    ))
}

fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    vec_of(a)
        .iter()
        .zip(vec_of(b))
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn randn<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

#[derive(Module, Debug)]
struct Block {
    up_proj: Linear,
    down_proj: Linear,
    norm: Param<Tensor<1>>,
}

/// `x -> layers (residual MLP) -> lm_head`, paths like a Hub model.
#[derive(Module, Debug)]
struct Toy {
    embed_tokens: Param<Tensor<2>>,
    layers: Vec<Block>,
    lm_head: Linear,
}

impl Toy {
    fn new(d: usize, hidden: usize, n_layers: usize, vocab: usize, device: &Device) -> Self {
        Self {
            embed_tokens: Param::from_tensor(randn([vocab, d], device)),
            layers: (0..n_layers)
                .map(|_| Block {
                    up_proj: LinearConfig::new(d, hidden).init(device),
                    down_proj: LinearConfig::new(hidden, d).with_bias(false).init(device),
                    norm: Param::from_tensor(Tensor::ones([d], device)),
                })
                .collect(),
            lm_head: LinearConfig::new(d, vocab).with_bias(false).init(device),
        }
    }

    /// # Shapes: x `[n, d]` -> `[n, vocab]`
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for b in &self.layers {
            let y = b
                .down_proj
                .forward(burn::tensor::activation::relu(b.up_proj.forward(h.clone())));
            h = h + y * b.norm.val().unsqueeze();
        }
        self.lm_head.forward(h)
    }
}

impl LinearVisitor for Toy {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
        for (i, b) in self.layers.iter().enumerate() {
            f(&format!("model.layers.{i}.mlp.up_proj"), &b.up_proj);
            f(&format!("model.layers.{i}.mlp.down_proj"), &b.down_proj);
        }
        f("lm_head", &self.lm_head);
    }
    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
        for (i, b) in self.layers.iter_mut().enumerate() {
            f(&format!("model.layers.{i}.mlp.up_proj"), &mut b.up_proj);
            f(&format!("model.layers.{i}.mlp.down_proj"), &mut b.down_proj);
        }
        f("lm_head", &mut self.lm_head);
    }
    fn visit_embeddings_mut(&mut self, f: &mut dyn FnMut(&str, &mut Param<Tensor<2>>)) {
        f("model.embed_tokens", &mut self.embed_tokens);
    }
}

fn names(v: &[&str]) -> TargetModules {
    TargetModules::Names(v.iter().map(|s| s.to_string()).collect())
}

fn adapted_linear(d_in: usize, d_out: usize, r: usize, dora: bool, device: &Device) -> Linear {
    let mut lin = LinearConfig::new(d_in, d_out).init(device);
    let (ad, _) = LoraAdapter::init(
        "default",
        lin.weight.val(),
        r,
        2.0,
        0.0,
        &LoraInit::Random,
        dora,
    )
    .unwrap();
    lin.adapters.push(ad);
    lin.active_adapter = Some("default".into());
    lin
}

#[test]
fn lora_forward_equals_dense_formula() {
    let device = Device::flex();
    let lin = adapted_linear(12, 7, 3, false, &device);
    let x = randn([2, 5, 12], &device);
    let ad = &lin.adapters[0];
    let w_eff = lin.weight.val() + ad.lora_b.val().matmul(ad.lora_a.val()).mul_scalar(ad.scale);
    let want = x.clone().matmul(w_eff.transpose().unsqueeze::<3>())
        + lin.bias.as_ref().unwrap().val().unsqueeze();
    assert!(max_diff(lin.forward(x), want) < 1e-5);
}

#[test]
fn dora_forward_and_merge_match_peft_formula() {
    let device = Device::flex();
    let mut lin = adapted_linear(10, 6, 2, true, &device);
    // Non-trivial magnitude.
    let m = lin.adapters[0].magnitude.take().unwrap().val();
    lin.adapters[0].magnitude = Some(Param::from_tensor(m * 1.3 - 0.05));
    let ad = &lin.adapters[0];
    let w = lin.weight.val();
    let v = w.clone() + ad.delta_weight();
    let norm = v.clone().square().sum_dim(1).sqrt(); // [out, 1]
    let direct_norm = norm.clone().reshape([6]);
    assert!(max_diff(ad.dora_weight_norm(w.clone()), direct_norm) < 1e-5);
    let w_dora = v / norm * ad.magnitude.as_ref().unwrap().val().unsqueeze_dim::<2>(1);
    let x = randn([4, 10], &device);
    let bias = lin.bias.as_ref().unwrap().val();
    let want = x.clone().matmul(w_dora.clone().transpose()) + bias.unsqueeze();
    let got = lin.forward(x.clone());
    assert!(max_diff(got.clone(), want.clone()) < 1e-5);
    // Merge: same outputs, weight = PEFT's merged weight; unmerge restores.
    let w0 = lin.weight.val();
    lin.merge("default").unwrap();
    assert!(max_diff(lin.weight.val(), w_dora) < 1e-5);
    assert!(max_diff(lin.forward(x.clone()), want) < 1e-5);
    lin.unmerge("default").unwrap();
    assert!(max_diff(lin.weight.val(), w0) < 1e-5);
    assert!(max_diff(lin.forward(x), got) < 1e-5);
}

#[test]
fn lora_merge_unmerge_and_multiple_adapters() {
    let device = Device::flex();
    let mut lin = adapted_linear(8, 8, 2, false, &device);
    let (second, _) = LoraAdapter::init(
        "other",
        lin.weight.val(),
        4,
        1.0,
        0.0,
        &LoraInit::Random,
        false,
    )
    .unwrap();
    lin.adapters.push(second);
    let x = randn([3, 8], &device);
    let y_default = lin.forward(x.clone());
    lin.active_adapter = Some("other".into());
    let y_other = lin.forward(x.clone());
    assert!(max_diff(y_default.clone(), y_other.clone()) > 1e-3);
    lin.active_adapter = None;
    let y_base = lin.forward(x.clone());
    let w0 = lin.weight.val();
    lin.merge("other").unwrap();
    assert!(max_diff(lin.forward(x.clone()), y_other) < 1e-5);
    lin.unmerge("other").unwrap();
    assert!(max_diff(lin.weight.val(), w0) < 1e-6);
    assert!(max_diff(lin.forward(x), y_base) < 1e-6);
}

#[test]
fn targeting_follows_peft_rules() {
    let device = Device::flex();
    let check = |cfg: LoraConfig, want: &[&str]| {
        let mut toy = Toy::new(8, 16, 3, 11, &device);
        let report = lmflow_peft::inject_adapter(&mut toy, &cfg, "default").unwrap();
        assert_eq!(report.adapted, want, "{:?}", cfg.target_modules);
    };
    check(
        LoraConfig::new(2, 4.0, names(&["up_proj"])),
        &[
            "model.layers.0.mlp.up_proj",
            "model.layers.1.mlp.up_proj",
            "model.layers.2.mlp.up_proj",
        ],
    );
    check(
        LoraConfig::new(
            2,
            4.0,
            TargetModules::Pattern(r".*\.1\.mlp\.(up|down)_proj".into()),
        ),
        &["model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"],
    );
    let mut all = LoraConfig::new(2, 4.0, TargetModules::Pattern("all-linear".into()));
    all.layers_to_transform = Some(LayerIndices::Many(vec![0, 2]));
    check(
        all,
        &[
            "model.layers.0.mlp.up_proj",
            "model.layers.0.mlp.down_proj",
            "model.layers.2.mlp.up_proj",
            "model.layers.2.mlp.down_proj",
        ],
    );
    // rank_pattern / alpha_pattern.
    let mut cfg = LoraConfig::new(4, 8.0, names(&["up_proj", "down_proj"]));
    cfg.rank_pattern.insert("down_proj".into(), 2);
    cfg.alpha_pattern
        .insert(r"layers\.1\.mlp\.up_proj".into(), 2.0);
    let mut toy = Toy::new(8, 16, 2, 11, &device);
    lmflow_peft::inject_adapter(&mut toy, &cfg, "default").unwrap();
    assert_eq!(toy.layers[0].down_proj.adapters[0].rank(), 2);
    assert_eq!(toy.layers[0].up_proj.adapters[0].rank(), 4);
    assert_eq!(toy.layers[0].up_proj.adapters[0].scale, 2.0);
    assert_eq!(toy.layers[1].up_proj.adapters[0].scale, 0.5);
    // Nothing matched is an error.
    let mut toy = Toy::new(8, 16, 2, 11, &device);
    assert!(
        lmflow_peft::inject_adapter(&mut toy, &LoraConfig::new(2, 2.0, names(&["q_proj"])), "d")
            .is_err()
    );
}

#[test]
fn save_load_round_trip_with_modules_to_save() {
    let device = Device::flex();
    let mut cfg = LoraConfig::new(3, 6.0, names(&["up_proj", "down_proj"]));
    cfg.init_lora_weights = lmflow_peft::InitLoraWeights::Bool(false);
    cfg.use_dora = true;
    cfg.modules_to_save = Some(vec!["lm_head".into(), "embed_tokens".into()]);
    cfg.extra
        .insert("future_field".into(), serde_json::json!([1, 2]));
    let toy = Toy::new(8, 16, 2, 11, &device);
    let (mut toy, report) = lmflow_peft::get_peft_model(toy, &cfg, "default").unwrap();
    assert_eq!(report.saved_linears, ["lm_head"]);
    assert_eq!(report.saved_embeddings, ["model.embed_tokens"]);
    toy.embed_tokens = Param::from_tensor(toy.embed_tokens.val() + 0.5);
    let x = randn([3, 8], &device);
    let y = toy.forward(x.clone());
    let dir = tempfile::tempdir().unwrap();
    lmflow_peft::save_adapter(&mut toy, &cfg, "default", dir.path()).unwrap();
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["future_field"], serde_json::json!([1, 2]));
    assert_eq!(saved["peft_type"], "LORA");
    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut keys: Vec<String> = st.names().into_iter().map(String::from).collect();
    keys.sort();
    assert!(
        keys.contains(&"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight".to_string())
    );
    assert!(keys.contains(
        &"base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector".to_string()
    ));
    assert!(keys.contains(&"base_model.model.lm_head.weight".to_string()));
    assert!(keys.contains(&"base_model.model.model.embed_tokens.weight".to_string()));
    assert_eq!(
        st.tensor("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight")
            .unwrap()
            .shape(),
        [3, 8]
    );
    assert_eq!(
        st.tensor("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight")
            .unwrap()
            .shape(),
        [16, 3]
    );

    // Load into a fresh copy of the *base*: rebuild the base from the adapted model.
    let mut fresh = toy.clone();
    lmflow_peft::unload(&mut fresh).unwrap();
    fresh.embed_tokens = Param::from_tensor(fresh.embed_tokens.val() - 0.5);
    let loaded = lmflow_peft::load_adapter(&mut fresh, dir.path(), "default", &device).unwrap();
    assert_eq!(loaded.extra["future_field"], serde_json::json!([1, 2]));
    assert!(max_diff(fresh.forward(x), y) < 1e-5);
    // Loading twice under one name is an error; an unknown peft_type is an error.
    assert!(lmflow_peft::load_adapter(&mut fresh, dir.path(), "default", &device).is_err());
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"peft_type":"PREFIX_TUNING"}"#,
    )
    .unwrap();
    let err = lmflow_peft::load_adapter(&mut fresh, dir.path(), "x", &device).unwrap_err();
    assert!(err.to_string().contains("peft_type"), "{err}");
}

/// Rewrites `key` of a saved adapter's `adapter_config.json`.
fn edit_adapter_config(dir: &std::path::Path, key: &str, value: serde_json::Value) {
    let path = dir.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
}

#[test]
fn adapters_are_refused_as_peft_refuses_them() {
    let device = Device::flex();
    let cfg = LoraConfig::new(4, 8.0, names(&["up_proj", "down_proj"]));
    let (mut toy, _) =
        lmflow_peft::get_peft_model(Toy::new(8, 16, 2, 11, &device), &cfg, "default").unwrap();
    let dir = tempfile::tempdir().unwrap();
    lmflow_peft::save_adapter(&mut toy, &cfg, "default", dir.path()).unwrap();
    let base = || {
        let mut b = toy.clone();
        lmflow_peft::unload(&mut b).unwrap();
        b
    };
    assert!(lmflow_peft::load_adapter(&mut base(), dir.path(), "default", &device).is_ok());

    // The config's r differs from the tensors' rank: the scale alpha / r would be wrong.
    edit_adapter_config(dir.path(), "r", serde_json::json!(8));
    let err = lmflow_peft::load_adapter(&mut base(), dir.path(), "default", &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank 4") && err.contains("r = 8"), "{err}");
    // rank_pattern is honoured.
    edit_adapter_config(
        dir.path(),
        "rank_pattern",
        serde_json::json!({"up_proj": 4, "down_proj": 4}),
    );
    assert!(lmflow_peft::load_adapter(&mut base(), dir.path(), "default", &device).is_ok());
    edit_adapter_config(dir.path(), "rank_pattern", serde_json::json!({}));
    edit_adapter_config(dir.path(), "r", serde_json::json!(4));

    // target_modules that match no layer of the model.
    edit_adapter_config(dir.path(), "target_modules", serde_json::json!(["q_proj"]));
    let err = lmflow_peft::load_adapter(&mut base(), dir.path(), "default", &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("matches target_modules"), "{err}");
    // target_modules that match some layers, but not the ones the tensors adapt.
    edit_adapter_config(dir.path(), "target_modules", serde_json::json!(["up_proj"]));
    let err = lmflow_peft::load_adapter(&mut base(), dir.path(), "default", &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("down_proj"), "{err}");
}

#[test]
fn absurd_ranks_and_non_finite_alphas_are_refused_before_allocating() {
    let device = Device::flex();
    let cfg = LoraConfig::new(1_000_000_000_000, 8.0, names(&["up_proj"]));
    let err = lmflow_peft::get_peft_model(Toy::new(8, 16, 1, 11, &device), &cfg, "default")
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank 1000000000000"), "{err}");
    for alpha in [f64::NAN, f64::INFINITY] {
        let cfg = LoraConfig::new(2, alpha, names(&["up_proj"]));
        let err = lmflow_peft::get_peft_model(Toy::new(8, 16, 1, 11, &device), &cfg, "default")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lora_alpha"), "{err}");
    }
}

#[test]
fn training_step_touches_only_adapters() {
    let device = Device::flex().autodiff();
    let cfg = LoraConfig::new(2, 4.0, names(&["up_proj", "down_proj"]));
    let toy = Toy::new(8, 16, 2, 11, &device);
    let (toy, _) = lmflow_peft::get_peft_model(toy, &cfg, "default").unwrap();
    let params = float_params(&toy);
    let adapter_ids: Vec<_> = params
        .iter()
        .filter(|p| p.0.contains("adapters"))
        .map(|p| p.1)
        .collect();
    let base_ids: Vec<_> = params
        .iter()
        .filter(|p| !p.0.contains("adapters"))
        .map(|p| p.1)
        .collect();
    assert_eq!(adapter_ids.len(), 8);
    let (trainable, total) = count_params(&toy);
    assert_eq!(trainable, 2 * (2 * 8 + 16 * 2 + 2 * 16 + 8 * 2));
    assert!(total > 4 * trainable);

    let x = randn([5, 8], &device);
    let loss = toy.forward(x).square().mean();
    let grads = GradientsParams::from_grads(loss.backward(), &toy);
    for id in &adapter_ids {
        assert!(grads.get::<2>(*id).is_some() || grads.get::<1>(*id).is_some());
    }
    for id in &base_ids {
        assert!(grads.get::<2>(*id).is_none() && grads.get::<1>(*id).is_none());
    }
    assert_eq!(grads.len(), adapter_ids.len());

    // Optimizer state exists for adapter tensors only.
    let mut probe = AdamWConfig::new().init();
    let lin = adapted_linear(4, 4, 2, false, &device);
    let lin = lmflow_peft::trainable::mark_only_adapters_trainable(lin);
    let l = lin.forward(randn([2, 4], &device)).sum();
    let g = GradientsParams::from_grads(l.backward(), &lin);
    let _ = probe.step(1e-3, lin, g);
    let per_param = probe.to_record().len() / 2;
    assert!(per_param >= 1);
    let mut optim = AdamWConfig::new().init();
    let before: Vec<f32> = vec_of(toy.layers[0].up_proj.weight.val());
    let toy = optim.step(1e-2, toy, grads);
    assert_eq!(optim.to_record().len(), per_param * adapter_ids.len());
    assert_eq!(vec_of(toy.layers[0].up_proj.weight.val()), before);
}

// That adapters never form `B·A` (nor a weight-sized gradient) is checked by counting
// allocations in tests/no_weight_copy.rs.

#[test]
fn pissa_splits_weight_into_residual_and_principal_part() {
    let device = Device::flex();
    let w = randn([12, 9], &device);
    let (ad, residual) =
        LoraAdapter::init("p", w.clone(), 3, 0.5, 0.0, &LoraInit::Pissa, false).unwrap();
    // W = residual + s B A exactly.
    assert!(max_diff(residual.clone() + ad.delta_weight(), w.clone()) < 1e-5);
    // B A is the best rank-3 approximation: the residual's spectral content is the tail, so
    // ||residual||_F^2 = ||W||_F^2 - ||s B A||_F^2.
    let n = |t: Tensor<2>| vec_of(t.square().sum())[0];
    let (nw, nr, np) = (n(w), n(residual), n(ad.delta_weight()));
    assert!((nw - nr - np).abs() < 1e-3 * nw, "{nw} {nr} {np}");
    // A's rows are orthogonal (scaled right singular vectors).
    let aat = vec_of(ad.lora_a.val().matmul(ad.lora_a.val().transpose()));
    assert!(aat[1].abs() < 1e-4 && aat[2].abs() < 1e-4 && aat[5].abs() < 1e-4);
}

fn read_fixture(
    path: &std::path::Path,
) -> std::collections::HashMap<String, (Vec<usize>, Vec<u8>, safetensors::Dtype)> {
    let bytes = std::fs::read(path).unwrap();
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

#[test]
fn nf4_matches_bitsandbytes() {
    let device = Device::flex();
    let r = read_fixture(&fixtures().join("nf4/reference.safetensors"));
    let input = f32s(&r["input"].1);
    let code = f32s(&r["nf4_code"].1);
    assert_eq!(code, nf4::NF4_CODE.to_vec());
    let map = f32s(&r["dynamic_map"].1);
    let ours = nf4::dynamic_map();
    let bad: Vec<(usize, f32, f32)> = map
        .iter()
        .zip(&ours)
        .enumerate()
        .filter(|(_, (a, b))| (*a - *b).abs() > 1e-7 * a.abs())
        .map(|(i, (a, b))| (i, *a, *b))
        .collect();
    assert!(bad.is_empty(), "dynamic map differs: {bad:?}");

    // Plain: packed codes and absmax bit-identical, dequantised values equal.
    let host = nf4::quantize_nf4(&input, 64);
    assert_eq!(host.packed, r["plain.packed"].1);
    assert_eq!(host.absmax, f32s(&r["plain.absmax"].1));
    let cfg = Nf4Config::new().with_double_quant(false);
    let w = Nf4Weight::from_host(&input, 48, 64, &cfg, &device);
    let want = f32s(&r["plain.dequant"].1);
    let got = vec_of(w.dequantize());
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));

    // Double quantisation: same 4-bit codes, absmax codes equal, dequantised equal.
    assert_eq!(r["double.packed"].1, r["plain.packed"].1);
    let offset = f32s(&r["double.offset"].1)[0];
    let centred: Vec<f32> = host.absmax.iter().map(|x| x - offset).collect();
    let q = nf4::quantize_blockwise_dynamic(&centred, &map, 256);
    assert_eq!(q.codes, r["double.absmax_q"].1);
    assert_eq!(q.absmax, f32s(&r["double.absmax2"].1));
    let wd = Nf4Weight::from_host(&input, 48, 64, &Nf4Config::new(), &device);
    let want = f32s(&r["double.dequant"].1);
    let got = vec_of(wd.dequantize());
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() < 1e-5 * b.abs().max(1.0))
    );
    // About 4.5 bits per weight without double quantisation (plus the 16-entry table).
    assert!(
        (w.bits_per_weight() - 4.5).abs() < 0.2,
        "{}",
        w.bits_per_weight()
    );
}

#[test]
fn loads_bitsandbytes_linear4bit_checkpoint() {
    let device = Device::flex();
    let path = fixtures().join("nf4/bnb_linear.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let q = Nf4Weight::from_bnb(&st, "layer", &device).unwrap().unwrap();
    assert!(q.nested.is_some());
    let r = read_fixture(&path);
    let dense = Tensor::<2>::from_data(
        TensorData::new(f32s(&r["reference.dense_weight"].1), [32, 64]),
        &device,
    );
    assert!(max_diff(q.dequantize(), dense) < 1e-6);
    let bias = Tensor::<1>::from_data(TensorData::new(f32s(&r["layer.bias"].1), [32]), &device);
    let mut lin = Linear::from_tensors(Tensor::zeros([0, 64], &device), Some(bias));
    lin.quant = Some(q);
    assert_eq!(lin.dims(), (64, 32));
    let x = Tensor::<2>::from_data(
        TensorData::new(f32s(&r["reference.input"].1), [3, 64]),
        &device,
    );
    let want = Tensor::<2>::from_data(
        TensorData::new(f32s(&r["reference.output"].1), [3, 32]),
        &device,
    );
    assert!(max_diff(lin.forward(x), want) < 1e-5);
    assert!(
        Nf4Weight::from_bnb(&st, "missing", &device)
            .unwrap()
            .is_none()
    );
    assert!(nf4::is_bnb_aux_key(
        "layer.weight.quant_state.bitsandbytes__nf4"
    ));
}

#[test]
fn qlora_fine_tuning_reduces_loss() {
    let device = Device::flex().autodiff();
    let (d, hidden, vocab) = (64, 128, 16);
    let teacher = Toy::new(d, hidden, 2, vocab, &device);
    let mut student = teacher.clone();
    // Perturb the student, then quantise its frozen base to NF4 and train LoRA on top.
    student.visit_linears_mut(&mut |_, lin| {
        let w = (lin.weight.val() + randn(lin.weight.dims(), &lin.weight.device()) * 0.05).detach();
        lin.weight = Param::from_tensor(w);
    });
    let nf4 = Nf4Config::new();
    student.visit_linears_mut(&mut |path, lin| {
        if path != "lm_head" {
            lin.quantize_nf4(&nf4);
        }
    });
    let mut dense_bytes = 0;
    let mut quant_bytes = 0;
    student.visit_linears(&mut |_, lin| {
        if let Some(q) = &lin.quant {
            dense_bytes += q.rows * q.cols * 4;
            quant_bytes += q.storage_bytes();
        }
    });
    assert!(
        (quant_bytes as f64) < dense_bytes as f64 * 5.5 / 32.0, // 4.13 bits + the 1 KiB nested map per toy layer
        "{quant_bytes} vs {dense_bytes}"
    );
    let mut cfg = LoraConfig::new(8, 16.0, names(&["up_proj", "down_proj"]));
    cfg.init_lora_weights = lmflow_peft::InitLoraWeights::Bool(true);
    let (mut student, _) = lmflow_peft::get_peft_model(student, &cfg, "default").unwrap();
    let x = randn([64, d], &device);
    let target = teacher.forward(x.clone()).detach();
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let loss_of = |m: &Toy| (m.forward(x.clone()) - target.clone()).square().mean();
    let first = vec_of(loss_of(&student).detach())[0];
    for _ in 0..40 {
        let loss = loss_of(&student);
        let grads = GradientsParams::from_grads(loss.backward(), &student);
        student = optim.step(5e-3, student, grads);
    }
    let last = vec_of(loss_of(&student).detach())[0];
    assert!(last < 0.5 * first, "QLoRA loss {first} -> {last}");
    // The quantised bases are untouched and still quantised.
    student.visit_linears(&mut |path, lin| assert_eq!(lin.quant.is_some(), path != "lm_head"));
}

#[test]
fn lisa_trains_only_sampled_layers_and_frees_their_state() {
    let device = Device::flex().autodiff();
    let model = Toy::new(8, 16, 6, 11, &device);
    let mut lisa = Lisa::new(
        LisaConfig::new(2).with_interval_steps(2).with_seed(7),
        &model,
        || AdamWConfig::new().init(),
    )
    .unwrap();
    assert_eq!(lisa.num_layers(), 6);
    let x = randn([4, 8], &device);
    let mut model = model;
    let snapshot = |m: &Toy| -> Vec<Vec<f32>> {
        m.layers
            .iter()
            .map(|b| vec_of(b.up_proj.weight.val()))
            .collect()
    };
    let mut max_layer_state = 0;
    for step in 0..8 {
        model = lisa.on_step_begin(model);
        let active = lisa.active_layers();
        assert_eq!(active.len(), 2);
        let before = snapshot(&model);
        let head_before = vec_of(model.lm_head.weight.val());
        let loss = model.forward(x.clone()).square().mean();
        let grads = loss.backward();
        model = lisa.optimizer_step(1e-2, model, grads);
        let after = snapshot(&model);
        for i in 0..6 {
            assert_eq!(
                before[i] != after[i],
                active.contains(&i),
                "step {step} layer {i} active {active:?}"
            );
        }
        assert_ne!(
            vec_of(model.lm_head.weight.val()),
            head_before,
            "head always trains"
        );
        let (fixed, layers) = lisa.optimizer_state_len();
        assert!(fixed > 0);
        max_layer_state = max_layer_state.max(layers);
    }
    // Layer state covers 2 layers (3 params each) only, never the 6 layers visited.
    // Persistent state: lm_head's weight only (the toy's embedding table gets no gradient).
    let (per_param, _) = lisa.optimizer_state_len();
    // Two layers of 4 tensors each (up_proj weight + bias, down_proj weight, norm).
    assert_eq!(max_layer_state, per_param * 2 * 4);
    let distinct: std::collections::BTreeSet<usize> =
        lisa.history().iter().flatten().copied().collect();
    assert!(
        distinct.len() > 2,
        "sampling moves between layers: {:?}",
        lisa.history()
    );
}

#[test]
fn disable_adapters_gives_the_base_model_and_freeze_all_leaves_nothing_trainable() {
    let device = Device::flex().autodiff();
    let mut cfg = LoraConfig::new(4, 8.0, names(&["up_proj", "down_proj"]));
    cfg.init_lora_weights = lmflow_peft::InitLoraWeights::Bool(false);
    let base = Toy::new(8, 16, 2, 11, &device);
    let x = randn([3, 8], &device);
    let base_out = vec_of(base.forward(x.clone()));
    let (mut toy, _) = lmflow_peft::get_peft_model(base, &cfg, "default").unwrap();
    // Random B: the adapted model differs from the base...
    let adapted = vec_of(toy.forward(x.clone()));
    assert!(
        adapted
            .iter()
            .zip(&base_out)
            .any(|(a, b)| (a - b).abs() > 1e-4)
    );
    // ...until the adapters are disabled, and again after re-activation.
    lmflow_peft::inject::disable_adapters(&mut toy);
    assert_eq!(vec_of(toy.forward(x.clone())), base_out);
    lmflow_peft::set_active_adapter(&mut toy, "default").unwrap();
    assert_eq!(vec_of(toy.forward(x)), adapted);

    let (trainable, total) = count_params(&toy);
    assert!(trainable > 0 && trainable < total);
    let frozen = lmflow_peft::inject::freeze_all(toy);
    assert_eq!(count_params(&frozen), (0, total));
}

/// A model with one linear layer at Hub path `layer`.
struct OneLayer {
    layer: Linear,
}

impl LinearVisitor for OneLayer {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
        f("layer", &self.layer);
    }
    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
        f("layer", &mut self.layer);
    }
}

#[test]
fn load_bnb_linears_quantises_every_stored_layer_of_a_model() {
    let device = Device::flex();
    let path = fixtures().join("nf4/bnb_linear.safetensors");
    let r = read_fixture(&path);
    let mut model = OneLayer {
        layer: LinearConfig::new(64, 32).init(&device),
    };
    assert_eq!(
        nf4::load_bnb_linears(&mut model, &path, &device).unwrap(),
        1
    );
    assert!(model.layer.quant.is_some());
    let x = Tensor::<2>::from_data(
        TensorData::new(f32s(&r["reference.input"].1), [3, 64]),
        &device,
    );
    let want = Tensor::<2>::from_data(
        TensorData::new(f32s(&r["reference.output"].1), [3, 32]),
        &device,
    );
    // Weight and bias both come from the checkpoint: the output is bitsandbytes'.
    assert!(max_diff(model.layer.forward(x), want) < 1e-5);

    // A layer of the wrong shape is refused, naming it.
    let mut wrong = OneLayer {
        layer: LinearConfig::new(64, 16).init(&device),
    };
    let err = nf4::load_bnb_linears(&mut wrong, &path, &device).unwrap_err();
    assert!(err.to_string().contains("layer"), "{err}");
}
