//! Parity with `transformers` on the tiny checkpoints of `tests/fixtures/models.py`: logits
//! (single sequence and left-padded batch), KV-cache decoding, greedy generation, dtype
//! handling, sharded checkpoints and save -> load round trips.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData, s};
use lmflow_models::attention::position_ids_from_attention_mask;
use lmflow_models::{CausalLm, ForwardInput, LoadOptions, load_pretrained};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn ids2(v: &Value) -> Vec<Vec<i64>> {
    v.as_array().unwrap().iter().map(ids).collect()
}

fn int2(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let (b, s) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), device)
}

/// Reference logits `name` of a case: (values, shape).
fn ref_logits(case: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(fixtures().join(format!("reference/{case}.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (v, t.shape().to_vec())
}

fn to_vec(t: Tensor<3>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load(case: &str, device: &Device) -> lmflow_models::Pretrained {
    load_pretrained(&fixtures().join(case), device, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{case}: {e}"))
}

fn forward_logits(model: &CausalLm, input: ForwardInput) -> Vec<f32> {
    to_vec(model.forward(input, None).unwrap().logits)
}

fn greedy(model: &CausalLm, prompt: &[i64], new_tokens: usize, device: &Device) -> Vec<i64> {
    let mut cache = model.new_cache(prompt.len() + new_tokens);
    let mut out = prompt.to_vec();
    let mut next_input = prompt.to_vec();
    for _ in 0..new_tokens {
        let input = ForwardInput::new(int2(&[next_input.clone()], device));
        let logits = model.forward(input, Some(&mut cache)).unwrap().logits;
        let [_, s, v] = logits.dims();
        let last = logits.slice(s![0..1, s - 1..s, 0..v]).reshape([v]);
        let next = last.argmax(0).into_scalar::<i64>();
        out.push(next);
        next_input = vec![next];
    }
    out
}

#[test]
fn logits_match_transformers_for_every_case() {
    let device = Device::flex();
    let r = reference();
    let long = ids(&r["long_ids"]);
    let batch = ids2(&r["batch_ids"]);
    let mask = ids2(&r["batch_mask"]);
    let cases = r["cases"].as_object().unwrap();
    assert!(cases.len() >= 12);
    for (case, info) in cases {
        let p = load(case, &device);
        assert_eq!(p.model.model_type(), info["model_type"].as_str().unwrap());
        // One sequence.
        let got = forward_logits(
            &p.model,
            ForwardInput::new(int2(std::slice::from_ref(&long), &device)),
        );
        let (want, shape) = ref_logits(case, "logits_long");
        assert_eq!(shape, vec![long.len(), p.model.vocab_size()]);
        let err = max_abs(&got, &want);
        assert!(err <= TOL, "{case}: long sequence max abs error {err}");
        // Left-padded batch: compare the real (unpadded) positions.
        let input =
            ForwardInput::new(int2(&batch, &device)).with_attention_mask(int2(&mask, &device));
        let got = forward_logits(&p.model, input);
        let (want, shape) = ref_logits(case, "logits_batch");
        let (s, v) = (shape[1], shape[2]);
        let mut worst = 0.0f32;
        for (b, row) in mask.iter().enumerate() {
            for (t, &m) in row.iter().enumerate() {
                if m == 1 {
                    let o = (b * s + t) * v;
                    worst = worst.max(max_abs(&got[o..o + v], &want[o..o + v]));
                }
            }
        }
        assert!(worst <= TOL, "{case}: padded batch max abs error {worst}");
    }
}

#[test]
fn kv_cache_decoding_equals_full_forward_and_greedy_matches_generate() {
    let device = Device::flex();
    let r = reference();
    let long = ids(&r["long_ids"]);
    for case in [
        "llama_gqa",
        "mistral_sliding",
        "qwen3",
        "llama_tied_bias",
        "llama3_rope",
        "qwen2",
        "ministral_sliding",
    ] {
        let p = load(case, &device);
        let full = forward_logits(
            &p.model,
            ForwardInput::new(int2(std::slice::from_ref(&long), &device)),
        );
        let v = p.model.vocab_size();
        // Prefill 6 tokens, then one at a time.
        let mut cache = p.model.new_cache(long.len());
        let mut got = forward_logits(
            &p.model,
            ForwardInput::new(int2(&[long[..6].to_vec()], &device)),
        );
        let out = p.model.forward(
            ForwardInput::new(int2(&[long[..6].to_vec()], &device)),
            Some(&mut cache),
        );
        assert_eq!(
            to_vec(out.unwrap().logits),
            got,
            "{case}: prefill with cache"
        );
        for &token in &long[6..] {
            let step = p
                .model
                .forward(
                    ForwardInput::new(int2(&[vec![token]], &device)),
                    Some(&mut cache),
                )
                .unwrap();
            got.extend(to_vec(step.logits));
        }
        assert_eq!(cache.len(), long.len());
        let err = max_abs(&got, &full);
        assert!(
            err <= TOL,
            "{case}: cached decode differs from full forward by {err}"
        );
        assert_eq!(got.len(), long.len() * v);
    }
    // Greedy decoding with the cache reproduces transformers' generate for every case.
    for (case, info) in r["cases"].as_object().unwrap() {
        let p = load(case, &device);
        let prompt = ids(&info["generate"]["prompt"]);
        let want = ids(&info["generate"]["output"]);
        let got = greedy(&p.model, &prompt, want.len() - prompt.len(), &device);
        assert_eq!(got, want, "{case}: greedy generation");
    }
}

#[test]
fn left_padded_batch_generation_matches_generate() {
    let device = Device::flex();
    let r = reference();
    for case in ["llama_gqa", "qwen3", "mistral_sliding", "ministral_sliding"] {
        let p = load(case, &device);
        let info = &r["cases"][case]["generate_batch"];
        let batch = ids2(&info["input_ids"]);
        let mut mask = ids2(&info["attention_mask"]);
        let want = ids2(&info["output"]);
        let new_tokens = want[0].len() - batch[0].len();
        let mut cache = p.model.new_cache(batch[0].len() + new_tokens);
        let mut seqs = batch.clone();
        let mut input = batch.clone();
        for _ in 0..new_tokens {
            let m = int2(&mask, &device);
            let pos = position_ids_from_attention_mask(m.clone());
            let [b, total] = pos.dims();
            let s = input[0].len();
            let pos = pos.slice(s![0..b, total - s..total]);
            let fi = ForwardInput::new(int2(&input, &device))
                .with_attention_mask(m)
                .with_position_ids(pos);
            let logits = p.model.forward(fi, Some(&mut cache)).unwrap().logits;
            let [_, s, v] = logits.dims();
            let next: Vec<i64> = logits
                .slice(s![0..b, s - 1..s, 0..v])
                .reshape([b, v])
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap();
            for (i, n) in next.iter().enumerate() {
                seqs[i].push(*n);
                mask[i].push(1);
            }
            input = next.iter().map(|n| vec![*n]).collect();
        }
        assert_eq!(seqs, want, "{case}: left-padded batch generation");
    }
}

#[test]
fn bf16_checkpoint_loads_in_f32_and_bf16() {
    let device = Device::flex();
    let r = reference();
    let long = ids(&r["long_ids"]);
    let dir = fixtures().join("llama_bf16");
    // Stored bf16 -> f32: the reference is the same bf16 weights computed in f32.
    let p = load("llama_bf16", &device);
    let got = forward_logits(
        &p.model,
        ForwardInput::new(int2(std::slice::from_ref(&long), &device)),
    );
    let (want, _) = ref_logits("llama_bf16", "logits_long");
    assert!(max_abs(&got, &want) <= TOL);
    // Kept in bf16: compared with transformers computing in bf16 (bf16 rounding differs in
    // accumulation order, so the tolerance is bf16-sized).
    let opts = LoadOptions {
        dtype: Some(FloatDType::BF16),
        ..Default::default()
    };
    let p16 = load_pretrained(&dir, &device, &opts).unwrap();
    let out = p16
        .model
        .forward(
            ForwardInput::new(int2(std::slice::from_ref(&long), &device)),
            None,
        )
        .unwrap();
    assert_eq!(out.logits.dtype(), burn::tensor::DType::BF16);
    let got16 = to_vec(out.logits);
    let (want16, _) = ref_logits("llama_bf16", "logits_long_bf16");
    let err = max_abs(&got16, &want16);
    let scale = want16.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(
        err <= 0.05 * scale.max(1.0),
        "bf16 logits differ by {err} (scale {scale})"
    );
}

#[test]
fn save_then_load_is_exact_and_keeps_hub_layout() {
    let device = Device::flex();
    let r = reference();
    let long = ids(&r["long_ids"]);
    for case in ["llama_tied_bias", "llama_sharded", "qwen3", "llama_bf16"] {
        let p = load(case, &device);
        let tmp = tempfile::tempdir().unwrap();
        p.save(tmp.path()).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(tmp.path().join(f).is_file(), "{case}: {f} not written");
        }
        let q = load_pretrained(tmp.path(), &device, &LoadOptions::default()).unwrap();
        let a = p.model.state_dict();
        let b = q.model.state_dict();
        assert_eq!(a.len(), b.len(), "{case}");
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert_eq!(
                ta.as_bytes(),
                tb.as_bytes(),
                "{case}: {na} changed in the round trip"
            );
        }
        // Tensor names are exactly those of the original checkpoint (tied heads omit lm_head).
        let src =
            lmflow_models::WeightSource::open(&fixtures().join(case), &device, FloatDType::F32)
                .unwrap();
        let mut names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, src.names(), "{case}: tensor names");
        let x = ForwardInput::new(int2(std::slice::from_ref(&long), &device));
        assert_eq!(
            forward_logits(&p.model, x.clone()),
            forward_logits(&q.model, x),
            "{case}: logits after round trip"
        );
        // The configuration is written back with every original key.
        assert_eq!(q.config.raw.len(), p.config.raw.len());
    }
}

#[test]
fn rust_saved_folders_were_loaded_by_transformers() {
    // Recorded by `tests/fixtures/models.py --check-rust`, which runs the `save_roundtrip`
    // example and loads its output with transformers' from_pretrained.
    let r = reference();
    let Some(saved) = r.get("rust_saved").and_then(Value::as_object) else {
        panic!("reference.json lacks `rust_saved`: run tests/fixtures/models.py --check-rust");
    };
    assert!(saved.len() >= 3);
    for (case, info) in saved {
        assert_eq!(info["loads_in_transformers"], Value::Bool(true), "{case}");
        let diff = info["max_abs_diff"].as_f64().unwrap();
        assert!(
            diff == 0.0,
            "{case}: transformers logits differ by {diff} after a Rust save"
        );
    }
}

#[test]
fn packed_segments_equal_separate_sequences() {
    let device = Device::flex();
    let r = reference();
    let long = ids(&r["long_ids"]);
    let (a, b) = (long[..7].to_vec(), long[7..].to_vec());
    for case in ["llama_gqa", "qwen3", "mistral_sliding"] {
        let p = load(case, &device);
        let v = p.model.vocab_size();
        let sep_a = forward_logits(
            &p.model,
            ForwardInput::new(int2(std::slice::from_ref(&a), &device)),
        );
        let sep_b = forward_logits(
            &p.model,
            ForwardInput::new(int2(std::slice::from_ref(&b), &device)),
        );
        let packed: Vec<i64> = a.iter().chain(&b).copied().collect();
        let segments: Vec<i64> = a.iter().map(|_| 0).chain(b.iter().map(|_| 1)).collect();
        let positions: Vec<i64> = (0..a.len() as i64).chain(0..b.len() as i64).collect();
        let input = ForwardInput::new(int2(&[packed], &device))
            .with_segment_ids(int2(&[segments], &device))
            .with_position_ids(int2(&[positions], &device));
        let got = forward_logits(&p.model, input);
        let err_a = max_abs(&got[..a.len() * v], &sep_a);
        let err_b = max_abs(&got[a.len() * v..], &sep_b);
        assert!(
            err_a <= 1e-5 && err_b <= 1e-5,
            "{case}: packed differs ({err_a}, {err_b})"
        );
    }
}

#[test]
fn cache_truncate_rolls_back_and_overflow_is_an_error() {
    let device = Device::flex();
    let r = reference();
    let long = ids(&r["long_ids"]);
    let p = load("llama_gqa", &device);
    let mut cache = p.model.new_cache(12);
    let step = |cache: &mut lmflow_models::KvCache, toks: &[i64]| {
        let input = ForwardInput::new(int2(&[toks.to_vec()], &device));
        p.model
            .forward(input, Some(cache))
            .map(|o| to_vec(o.logits))
    };
    step(&mut cache, &long[..8]).unwrap();
    let first = step(&mut cache, &long[8..11]).unwrap();
    assert_eq!(cache.len(), 11);
    cache.truncate(8);
    assert_eq!(cache.len(), 8);
    let again = step(&mut cache, &long[8..11]).unwrap();
    assert_eq!(first, again);
    let err = step(&mut cache, &long[11..13]).unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
    cache.reset();
    assert!(cache.is_empty());
}
