//! Generation against transformers (fixtures from tests/fixtures/infer.py): greedy tokens for
//! every tiny checkpoint with and without a LoRA adapter, batch 1 and ragged batches; KV cache
//! against full recomputation; speculative decoding (greedy equality, sampling distribution);
//! RoPE scaling overrides against transformers' logits beyond the original context.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, s};
use lmflow_infer::tensor_io::{float_rows, ids_tensor};
use lmflow_infer::{
    GenerationConfig, Generator, SpeculativeGenerator, load_model, parse_rope_scaling,
};
use lmflow_models::{CausalLm, ForwardInput, LoadOptions};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read_json(name: &str) -> Value {
    let path = fixtures().join("infer").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn load(model: &str, adapter: Option<&str>, device: &Device) -> lmflow_models::Pretrained {
    let adapter_dir = adapter.map(|a| fixtures().join(a));
    load_model(
        &fixtures().join(model),
        adapter_dir.as_deref(),
        &LoadOptions::default(),
        device,
    )
    .unwrap()
}

/// FNV-1a 64 of every `*.safetensors` file of a fixture folder (sorted by name), as hex.
fn weights_fnv1a(model_dir: &str) -> Value {
    let dir = fixtures().join(model_dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; rerun tests/fixtures/infer.py", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let hashes = files
        .iter()
        .map(|f| {
            let h = std::fs::read(f)
                .unwrap()
                .iter()
                .fold(0xCBF2_9CE4_8422_2325u64, |h, &b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
                });
            Value::String(format!("{h:016x}"))
        })
        .collect();
    Value::Array(hashes)
}

#[test]
fn greedy_matches_transformers_for_every_fixture() {
    let device = Device::flex();
    let fixture = read_json("generate.json");
    let cases = fixture["cases"].as_array().unwrap();
    let mut seen_adapter = false;
    for case in cases {
        let name = case["case"].as_str().unwrap();
        let adapter = case["adapter"].as_str();
        seen_adapter |= adapter.is_some();
        let model_dir = case["model"].as_str().unwrap();
        assert_eq!(
            weights_fnv1a(model_dir),
            case["weights_fnv1a"],
            "{name}: {model_dir} changed since generate.json was recorded; rerun tests/fixtures/infer.py"
        );
        let pretrained = load(model_dir, adapter, &device);
        let mut generator = Generator::new(&pretrained.model, &device);
        if let Some(tok) = &pretrained.tokenizer {
            generator = generator.with_tokenizer(tok);
        }
        for run in case["runs"].as_array().unwrap() {
            let run_name = run["name"].as_str().unwrap();
            let prompts: Vec<Vec<u32>> =
                run["prompts"].as_array().unwrap().iter().map(ids).collect();
            let cfg = &run["config"];
            let config = GenerationConfig {
                max_new_tokens: cfg["max_new_tokens"].as_u64().unwrap() as usize,
                min_new_tokens: cfg["min_new_tokens"].as_u64().unwrap_or(0) as usize,
                repetition_penalty: cfg["repetition_penalty"].as_f64().unwrap_or(1.0),
                eos_token_ids: if cfg["no_eos"].as_bool() == Some(true) {
                    vec![]
                } else {
                    ids(&case["eos_token_ids"])
                },
                pad_token_id: case["pad_token_id"].as_u64().unwrap() as u32,
                ..GenerationConfig::default()
            };
            let mut streamed = vec![String::new(); prompts.len()];
            let outputs = generator
                .generate_streaming(&prompts, &config, &mut |i, text| streamed[i].push_str(text))
                .unwrap();
            let want: Vec<Vec<u32>> = run["new_ids"].as_array().unwrap().iter().map(ids).collect();
            let got: Vec<Vec<u32>> = outputs.iter().map(|o| o.new_ids.clone()).collect();
            assert_eq!(
                got, want,
                "{name} / {run_name}: greedy tokens differ from transformers"
            );
            for (o, s) in outputs.iter().zip(&streamed) {
                if let Some(text) = &o.text {
                    assert_eq!(
                        text, s,
                        "{name} / {run_name}: streamed text differs from decoded text"
                    );
                }
            }
        }
    }
    assert!(
        cases.len() >= 5 && seen_adapter,
        "fixture lacks architectures or adapters"
    );
}

/// Greedy decoding by recomputing the whole sequence at every step (no cache).
fn greedy_without_cache(
    model: &CausalLm,
    prompt: &[u32],
    steps: usize,
    device: &Device,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut seq: Vec<u32> = prompt.to_vec();
    let mut last_rows = Vec::new();
    for _ in 0..steps {
        let input = ids_tensor(&[seq.iter().map(|&t| t as i64).collect()], device);
        let logits = model
            .forward(ForwardInput::new(input), None)
            .unwrap()
            .logits;
        let [_, n, v] = logits.dims();
        let row = float_rows(
            logits.slice(s![0..1, n - 1..n, ..]).reshape([1, v]),
            "logits",
        )
        .unwrap()
        .remove(0);
        let next = lmflow_infer::sampler::argmax(&row);
        last_rows.push(row);
        seq.push(next);
    }
    (seq[prompt.len()..].to_vec(), last_rows)
}

#[test]
fn kv_cache_equals_full_recomputation() {
    let device = Device::flex();
    for (model_dir, adapter) in [
        ("peft/base", Some("peft/lora")),
        ("models/gpt2", None),
        ("models/opt-post-proj", None),
    ] {
        let p = load(model_dir, adapter, &device);
        let prompt = vec![11u32, 25, 7, 42, 9];
        let (want, rows) = greedy_without_cache(&p.model, &prompt, 10, &device);
        let got = Generator::new(&p.model, &device)
            .generate(std::slice::from_ref(&prompt), &GenerationConfig::greedy(10))
            .unwrap();
        assert_eq!(got[0].new_ids, want, "{model_dir}");
        // Logits of the cached incremental path equal the recomputed ones.
        let mut cache = p.model.new_cache(32);
        let mut seq = prompt.clone();
        let input = ids_tensor(&[seq.iter().map(|&t| t as i64).collect()], &device);
        let mut logits: Tensor<3> = p
            .model
            .forward(ForwardInput::new(input), Some(&mut cache))
            .unwrap()
            .logits;
        for (step, row) in rows.iter().enumerate() {
            let [_, n, v] = logits.dims();
            let cached = float_rows(
                logits.slice(s![0..1, n - 1..n, ..]).reshape([1, v]),
                "logits",
            )
            .unwrap()
            .remove(0);
            let diff = cached
                .iter()
                .zip(row)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-4,
                "{model_dir} step {step}: cached logits differ by {diff}"
            );
            seq.push(want[step]);
            let input = ids_tensor(&[vec![want[step] as i64]], &device);
            logits = p
                .model
                .forward(ForwardInput::new(input), Some(&mut cache))
                .unwrap()
                .logits;
        }
    }
}

