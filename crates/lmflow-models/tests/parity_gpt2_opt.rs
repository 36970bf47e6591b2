//! GPT-2 and OPT against `transformers`: logits and final hidden states of tiny random-init
//! checkpoints (fixtures from tests/fixtures/models_gpt2_opt.py), KV-cache decoding against the
//! full forward pass, and save -> load round trips.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData, s};
use lmflow_models::{
    CausalLm, ForwardInput, KvCache, LoadOptions, ModelConfig, ModelError, Pretrained,
    load_pretrained,
};
use lmflow_peft::LinearVisitor;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models"
    ))
    .to_path_buf()
}

/// Model folder and the reference file it is compared with.
const CASES: &[(&str, &str)] = &[
    ("gpt2", "gpt2"),
    ("gpt2-legacy", "gpt2"),
    ("opt", "opt"),
    ("opt-post-proj", "opt-post-proj"),
    ("opt-nobias", "opt-nobias"),
];

const SETS: &[&str] = &["single", "right", "left", "left_pos"];

/// A reference tensor: shape and values (f32 or i64 widened to f64 for simplicity).
struct RefTensor {
    shape: Vec<usize>,
    values: Vec<f64>,
}

fn read_reference(name: &str) -> HashMap<String, RefTensor> {
    let path = fixtures()
        .join("reference")
        .join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let values = match v.dtype() {
                safetensors::Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                    .collect(),
                safetensors::Dtype::I64 => v
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?} for {k}"),
            };
            (
                k,
                RefTensor {
                    shape: v.shape().to_vec(),
                    values,
                },
            )
        })
        .collect()
}

fn int_tensor(t: &RefTensor, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = t.values.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(data, [t.shape[0], t.shape[1]]), device)
}

fn input_for(r: &HashMap<String, RefTensor>, set: &str, device: &Device) -> ForwardInput {
    let mut input = ForwardInput::new(int_tensor(&r[&format!("{set}.input_ids")], device));
    if let Some(mask) = r.get(&format!("{set}.attention_mask")) {
        input = input.with_attention_mask(int_tensor(mask, device));
    }
    if let Some(pos) = r.get(&format!("{set}.position_ids")) {
        input = input.with_position_ids(int_tensor(pos, device));
    }
    input
}

fn values(t: Tensor<3>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Max |a - b| over rows whose attention-mask entry is 1 (every row when `mask` is `None`);
/// `a` and `b` are `[batch, seq, width]` flattened.
fn max_diff_valid(a: &[f32], b: &[f64], width: usize, mask: Option<&RefTensor>) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for (row, (ra, rb)) in a.chunks(width).zip(b.chunks(width)).enumerate() {
        if mask.is_some_and(|m| m.values[row] == 0.0) {
            continue;
        }
        for (x, y) in ra.iter().zip(rb) {
            worst = worst.max((*x as f64 - y).abs());
        }
    }
    worst
}

/// The `gpt2` fixture rewritten in the original Hub layout (as `openai-community/gpt2` ships):
/// no `transformer.` prefix, no `lm_head.weight`, plus the `h.N.attn.bias` causal-mask
/// buffers. `models_gpt2_opt.py` checks that `transformers` reads this layout as the same model.
fn legacy_gpt2_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let src = fixtures().join("gpt2");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpt2-legacy");
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .filter(|(k, _)| k != "lm_head.weight")
            .map(|(k, v)| {
                let name = k.strip_prefix("transformer.").unwrap_or(&k).to_string();
                (name, v.dtype(), v.shape().to_vec(), v.data().to_vec())
            })
            .collect();
        let n = 64;
        let tril: Vec<u8> = (0..n * n)
            .flat_map(|i| if i % n <= i / n { 1.0f32 } else { 0.0 }.to_le_bytes())
            .collect();
        for layer in 0..2 {
            let name = format!("h.{layer}.attn.bias");
            tensors.push((
                name,
                safetensors::Dtype::F32,
                vec![1, 1, n, n],
                tril.clone(),
            ));
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(k, dtype, shape, data)| {
                let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
                (k.clone(), view.unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.join(file), dir.join(file)).unwrap();
        }
        dir
    })
}

fn case_dir(case: &str) -> PathBuf {
    if case == "gpt2-legacy" {
        legacy_gpt2_dir().to_path_buf()
    } else {
        fixtures().join(case)
    }
}

