//! Fuzz-style property tests of the parsers that read untrusted files (issue 13): `config.json`,
//! safetensors headers, LMFlow dataset JSON, `adapter_config.json` and chat templates. Arbitrary
//! or mutated input may be refused with an error, but must never panic (a panic fails the
//! property) and must finish (templates run with fuel). Mutations start from the bundled model
//! in `assets/tiny-llama`, so they reach the checks behind the first parse.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::{Device, FloatDType};
use lmflow_datasets::template::JinjaTemplate;
use lmflow_datasets::{InspectOptions, TemplateTokens, TokenizeConfig};
use lmflow_models::config::ModelConfig;
use lmflow_models::{LoadOptions, Tokenizer, WeightSource, load_pretrained};
use lmflow_peft::LoraConfig;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Value, json};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/tiny-llama")
}

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_dir(tiny()).unwrap())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Any JSON value, with the numbers and strings that break naive parsers.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|v| json!(v)),
        any::<u64>().prop_map(|v| json!(v)),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(2), Just(7), Just(64)]
            .prop_map(|v| json!(v)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |v| v.is_finite())
            .prop_map(|v| json!(v)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("llama"),
            Just("user"),
            Just("assistant"),
            Just("text_only"),
            Just("conversation"),
            Just("F32"),
            Just("all-linear"),
            Just("q_proj")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `base` with up to four keys replaced, removed or added.
fn mutated(base: Value, keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(keys).prop_map(str::to_string),
        "[a-z_]{1,10}"
    ];
    prop::collection::vec((key, prop::option::weighted(0.85, any_json())), 0..5).prop_map(
        move |edits| {
            let mut v = base.clone();
            for (k, new) in edits {
                let obj = v.as_object_mut().unwrap();
                match new {
                    Some(x) => obj.insert(k, x),
                    None => obj.remove(&k),
                };
            }
            v
        },
    )
}

const CONFIG_KEYS: &[&str] = &[
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "tie_word_embeddings",
    "hidden_act",
    "attention_bias",
    "sliding_window",
    "eos_token_id",
];

fn tiny_config() -> Value {
    serde_json::from_str(&std::fs::read_to_string(tiny().join("config.json")).unwrap()).unwrap()
}

/// A model folder: the bundled one with `config.json` and/or `model.safetensors` replaced.
fn model_dir(config: Option<&Value>, weights: Option<&[u8]>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "config.json"] {
        std::fs::copy(tiny().join(f), dir.path().join(f)).unwrap();
    }
    if let Some(c) = config {
        std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    }
    match weights {
        Some(w) => std::fs::write(dir.path().join("model.safetensors"), w).unwrap(),
        None => std::os::unix::fs::symlink(
            tiny().join("model.safetensors").canonicalize().unwrap(),
            dir.path().join("model.safetensors"),
        )
        .unwrap(),
    }
    dir
}

/// Whether the configuration stays small enough to build (loading a model allocates what the
/// dimensions say; the bounds of `config.rs` are far above what a test may allocate).
fn small(v: &Value) -> bool {
    CONFIG_KEYS.iter().all(|k| match v.get(*k) {
        Some(Value::Number(n)) => n.as_f64().is_none_or(|x| x.abs() <= 4096.0),
        _ => true,
    }) && !v.to_string().contains("factor")
}

proptest! {
    #![proptest_config(config(96))]

    /// Any mutation of `config.json` parses to a configuration or an error.
    #[test]
    fn config_json_never_panics(v in mutated(tiny_config(), CONFIG_KEYS)) {
        let _ = ModelConfig::from_json(v, Path::new("config.json"));
    }

    /// Arbitrary bytes as `config.json`.
    #[test]
    fn config_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            let _ = ModelConfig::from_json(v, Path::new("config.json"));
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// Mutated configurations with small dimensions load the bundled weights or fail with an
    /// error (shapes, divisibility, zero sizes), never a panic in model construction.
    #[test]
    fn config_mutations_load_or_fail(v in mutated(tiny_config(), CONFIG_KEYS)) {
        prop_assume!(small(&v));
        let dir = model_dir(Some(&v), None);
        if let Ok(p) = load_pretrained(dir.path(), &Device::flex(), &LoadOptions::default()) {
            // A loaded model runs one token.
            let ids = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(vec![1i64, 2], [1, 2]),
                &Device::flex(),
            );
            let _ = p.model.forward(lmflow_models::ForwardInput::new(ids), None);
        }
    }
}