#[test]
fn speculative_greedy_equals_plain_greedy() {
    let device = Device::flex();
    let pairs = [
        (("peft/base", Some("peft/lora")), ("peft/base", None)),
        (("models/gpt2", None), ("models/opt", None)),
    ];
    for ((target_dir, adapter), (draft_dir, draft_adapter)) in pairs {
        let target = load(target_dir, adapter, &device);
        let draft = load(draft_dir, draft_adapter, &device);
        let prompts = vec![vec![11u32, 25, 7, 42, 9], vec![3u32], vec![50u32, 60, 70]];
        for gamma in [1usize, 3, 5] {
            let mut config = GenerationConfig::greedy(14);
            config.eos_token_ids = vec![2];
            let plain = Generator::new(&target.model, &device)
                .generate(&prompts, &config)
                .unwrap();
            let spec =
                SpeculativeGenerator::new(&target.model, &draft.model, &device, gamma).unwrap();
            let (fast, stats) = spec.generate(&prompts, &config).unwrap();
            for (a, b) in plain.iter().zip(&fast) {
                assert_eq!(
                    a.new_ids, b.new_ids,
                    "{target_dir} draft {draft_dir} gamma {gamma}"
                );
            }
            assert!(stats.drafted > 0);
            // A draft identical to the target is always accepted.
            let same =
                SpeculativeGenerator::new(&target.model, &target.model, &device, gamma).unwrap();
            let (out, stats) = same.generate(&prompts[..1], &config).unwrap();
            assert_eq!(out[0].new_ids, plain[0].new_ids);
            assert_eq!(
                stats.accepted, stats.drafted,
                "self-draft must be fully accepted"
            );
        }
    }
}