fn load(case: &str, device: &Device) -> Pretrained {
    load_pretrained(&case_dir(case), device, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{case}: {e}"))
}

#[test]
fn logits_and_hidden_states_match_transformers() {
    let device = Device::flex();
    for &(case, reference) in CASES {
        let model = load(case, &device).model;
        let r = read_reference(reference);
        for set in SETS {
            let out = model.forward(input_for(&r, set, &device), None).unwrap();
            let mask = r.get(&format!("{set}.attention_mask"));
            let logits = &r[&format!("{set}.logits")];
            let [b, s, v] = out.logits.dims();
            assert_eq!(vec![b, s, v], logits.shape, "{case}/{set}: logits shape");
            let d = max_diff_valid(&values(out.logits), &logits.values, v, mask);
            assert!(d <= TOLERANCE as f64, "{case}/{set}: logits differ by {d}");
            let hidden = &r[&format!("{set}.hidden")];
            let width = hidden.shape[2];
            assert_eq!(
                out.hidden_states.dims()[2],
                width,
                "{case}/{set}: hidden width"
            );
            let d = max_diff_valid(&values(out.hidden_states), &hidden.values, width, mask);
            assert!(
                d <= TOLERANCE as f64,
                "{case}/{set}: hidden states differ by {d}"
            );
        }
    }
}

/// Prefill `split` tokens, then decode the rest one token at a time (with the matching slice of
/// the attention mask) and compare every step's logits with the full forward pass.
fn check_cache_decode(
    model: &CausalLm,
    ids: Tensor<2, Int>,
    mask: Option<Tensor<2, Int>>,
    split: usize,
    what: &str,
) {
    let [b, total] = ids.dims();
    let mut full_input = ForwardInput::new(ids.clone());
    if let Some(m) = &mask {
        full_input = full_input.with_attention_mask(m.clone());
    }
    let full = values(model.forward(full_input, None).unwrap().logits);
    let vocab = model.vocab_size();
    let mask_values: Option<Vec<i64>> = mask
        .as_ref()
        .map(|m| m.to_data().convert::<i64>().try_to_vec::<i64>().unwrap());
    let mut cache: KvCache = model.new_cache(total);
    let mut start = 0;
    let mut step = split;
    while start < total {
        let end = (start + step).min(total);
        let mut input = ForwardInput::new(ids.clone().slice(s![.., start..end]));
        if let Some(m) = &mask {
            input = input.with_attention_mask(m.clone().slice(s![.., 0..end]));
        }
        let logits = values(model.forward(input, Some(&mut cache)).unwrap().logits);
        assert_eq!(cache.len(), end, "{what}: cache length");
        let n = end - start;
        for row in 0..b {
            for t in 0..n {
                let pos = start + t;
                if mask_values
                    .as_ref()
                    .is_some_and(|m| m[row * total + pos] == 0)
                {
                    continue;
                }
                let got = &logits[(row * n + t) * vocab..(row * n + t + 1) * vocab];
                let want = &full[(row * total + pos) * vocab..(row * total + pos + 1) * vocab];
                let d = got
                    .iter()
                    .zip(want)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    d <= 1e-5,
                    "{what}: row {row} position {pos}: cached decode differs by {d}"
                );
            }
        }
        start = end;
        step = 1;
    }
}

#[test]
fn kv_cache_decode_equals_full_forward() {
    let device = Device::flex();
    for &(case, reference) in CASES {
        if case == "gpt2-legacy" {
            continue;
        }
        let model = load(case, &device).model;
        let r = read_reference(reference);
        let single = int_tensor(&r["single.input_ids"], &device);
        check_cache_decode(&model, single, None, 3, &format!("{case}/single"));
        for set in ["right", "left"] {
            let ids = int_tensor(&r[&format!("{set}.input_ids")], &device);
            let mask = int_tensor(&r[&format!("{set}.attention_mask")], &device);
            let split = ids.dims()[1] - 4;
            check_cache_decode(&model, ids, Some(mask), split, &format!("{case}/{set}"));
        }
    }
}