/// A safetensors file: `header` (as bytes) after its length, then `data`.
fn safetensors(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// One header entry with arbitrary dtype, shape and offsets.
fn tensor_entry() -> impl Strategy<Value = Value> {
    let dtype = prop_oneof![
        Just("F32"),
        Just("F16"),
        Just("BF16"),
        Just("F64"),
        Just("I64"),
        Just("BOOL"),
        Just("U8"),
        Just("F8_E4M3"),
        Just("X")
    ];
    let dim = prop_oneof![0u64..6, Just(u64::MAX), Just(1 << 40), any::<u64>()];
    let off = prop_oneof![0u64..64, Just(u64::MAX), any::<u64>()];
    (dtype, prop::collection::vec(dim, 0..4), off.clone(), off)
        .prop_map(|(d, s, a, b)| json!({"dtype": d, "shape": s, "data_offsets": [a, b]}))
}

proptest! {
    #![proptest_config(config(128))]

    /// Arbitrary headers over arbitrary data: opening, checking and reading every tensor is an
    /// error or a tensor of the declared shape.
    #[test]
    fn safetensors_headers_never_panic(
        entries in prop::collection::btree_map("[a-c]{1,2}", tensor_entry(), 0..4),
        data in prop::collection::vec(any::<u8>(), 0..96),
        meta in prop::option::of(any_json()),
        length_delta in prop_oneof![Just(0i64), -3i64..3, Just(i64::MAX)],
    ) {
        let mut header: serde_json::Map<String, Value> = entries.into_iter().collect();
        if let Some(m) = meta {
            header.insert("__metadata__".into(), m);
        }
        let h = serde_json::to_vec(&header).unwrap();
        let mut bytes = safetensors(&h, &data);
        let len = (h.len() as i64).saturating_add(length_delta).max(0) as u64;
        bytes[..8].copy_from_slice(&len.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let _ = lmflow_models::weights::check_safetensors_file(&path);
        if let Ok(source) = WeightSource::from_files(dir.path(), &[path], &Device::flex(), FloatDType::F32) {
            for name in source.names().iter().map(|s| s.to_string()).collect::<Vec<_>>() {
                let shape = source.shape(&name).unwrap().to_vec();
                match shape.as_slice() {
                    [a] => { let _ = source.tensor(&name, [*a]); }
                    [a, b] => { let _ = source.tensor(&name, [*a, *b]); }
                    _ => { let _ = source.tensor(&name, [1usize]); }
                }
            }
        }
    }
}

fn model_bytes() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| std::fs::read(tiny().join("model.safetensors")).unwrap())
}

proptest! {
    #![proptest_config(config(40))]

    /// The bundled weights with bytes of the header overwritten and the file possibly cut:
    /// loading the model is an error or a model, never a panic.
    #[test]
    fn mutated_model_files_never_panic(
        edits in prop::collection::vec((0usize..2048, any::<u8>()), 1..6),
        cut in prop::option::weighted(0.3, 0usize..4_006_352),
    ) {
        let mut bytes = model_bytes().to_vec();
        for (at, b) in edits {
            bytes[at] = b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut);
        }
        let dir = model_dir(None, Some(&bytes));
        let _ = load_pretrained(dir.path(), &Device::flex(), &LoadOptions::default());
    }
}

const DATASET_KEYS: &[&str] = &["type", "instances"];

fn instance() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        Just(json!("user")),
        Just(json!("assistant")),
        Just(json!("system")),
        Just(json!("tool")),
        any_json()
    ];
    let message = (
        role,
        prop_oneof![".{0,20}".prop_map(Value::String), any_json()],
    )
        .prop_map(|(r, c)| json!({"role": r, "content": c}));
    prop_oneof![
        ".{0,40}".prop_map(|t| json!({"text": t})),
        (".{0,20}", ".{0,20}").prop_map(|(i, o)| json!({"input": i, "output": o})),
        prop::collection::vec(message, 0..4).prop_map(|m| json!({"messages": m})),
        (
            prop::collection::vec(any_json(), 0..3),
            prop::option::of(".{0,10}")
        )
            .prop_map(|(m, s)| json!({"messages": m, "system": s})),
        any_json(),
    ]
}

fn dataset() -> impl Strategy<Value = Value> {
    let ty = prop_oneof![
        Just(json!("text_only")),
        Just(json!("text2text")),
        Just(json!("conversation")),
        Just(json!("paired_conversation")),
        any_json()
    ];
    let base = (ty, prop::collection::vec(instance(), 0..4))
        .prop_map(|(t, i)| json!({"type": t, "instances": i}));
    base.prop_flat_map(|b| mutated(b, DATASET_KEYS))
}