#[test]
fn speculative_sampling_matches_target_distribution_on_tiny_model() {
    let device = Device::flex();
    let target = load("peft/base", Some("peft/lora"), &device);
    let draft = load("peft/base", None, &device);
    let prompt = vec![11u32, 25, 7];
    // top-k 3 at temperature 1.5 keeps the support small (9 two-token outcomes) and mass spread.
    let config = GenerationConfig {
        max_new_tokens: 2,
        do_sample: true,
        temperature: 1.5,
        top_k: 3,
        ..GenerationConfig::default()
    };
    let pipeline = lmflow_infer::LogitsPipeline::new(&config);
    let dist = |ctx: &[u32], new: usize| -> Vec<f32> {
        let input = ids_tensor(&[ctx.iter().map(|&t| t as i64).collect()], &device);
        let logits = target
            .model
            .forward(ForwardInput::new(input), None)
            .unwrap()
            .logits;
        let [_, n, v] = logits.dims();
        let mut row = float_rows(logits.slice(s![0..1, n - 1..n, ..]).reshape([1, v]), "l")
            .unwrap()
            .remove(0);
        pipeline.apply(&mut row, ctx, new);
        lmflow_infer::processors::softmax(&row)
    };
    let p1 = dist(&prompt, 0);
    let spec = SpeculativeGenerator::new(&target.model, &draft.model, &device, 2).unwrap();
    let n = 1200usize;
    let mut counts = std::collections::BTreeMap::<(u32, u32), usize>::new();
    for i in 0..n {
        let cfg = GenerationConfig {
            seed: i as u64,
            ..config.clone()
        };
        let (out, _) = spec.generate(std::slice::from_ref(&prompt), &cfg).unwrap();
        *counts
            .entry((out[0].new_ids[0], out[0].new_ids[1]))
            .or_default() += 1;
    }
    let mut chi = 0.0f64;
    let mut cells = 0;
    for (a, &pa) in p1.iter().enumerate().filter(|(_, p)| **p > 0.0) {
        let mut ctx = prompt.clone();
        ctx.push(a as u32);
        let p2 = dist(&ctx, 1);
        for (b, &pb) in p2.iter().enumerate().filter(|(_, p)| **p > 0.0) {
            let e = pa as f64 * pb as f64 * n as f64;
            let c = counts.remove(&(a as u32, b as u32)).unwrap_or(0) as f64;
            chi += (c - e).powi(2) / e;
            cells += 1;
        }
    }
    assert!(
        counts.is_empty(),
        "samples outside the target's support: {counts:?}"
    );
    assert_eq!(cells, 9);
    // 8 degrees of freedom: the 99.9% quantile is 26.1.
    assert!(
        chi < 26.1,
        "speculative samples deviate from the target distribution: chi2 = {chi}"
    );
}