#[test]
fn cache_truncate_rolls_back() {
    let device = Device::flex();
    for case in ["gpt2", "opt-post-proj"] {
        let model = load(case, &device).model;
        let ids = Tensor::<2, Int>::from_ints([[3, 40, 41, 42, 43, 44]], &device);
        let mut cache = model.new_cache(8);
        model
            .forward(
                ForwardInput::new(ids.clone().slice(s![.., 0..4])),
                Some(&mut cache),
            )
            .unwrap();
        // Decode a wrong token, roll it back, decode the right one.
        let wrong = Tensor::<2, Int>::from_ints([[7]], &device);
        model
            .forward(ForwardInput::new(wrong), Some(&mut cache))
            .unwrap();
        cache.truncate(4);
        let step = model
            .forward(
                ForwardInput::new(ids.clone().slice(s![.., 4..5])),
                Some(&mut cache),
            )
            .unwrap();
        let full = model
            .forward(ForwardInput::new(ids.slice(s![.., 0..5])), None)
            .unwrap();
        let a = values(step.logits);
        let b = values(full.logits.slice(s![.., 4..5, ..]));
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(d <= 1e-5, "{case}: decode after truncate differs by {d}");
    }
}

fn state(model: &CausalLm) -> Vec<(String, Vec<f32>, Vec<usize>)> {
    let mut out: Vec<_> = model
        .state_dict()
        .into_iter()
        .map(|(k, v)| {
            let shape = v.shape().to_vec();
            (k, v.convert::<f32>().try_to_vec::<f32>().unwrap(), shape)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn checkpoint_names(dir: &Path) -> Vec<String> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
}

#[test]
fn save_load_round_trip_is_exact() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    for &(case, _) in CASES {
        let original = load(case, &device);
        let dir = tmp.path().join(case);
        original.save(&dir).unwrap();
        // Hub names: the folder transformers wrote (the `transformer.` form for legacy GPT-2,
        // without its causal-mask buffers).
        let expected: Vec<String> = checkpoint_names(&case_dir(case))
            .into_iter()
            .filter(|n| !n.ends_with(".attn.bias"))
            .map(|n| {
                if case == "gpt2-legacy" {
                    format!("transformer.{n}")
                } else {
                    n
                }
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            checkpoint_names(&dir),
            expected,
            "{case}: saved tensor names"
        );
        let reloaded = load_pretrained(&dir, &device, &LoadOptions::default()).unwrap();
        assert!(
            reloaded.tokenizer.is_some(),
            "{case}: tokenizer files copied"
        );
        assert_eq!(reloaded.config.model_type, original.config.model_type);
        assert!(
            state(&original.model) == state(&reloaded.model),
            "{case}: parameters changed in the round trip"
        );
        let ids = Tensor::<2, Int>::from_ints([[3, 50, 60, 70]], &device);
        let a = values(
            original
                .model
                .forward(ForwardInput::new(ids.clone()), None)
                .unwrap()
                .logits,
        );
        let b = values(
            reloaded
                .model
                .forward(ForwardInput::new(ids), None)
                .unwrap()
                .logits,
        );
        assert_eq!(a, b, "{case}: logits changed in the round trip");
    }
}

#[test]
fn linear_visitor_uses_hub_paths_and_conv1d_is_transposed() {
    let device = Device::flex();
    let gpt2 = load("gpt2", &device).model;
    let mut paths = Vec::new();
    gpt2.visit_linears(&mut |p, lin| paths.push((p.to_string(), lin.dims())));
    assert_eq!(
        paths[..4],
        [
            ("transformer.h.0.attn.c_attn".to_string(), (32, 96)),
            ("transformer.h.0.attn.c_proj".to_string(), (32, 32)),
            ("transformer.h.0.mlp.c_fc".to_string(), (32, 128)),
            ("transformer.h.0.mlp.c_proj".to_string(), (128, 32)),
        ]
    );
    assert_eq!(paths.len(), 8, "tied GPT-2 has no separate lm_head");
    let opt = load("opt-post-proj", &device).model;
    let mut paths = Vec::new();
    opt.visit_linears(&mut |p, _| paths.push(p.to_string()));
    assert_eq!(
        paths.first().map(String::as_str),
        Some("model.decoder.project_in")
    );
    assert!(paths.contains(&"model.decoder.layers.1.self_attn.out_proj".to_string()));
    assert!(paths.contains(&"model.decoder.layers.0.fc2".to_string()));
    assert_eq!(
        paths.last().map(String::as_str),
        Some("model.decoder.project_out")
    );
    assert_eq!(
        opt.hidden_size(),
        16,
        "OPT hidden states are in word_embed_proj_dim"
    );
}

fn config(json: serde_json::Value) -> ModelConfig {
    ModelConfig::from_json(json, Path::new("config.json")).unwrap()
}

#[test]
fn untied_random_init_round_trip() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let configs = [
        config(serde_json::json!({
            "model_type": "gpt2", "vocab_size": 50, "n_positions": 16, "n_embd": 16,
            "n_layer": 1, "n_head": 2, "tie_word_embeddings": false,
            "scale_attn_by_inverse_layer_idx": true, "activation_function": "gelu"
        })),
        config(serde_json::json!({
            "model_type": "opt", "vocab_size": 50, "hidden_size": 16, "ffn_dim": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16,
            "word_embed_proj_dim": 8, "tie_word_embeddings": false, "pad_token_id": 1
        })),
    ];
    for cfg in configs {
        let model = CausalLm::from_config(&cfg, &device).unwrap();
        assert!(!model.tied_embeddings());
        let mut paths = Vec::new();
        model.visit_linears(&mut |p, _| paths.push(p.to_string()));
        assert_eq!(paths.last().map(String::as_str), Some("lm_head"));
        let dir = tmp.path().join(&cfg.model_type);
        model.save(&dir, &cfg).unwrap();
        assert!(checkpoint_names(&dir).contains(&"lm_head.weight".to_string()));
        let reloaded = load_pretrained(&dir, &device, &LoadOptions::default()).unwrap();
        assert!(
            state(&model) == state(&reloaded.model),
            "{}",
            cfg.model_type
        );
        let ids = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
        let out = reloaded
            .model
            .forward(ForwardInput::new(ids), None)
            .unwrap();
        assert_eq!(out.logits.dims(), [1, 3, 50]);
    }
}

#[test]
fn invalid_inputs_are_errors() {
    let device = Device::flex();
    for case in ["gpt2", "opt"] {
        let model = load(case, &device).model;
        // Token id beyond the vocabulary (400).
        let ids = Tensor::<2, Int>::from_ints([[1, 400]], &device);
        let err = model.forward(ForwardInput::new(ids), None).unwrap_err();
        assert!(matches!(err, ModelError::Input(_)), "{case}: {err}");
        // Position beyond the table (64 positions).
        let ids = Tensor::<2, Int>::from_ints([[1, 2]], &device);
        let pos = Tensor::<2, Int>::from_ints([[0, 64]], &device);
        let err = model
            .forward(ForwardInput::new(ids.clone()).with_position_ids(pos), None)
            .unwrap_err();
        assert!(matches!(err, ModelError::Input(_)), "{case}: {err}");
        // Cache overflow.
        let mut cache = model.new_cache(1);
        let err = model
            .forward(ForwardInput::new(ids), Some(&mut cache))
            .unwrap_err();
        assert!(matches!(err, ModelError::Input(_)), "{case}: {err}");
    }
    // rope_scaling overrides make no sense for learned positions.
    let opts = LoadOptions {
        rope_scaling: Some(lmflow_models::RopeScaling::Linear { factor: 2.0 }),
        ..LoadOptions::default()
    };
    let err = load_pretrained(&fixtures().join("gpt2"), &device, &opts).unwrap_err();
    assert!(matches!(err, ModelError::Config { .. }), "{err}");
}

/// Greedy decoding as `generate(do_sample=False)`: positions `cumsum(mask) - 1` (padding 0),
/// rows that produced an eos token continue with `pad`, stop when every row is done.
fn greedy(
    model: &CausalLm,
    prompt: &[Vec<i64>],
    mask: &[Vec<i64>],
    max_new: usize,
    eos: &[i64],
    pad: i64,
    device: &Device,
) -> Vec<Vec<i64>> {
    let b = prompt.len();
    let n = prompt[0].len();
    let flat = |rows: &[Vec<i64>]| rows.iter().flatten().copied().collect::<Vec<i64>>();
    let positions: Vec<Vec<i64>> = mask
        .iter()
        .map(|row| {
            let mut c = 0;
            row.iter()
                .map(|&m| {
                    c += m;
                    if m == 0 { 0 } else { c - 1 }
                })
                .collect()
        })
        .collect();
    let tensor = |v: Vec<i64>, cols: usize| -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(v, [b, cols]), device)
    };
    let mut out: Vec<Vec<i64>> = prompt.to_vec();
    let mut mask: Vec<Vec<i64>> = mask.to_vec();
    let mut next_pos: Vec<i64> = positions.iter().map(|p| p[n - 1] + 1).collect();
    let mut done = vec![false; b];
    let mut cache = model.new_cache(n + max_new);
    let mut input = ForwardInput::new(tensor(flat(prompt), n))
        .with_attention_mask(tensor(flat(&mask), n))
        .with_position_ids(tensor(flat(&positions), n));
    for _ in 0..max_new {
        let logits = model.forward(input, Some(&mut cache)).unwrap().logits;
        let [_, s, v] = logits.dims();
        let last = values(logits.slice(s![.., s - 1..s, ..]));
        let mut step = Vec::with_capacity(b);
        for row in 0..b {
            let scores = &last[row * v..(row + 1) * v];
            let best = (0..v).fold(0, |best, i| if scores[i] > scores[best] { i } else { best });
            let token = if done[row] { pad } else { best as i64 };
            done[row] |= eos.contains(&token);
            out[row].push(token);
            mask[row].push(1);
            step.push(token);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let len = mask[0].len();
        input = ForwardInput::new(tensor(step, 1))
            .with_attention_mask(tensor(flat(&mask), len))
            .with_position_ids(tensor(next_pos.clone(), 1));
        next_pos.iter_mut().for_each(|p| *p += 1);
    }
    out
}