proptest! {
    #![proptest_config(config(96))]

    /// Any dataset file parses, renders with the chat template and tokenizes, or fails with
    /// an error.
    #[test]
    fn dataset_json_never_panics(v in dataset(), block in prop_oneof![Just(1usize), 2usize..64]) {
        let _ = lmflow_datasets::reader::parse_lmflow_value(Path::new("data.json"), &v, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.json");
        std::fs::write(&path, v.to_string()).unwrap();
        let opts = InspectOptions {
            template: None,
            limit: None,
            dataset_type: None,
            tokenize: TokenizeConfig { block_size: block, ..TokenizeConfig::default() },
        };
        let _ = lmflow_datasets::stats(&path, tokenizer(), &opts);
    }

    /// JSON Lines with arbitrary lines.
    #[test]
    fn dataset_jsonl_never_panics(lines in prop::collection::vec(prop_oneof![
        instance().prop_map(|v| v.to_string()),
        Just("{\"type\": \"text_only\"}".to_string()),
        ".{0,30}",
    ], 0..5)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let _ = lmflow_datasets::read_dataset(&path, &lmflow_datasets::ReadOptions::default());
    }
}

const ADAPTER_KEYS: &[&str] = &[
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layers_pattern",
    "modules_to_save",
    "use_rslora",
    "use_dora",
    "init_lora_weights",
    "peft_type",
    "task_type",
    "bias",
    "fan_in_fan_out",
];

proptest! {
    #![proptest_config(config(160))]

    /// Any mutation of an adapter config parses and validates, or fails with an error.
    #[test]
    fn adapter_config_never_panics(v in mutated(json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
        "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "rank_pattern": {}, "alpha_pattern": {}, "use_rslora": false, "use_dora": false,
        "inference_mode": true, "base_model_name_or_path": "x"
    }), ADAPTER_KEYS)) {
        if let Ok(cfg) = serde_json::from_value::<LoraConfig>(v)
            && cfg.validate().is_ok()
        {
            let _ = cfg.rank_and_alpha("model.layers.0.self_attn.q_proj");
            let _ = cfg.to_json_string();
        }
    }
}

/// Template sources built from Jinja fragments, so that most of them compile.
fn template_source() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("{% for m in messages %}".to_string()),
        Just("{% endfor %}".to_string()),
        Just("{% if add_generation_prompt %}".to_string()),
        Just("{% endif %}".to_string()),
        Just("{{ m['content'] }}".to_string()),
        Just("{{ m.role | upper }}".to_string()),
        Just("{{ messages[0]['content'] | trim }}".to_string()),
        Just("{{ bos_token ~ eos_token }}".to_string()),
        Just("{% generation %}".to_string()),
        Just("{% endgeneration %}".to_string()),
        Just("{{ raise_exception('no') }}".to_string()),
        Just("{% set x = namespace(n=0) %}".to_string()),
        (0u32..3000).prop_map(|n| format!("{{% for i in range({n}) %}}")),
        (0u64..u64::MAX).prop_map(|n| format!("{{{{ 'ab' * {n} }}}}")),
        Just("{{ messages | tojson }}".to_string()),
        Just("{{ (messages | length) // 0 }}".to_string()),
        Just("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}".to_string()),
        "[a-z{}%<>|'\"() ]{0,8}",
    ];
    prop::collection::vec(fragment, 0..10).prop_map(|f| f.concat())
}

proptest! {
    #![proptest_config(config(160))]

    /// Any template source compiles and renders, or fails with an error naming the template;
    /// fuel and the output limit keep every rendering short.
    #[test]
    fn chat_templates_never_panic(
        source in prop_oneof![template_source(), ".{0,40}"],
        messages in prop::collection::vec(any_json(), 0..3),
    ) {
        if let Ok(t) = JinjaTemplate::new("fuzz", &source) {
            let tokens = TemplateTokens {
                bos_token: Some("<s>".into()),
                eos_token: Some("</s>".into()),
                ..TemplateTokens::default()
            };
            let plain = vec![json!({"role": "user", "content": "hi"})];
            let _ = t.render_messages(&plain, None, &tokens, true);
            let _ = t.render_messages(&messages, None, &tokens, false);
        }
    }
}