#[test]
fn rope_scaling_override_matches_transformers_beyond_context() {
    let device = Device::flex();
    let fixture = read_json("rope.json");
    let model_dir = fixtures().join(fixture["model"].as_str().unwrap());
    let input: Vec<i64> = ids(&fixture["input_ids"])
        .into_iter()
        .map(i64::from)
        .collect();
    let positions: Vec<usize> = fixture["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as usize)
        .collect();
    let logits_at = |opts: &LoadOptions| -> Vec<Vec<f32>> {
        let p = load_model(&model_dir, None, opts, &device).unwrap();
        let logits = p
            .model
            .forward(
                ForwardInput::new(ids_tensor(std::slice::from_ref(&input), &device)),
                None,
            )
            .unwrap()
            .logits;
        let [_, n, v] = logits.dims();
        let all = float_rows(logits.reshape([n, v]), "logits").unwrap();
        positions.iter().map(|&i| all[i].clone()).collect()
    };
    let rows = |v: &Value| -> Vec<Vec<f32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    };
    let max_diff = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let default = rows(&fixture["default_logits"]);
    assert!(max_diff(&logits_at(&LoadOptions::default()), &default) < 1e-4);
    let variants = fixture["variants"].as_object().unwrap();
    assert_eq!(variants.len(), 4);
    for (name, variant) in variants {
        let scaling = parse_rope_scaling(&model_dir, &variant["rope_scaling"].to_string()).unwrap();
        let got = logits_at(&LoadOptions {
            rope_scaling: Some(scaling),
            ..LoadOptions::default()
        });
        let want = rows(&variant["logits"]);
        let diff = max_diff(&got, &want);
        assert!(
            diff < 1e-4,
            "{name}: logits differ from transformers by {diff}"
        );
        // The scaled model really differs from the unscaled one beyond the original context.
        assert!(
            max_diff(&want[3..], &default[3..]) > 1e-3,
            "{name} fixture equals the unscaled logits"
        );
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_returns_n_sequences() {
    let device = Device::flex();
    let p = load("models/gpt2", None, &device);
    let generator = Generator::new(&p.model, &device).with_tokenizer(p.tokenizer.as_ref().unwrap());
    let config = GenerationConfig {
        num_return_sequences: 3,
        top_p: 0.9,
        min_p: Some(0.02),
        repetition_penalty: 1.1,
        min_new_tokens: 3,
        eos_token_ids: vec![4, 2, 0],
        ..GenerationConfig::sampling(8, 0.9, 42)
    };
    let prompts = vec![vec![30u32, 31, 32], vec![40u32]];
    let a = generator.generate(&prompts, &config).unwrap();
    let b = generator.generate(&prompts, &config).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 6);
    assert_eq!(
        a.iter().map(|o| o.prompt_index).collect::<Vec<_>>(),
        vec![0, 0, 0, 1, 1, 1]
    );
    for o in &a {
        assert!(o.new_ids.len() >= 3 && o.new_ids.len() <= 8);
        assert!(
            o.new_ids[..3].iter().all(|t| ![4, 2, 0].contains(t)),
            "EOS before min_new_tokens"
        );
    }
    let c = generator
        .generate(
            &prompts,
            &GenerationConfig {
                seed: 43,
                ..config.clone()
            },
        )
        .unwrap();
    assert_ne!(a, c);
    // Stop strings end a sequence once its text contains them.
    let text = a[0].text.clone().unwrap();
    if let Some(ch) = text.chars().nth(1) {
        let cfg = GenerationConfig {
            stop_strings: vec![ch.to_string()],
            ..config.clone()
        };
        let stopped = generator.generate(&prompts[..1], &cfg).unwrap();
        assert!(stopped[0].text.as_ref().unwrap().contains(ch));
        assert_eq!(
            stopped[0].finish_reason,
            lmflow_infer::FinishReason::StopString
        );
    }
}

#[test]
fn sliding_window_nll_and_option_scores_match_transformers() {
    let device = Device::flex();
    let fixture = read_json("eval.json");
    let p = load(fixture["model"].as_str().unwrap(), None, &device);
    let input = ids(&fixture["input_ids"]);
    for w in fixture["windows"].as_array().unwrap() {
        let (max_length, stride) = (
            w["max_length"].as_u64().unwrap() as usize,
            w["stride"].as_u64().unwrap() as usize,
        );
        let stats =
            lmflow_infer::eval::sliding_window_nll(&p.model, &input, max_length, stride, &device)
                .unwrap();
        assert_eq!(
            stats.predicted_tokens as u64,
            w["predicted_tokens"].as_u64().unwrap(),
            "window {max_length}/{stride}"
        );
        let want = w["nll_sum"].as_f64().unwrap();
        assert!(
            (stats.nll_sum - want).abs() < 1e-3,
            "window {max_length}/{stride}: {} vs {want}",
            stats.nll_sum
        );
    }
    assert!(lmflow_infer::eval::sliding_window_nll(&p.model, &input, 8, 9, &device).is_err());
    let context = ids(&fixture["context"]);
    let options: Vec<Vec<u32>> = fixture["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let want: Vec<f64> = fixture["option_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let (best, scores) =
        lmflow_infer::eval::choose_option(&p.model, &context, &options, &device).unwrap();
    for (g, w) in scores.iter().zip(&want) {
        assert!(
            (g - w).abs() < 1e-3,
            "option log-likelihood {g} vs transformers {w}"
        );
    }
    let want_best = (0..want.len()).fold(0, |b, i| if want[i] > want[b] { i } else { b });
    assert_eq!(best, want_best);
}