#[test]
fn greedy_decoding_matches_transformers_generate() {
    let device = Device::flex();
    for &(case, reference) in CASES {
        if case == "gpt2-legacy" {
            continue;
        }
        let model = load(case, &device).model;
        let path = fixtures()
            .join("reference")
            .join(format!("{reference}.json"));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let generate = &meta["generate"];
        let ids =
            |v: &serde_json::Value| -> Vec<Vec<i64>> { serde_json::from_value(v.clone()).unwrap() };
        let eos: Vec<i64> =
            serde_json::from_value(generate["generation_config"]["eos_token_id"].clone()).unwrap();
        let pad = generate["generation_config"]["pad_token_id"]
            .as_i64()
            .unwrap();
        let single = &generate["single"];
        let prompt = ids(&single["input_ids"]);
        let ones = vec![vec![1; prompt[0].len()]];
        let got = greedy(&model, &prompt, &ones, 10, &eos, pad, &device);
        assert_eq!(got, ids(&single["output_ids"]), "{case}: single prompt");
        let batch = &generate["left_padded_batch"];
        let got = greedy(
            &model,
            &ids(&batch["input_ids"]),
            &ids(&batch["attention_mask"]),
            10,
            &eos,
            pad,
            &device,
        );
        assert_eq!(got, ids(&batch["output_ids"]), "{case}: left-padded batch");
    }
}

#[test]
fn bf16_weights_stay_close_to_f32_reference() {
    let device = Device::flex();
    let opts = LoadOptions {
        dtype: Some(burn::tensor::FloatDType::BF16),
        ..LoadOptions::default()
    };
    for case in ["gpt2", "opt-post-proj"] {
        let model = load_pretrained(&case_dir(case), &device, &opts)
            .unwrap()
            .model;
        let r = read_reference(case);
        let out = model.forward(input_for(&r, "left", &device), None).unwrap();
        assert_eq!(out.logits.dtype(), burn::tensor::DType::BF16, "{case}");
        let v = out.logits.dims()[2];
        let reference = &r["left.logits"];
        let d = max_diff_valid(
            &values(out.logits),
            &reference.values,
            v,
            r.get("left.attention_mask"),
        );
        // bf16 keeps ~3 significant digits; logits are O(5).
        assert!(d < 0.15, "{case}: bf16 logits differ by {d}");
    }
}

#[test]
fn gradients_reach_tied_embeddings_and_positions() {
    let device = Device::flex().autodiff();
    for case in ["gpt2", "opt-post-proj"] {
        let model = load(case, &device).model;
        let ids = Tensor::<2, Int>::from_ints([[3, 50, 60, 70]], &device);
        let out = model.forward(ForwardInput::new(ids), None).unwrap();
        let grads = out.logits.powi_scalar(2).mean().backward();
        let (tokens, positions) = match &model {
            CausalLm::Gpt2(m) => (m.wte.val(), m.wpe.val()),
            CausalLm::Opt(m) => (m.embed_tokens.val(), m.embed_positions.val()),
            CausalLm::Llama(_) => unreachable!(),
        };
        for (what, param) in [("token embedding", tokens), ("positions", positions)] {
            let g = param
                .grad(&grads)
                .unwrap_or_else(|| panic!("{case}: no {what} grad"));
            let norm: f32 = g.abs().sum().into_scalar();
            assert!(norm > 0.0, "{case}: zero {what} gradient");
        }
    }
}
