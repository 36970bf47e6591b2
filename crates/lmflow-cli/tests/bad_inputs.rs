//! The bad-input corpus (issue 13): careless or hostile inputs of every kind (model configs,
//! safetensors, tokenizers, chat templates, datasets, adapters, flags, damaged checkpoints,
//! runs killed while saving) run through the `lmflow` binary. Each case states its outcome:
//! a clear error (non-zero exit, a message matching a pattern, no panic, no signal) or a
//! documented accept (exit 0, see docs/reliability.md). The test fails on any panic, abort,
//! timeout, silent success or unclear message, and prints the counts.
//!
//! Cases are generated from the bundled model (`assets/tiny-llama`) by corrupting copies in a
//! temporary folder; a few are plain files under `tests/bad_inputs/`. They run in parallel
//! threads, each with the cheapest command that reaches the input (`data stats`,
//! `generate --max-new-tokens 1`, a one-step `finetune`). Set `BAD_INPUTS_FILTER=<text>` to
//! run only the cases whose name contains it, `BAD_INPUTS_VERBOSE=1` to print every message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Longest a single command may run.
const CASE_TIMEOUT: Duration = Duration::from_secs(150);
/// Address-space limit of every child: a case that tries to allocate beyond it aborts (and
/// fails the test) instead of exhausting the machine.
const MEMORY_LIMIT: u64 = 6 << 30;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn tiny() -> PathBuf {
    repo("assets/tiny-llama")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// What a case must end in.
enum Expect {
    /// Non-zero exit whose stderr contains one of these (case-insensitive).
    Error(Vec<&'static str>),
    /// Exit 0: the input is accepted on purpose (the reason, as documented).
    Accept(&'static str),
}

/// How a case runs.
enum Run {
    /// One `lmflow` command.
    Args(Vec<String>),
    /// `first` is killed with SIGKILL after `delay`; every checkpoint left must be complete,
    /// then `then` (the resume) must succeed.
    Kill {
        first: Vec<String>,
        delay: Duration,
        out: PathBuf,
        then: Vec<String>,
    },
}

/// How a checkpoint case damages its copy of the base run's output folder.
type Damage = Box<dyn Fn(&Path)>;

/// Extra check after the command (e.g. an input left untouched).
type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

struct Case {
    class: &'static str,
    name: String,
    run: Run,
    expect: Expect,
    check: Option<Check>,
}

struct Corpus {
    root: PathBuf,
    cases: Vec<Case>,
    /// Seconds the shared fixtures took.
    setup: f64,
}

impl Corpus {
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.root.join("cases").join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn add(&mut self, class: &'static str, name: &str, args: Vec<String>, expect: Expect) {
        self.cases.push(Case {
            class,
            name: format!("{class}/{name}"),
            run: Run::Args(args),
            expect,
            check: None,
        });
    }

    fn add_checked(
        &mut self,
        class: &'static str,
        name: &str,
        args: Vec<String>,
        expect: Expect,
        check: Check,
    ) {
        self.add(class, name, args, expect);
        self.cases.last_mut().unwrap().check = Some(check);
    }

    /// A copy of the bundled model folder for case `name`.
    fn model(&self, name: &str) -> PathBuf {
        let d = self.dir(name).join("model");
        copy_dir(&tiny(), &d);
        d
    }
}

fn err(patterns: &[&'static str]) -> Expect {
    Expect::Error(patterns.to_vec())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// `generate` with one new token: the cheapest command that loads everything of a model.
fn generate(model: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = args(&["generate", "--model", &s(model)]);
    if !extra.iter().any(|x| x.starts_with("--max-new-tokens")) {
        a.extend(args(&["--max-new-tokens", "1"]));
    }
    if !extra.contains(&"--input") {
        a.extend(args(&["--prompt", "The capital of France is"]));
    }
    a.extend(args(extra));
    a
}

fn data_stats(dataset: &Path, tokenizer: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = args(&[
        "data",
        "stats",
        "--dataset",
        &s(dataset),
        "--tokenizer",
        &s(tokenizer),
    ]);
    a.extend(args(extra));
    a
}

fn finetune(model: &Path, dataset: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = args(&[
        "finetune",
        "--model",
        &s(model),
        "--dataset",
        &s(dataset),
        "--output",
        &s(out),
        "--samples",
        "0",
        "--quiet",
        "--lora-r",
        "4",
    ]);
    a.extend(args(extra));
    a
}

// ---------------------------------------------------------------- safetensors helpers

/// Splits a safetensors file into its header (JSON) and data.
fn st_split(bytes: &[u8]) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

fn st_join_raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

fn st_join(header: &serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
    st_join_raw(&serde_json::to_vec(header).unwrap(), data)
}

fn model_bytes() -> Vec<u8> {
    std::fs::read(tiny().join("model.safetensors")).unwrap()
}

/// The bundled weights with `edit` applied to their header and data.
fn st_edit(edit: impl FnOnce(&mut serde_json::Map<String, Value>, &mut Vec<u8>)) -> Vec<u8> {
    let (mut h, mut d) = st_split(&model_bytes());
    edit(&mut h, &mut d);
    st_join(&h, &d)
}

/// A consistent safetensors file rebuilt from `bytes` after `edit` changed its tensors
/// (name -> (dtype, shape, data)); offsets are recomputed.
fn st_rebuild(
    bytes: &[u8],
    edit: impl FnOnce(&mut BTreeMap<String, (String, Vec<u64>, Vec<u8>)>),
) -> Vec<u8> {
    let (h, d) = st_split(bytes);
    let mut tensors = BTreeMap::new();
    for (name, info) in &h {
        if name == "__metadata__" {
            continue;
        }
        let (a, b) = offsets(&h, name);
        let shape = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        tensors.insert(
            name.clone(),
            (
                info["dtype"].as_str().unwrap().to_string(),
                shape,
                d[a..b].to_vec(),
            ),
        );
    }
    edit(&mut tensors);
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (dtype, shape, bytes)) in tensors {
        header.insert(
            name,
            json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(&bytes);
    }
    st_join(&header, &data)
}

fn offsets(h: &serde_json::Map<String, Value>, name: &str) -> (usize, usize) {
    let o = &h[name]["data_offsets"];
    (
        o[0].as_u64().unwrap() as usize,
        o[1].as_u64().unwrap() as usize,
    )
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json(path: &Path, v: &Value) {
    write(path, serde_json::to_vec_pretty(v).unwrap());
}

fn config() -> Value {
    read_json(&tiny().join("config.json"))
}

// ---------------------------------------------------------------- the cases

fn model_config_cases(c: &mut Corpus) {
    let class = "config";
    let gen_err = |c: &mut Corpus, name: &str, text: Vec<u8>, patterns: &[&'static str]| {
        let m = c.model(&format!("config-{name}"));
        write(&m.join("config.json"), text);
        c.add(class, name, generate(&m, &[]), err(patterns));
    };
    {
        let m = c.model("config-missing");
        std::fs::remove_file(m.join("config.json")).unwrap();
        c.add(class, "missing", generate(&m, &[]), err(&["config.json"]));
    }
    gen_err(c, "empty", vec![], &["config.json"]);
    gen_err(
        c,
        "not-json",
        b"model_type = llama".to_vec(),
        &["config.json"],
    );
    gen_err(c, "array", b"[1, 2, 3]".to_vec(), &["config.json"]);
    gen_err(c, "null", b"null".to_vec(), &["config.json"]);
    let full = serde_json::to_vec_pretty(&config()).unwrap();
    gen_err(
        c,
        "truncated",
        full[..full.len() / 2].to_vec(),
        &["config.json"],
    );
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(&full);
    gen_err(c, "utf8-bom", bom, &["config.json"]);
    gen_err(
        c,
        "invalid-utf8",
        b"{\"model_type\": \"ll\xff\xfe\"}".to_vec(),
        &["config.json"],
    );
    gen_err(
        c,
        "deeply-nested",
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        &["config.json"],
    );
    {
        let m = c.model("config-directory");
        std::fs::remove_file(m.join("config.json")).unwrap();
        std::fs::create_dir(m.join("config.json")).unwrap();
        c.add(
            class,
            "is-a-directory",
            generate(&m, &[]),
            err(&["config.json"]),
        );
    }
    // Field edits: (name, key, value, patterns).
    let edits: Vec<(&str, &str, Value, &[&'static str])> = vec![
        (
            "model-type-missing",
            "model_type",
            Value::Null,
            &["model_type"],
        ),
        (
            "model-type-unknown",
            "model_type",
            json!("frobnicator"),
            &["frobnicator"],
        ),
        ("model-type-number", "model_type", json!(7), &["model_type"]),
        (
            "hidden-size-zero",
            "hidden_size",
            json!(0),
            &["hidden_size"],
        ),
        (
            "hidden-size-negative",
            "hidden_size",
            json!(-128),
            &["hidden_size"],
        ),
        (
            "hidden-size-string",
            "hidden_size",
            json!("128"),
            &["hidden_size"],
        ),
        (
            "hidden-size-float",
            "hidden_size",
            json!(128.5),
            &["hidden_size"],
        ),
        (
            "hidden-size-huge",
            "hidden_size",
            json!(1_000_000_000_000u64),
            &["hidden_size"],
        ),
        (
            "hidden-size-null",
            "hidden_size",
            Value::Null,
            &["hidden_size"],
        ),
        (
            "hidden-size-mismatch",
            "hidden_size",
            json!(64),
            &["shape", "hidden_size"],
        ),
        (
            "layers-zero",
            "num_hidden_layers",
            json!(0),
            &["num_hidden_layers"],
        ),
        (
            "layers-billion",
            "num_hidden_layers",
            json!(1_000_000_000u64),
            &["num_hidden_layers"],
        ),
        (
            "layers-negative",
            "num_hidden_layers",
            json!(-3),
            &["num_hidden_layers"],
        ),
        (
            "layers-more-than-stored",
            "num_hidden_layers",
            json!(6),
            &["model.layers.4"],
        ),
        (
            "heads-zero",
            "num_attention_heads",
            json!(0),
            &["num_attention_heads"],
        ),
        (
            "heads-mismatch",
            "num_attention_heads",
            json!(3),
            &["num_attention_heads", "shape"],
        ),
        (
            "kv-heads-zero",
            "num_key_value_heads",
            json!(0),
            &["num_key_value_heads"],
        ),
        (
            "kv-heads-indivisible",
            "num_key_value_heads",
            json!(3),
            &["num_key_value_heads"],
        ),
        (
            "kv-heads-more-than-heads",
            "num_key_value_heads",
            json!(8),
            &["num_key_value_heads"],
        ),
        ("head-dim-zero", "head_dim", json!(0), &["head_dim"]),
        ("head-dim-odd", "head_dim", json!(7), &["head_dim", "shape"]),
        (
            "intermediate-zero",
            "intermediate_size",
            json!(0),
            &["intermediate_size"],
        ),
        (
            "intermediate-mismatch",
            "intermediate_size",
            json!(10),
            &["shape"],
        ),
        (
            "intermediate-huge",
            "intermediate_size",
            json!(1u64 << 40),
            &["intermediate_size"],
        ),
        ("vocab-zero", "vocab_size", json!(0), &["vocab_size"]),
        (
            "vocab-smaller",
            "vocab_size",
            json!(100),
            &["vocab_size", "shape"],
        ),
        ("vocab-larger", "vocab_size", json!(4096), &["shape"]),
        (
            "vocab-huge",
            "vocab_size",
            json!(1u64 << 40),
            &["vocab_size"],
        ),
        (
            "context-zero",
            "max_position_embeddings",
            json!(0),
            &["max_position_embeddings"],
        ),
        (
            "context-huge",
            "max_position_embeddings",
            json!(1u64 << 50),
            &["max_position_embeddings"],
        ),
        (
            "context-at-bound",
            "max_position_embeddings",
            json!(1u64 << 26),
            &["ACCEPT"],
        ),
        (
            "eps-negative",
            "rms_norm_eps",
            json!(-1.0),
            &["rms_norm_eps"],
        ),
        ("eps-zero", "rms_norm_eps", json!(0.0), &["rms_norm_eps"]),
        (
            "eps-string",
            "rms_norm_eps",
            json!("1e-5"),
            &["rms_norm_eps"],
        ),
        (
            "hidden-act-unknown",
            "hidden_act",
            json!("sigmoid_of_doom"),
            &["hidden_act", "sigmoid_of_doom"],
        ),
        (
            "tie-false-no-lm-head",
            "tie_word_embeddings",
            json!(false),
            &["lm_head"],
        ),
        (
            "rope-theta-zero",
            "rope_parameters",
            json!({"rope_theta": 0.0, "rope_type": "default"}),
            &["rope_theta"],
        ),
        (
            "rope-theta-negative",
            "rope_parameters",
            json!({"rope_theta": -10000.0, "rope_type": "default"}),
            &["rope_theta"],
        ),
        (
            "rope-type-unknown",
            "rope_parameters",
            json!({"rope_theta": 10000.0, "rope_type": "warp-drive"}),
            &["warp-drive", "rope"],
        ),
        (
            "rope-linear-factor-negative",
            "rope_parameters",
            json!({"rope_theta": 10000.0, "rope_type": "linear", "factor": -2.0}),
            &["factor"],
        ),
        (
            "rope-parameters-string",
            "rope_parameters",
            json!("default"),
            &["rope_parameters", "rope"],
        ),
    ];
    for (name, key, value, patterns) in edits {
        let mut cfg = config();
        if value.is_null() && name.ends_with("missing") {
            cfg.as_object_mut().unwrap().remove(key);
        } else {
            cfg[key] = value;
        }
        if patterns == ["ACCEPT"] {
            let m = c.model(&format!("config-{name}"));
            write_json(&m.join("config.json"), &cfg);
            c.add(
                class,
                name,
                generate(&m, &[]),
                Expect::Accept("the largest accepted context allocates only what a prompt uses (RoPE tables and KV cache grow with the positions used)"),
            );
            continue;
        }
        gen_err(c, name, serde_json::to_vec(&cfg).unwrap(), patterns);
    }
    // Documented accepts: unknown keys are ignored (as transformers keeps them as attributes);
    // `architectures` is informational, `model_type` decides.
    let mut cfg = config();
    cfg["some_future_option"] = json!({"nested": [1, 2, 3]});
    let m = c.model("config-unknown-key");
    write_json(&m.join("config.json"), &cfg);
    c.add(
        class,
        "unknown-key-ignored",
        generate(&m, &[]),
        Expect::Accept("unknown config keys are ignored, as transformers"),
    );
    let mut cfg = config();
    cfg["architectures"] = json!(["SomethingElseForCausalLM"]);
    let m = c.model("config-architectures");
    write_json(&m.join("config.json"), &cfg);
    c.add(
        class,
        "architectures-informational",
        generate(&m, &[]),
        Expect::Accept("model_type selects the architecture, as transformers' AutoConfig"),
    );
}

fn safetensors_cases(c: &mut Corpus) {
    let class = "safetensors";
    let st_err = |c: &mut Corpus, name: &str, bytes: Vec<u8>, patterns: &[&'static str]| {
        let m = c.model(&format!("st-{name}"));
        write(&m.join("model.safetensors"), bytes);
        c.add(class, name, generate(&m, &[]), err(patterns));
    };
    let full = model_bytes();
    let (h, d) = st_split(&full);
    {
        let m = c.model("st-missing");
        std::fs::remove_file(m.join("model.safetensors")).unwrap();
        c.add(
            class,
            "missing",
            generate(&m, &[]),
            err(&["model.safetensors"]),
        );
    }
    st_err(c, "empty", vec![], &["model.safetensors"]);
    st_err(c, "four-bytes", vec![1, 2, 3, 4], &["model.safetensors"]);
    st_err(
        c,
        "truncated-half",
        full[..full.len() / 2].to_vec(),
        &["truncated"],
    );
    st_err(
        c,
        "truncated-one-byte",
        full[..full.len() - 1].to_vec(),
        &["truncated"],
    );
    st_err(
        c,
        "truncated-in-header",
        full[..100].to_vec(),
        &["model.safetensors"],
    );
    {
        let mut b = full.clone();
        b.extend_from_slice(&[0; 16]);
        st_err(c, "trailing-bytes", b, &["model.safetensors"]);
    }
    {
        let mut b = full.clone();
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        st_err(c, "header-length-max", b, &["model.safetensors"]);
    }
    {
        let mut b = full.clone();
        b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        st_err(c, "header-length-huge", b, &["model.safetensors"]);
    }
    {
        let mut b = full.clone();
        b[..8].copy_from_slice(&0u64.to_le_bytes());
        st_err(c, "header-length-zero", b, &["model.safetensors"]);
    }
    st_err(
        c,
        "header-not-json",
        st_join_raw(b"this is not json at all!", &d),
        &["model.safetensors"],
    );
    st_err(
        c,
        "header-array",
        st_join_raw(b"[1,2,3]", &d),
        &["model.safetensors"],
    );
    st_err(
        c,
        "header-invalid-utf8",
        st_join_raw(b"{\"a\xff\": 1}", &d),
        &["model.safetensors"],
    );
    st_err(
        c,
        "header-empty-object",
        st_join_raw(b"{}", &[]),
        &["embed_tokens", "model.safetensors"],
    );
    st_err(c, "all-zero", vec![0; 4096], &["model.safetensors"]);
    let first = "model.embed_tokens.weight";
    st_err(
        c,
        "dtype-size-mismatch",
        st_edit(|h, _| h[first]["dtype"] = json!("F16")),
        &["model.safetensors"],
    );
    st_err(
        c,
        "shape-size-mismatch",
        st_edit(|h, _| h[first]["shape"] = json!([2048, 64])),
        &["model.safetensors"],
    );
    st_err(
        c,
        "shape-overflow",
        st_edit(|h, _| h[first]["shape"] = json!([u64::MAX / 2, 4])),
        &["model.safetensors"],
    );
    st_err(
        c,
        "offsets-overlap",
        st_edit(|h, _| {
            let (a, b) = offsets(h, "model.norm.weight");
            let other = "model.layers.0.input_layernorm.weight";
            let (c0, c1) = offsets(h, other);
            assert_eq!(b - a, c1 - c0);
            h[other]["data_offsets"] = json!([a, b]);
        }),
        &["model.safetensors"],
    );
    st_err(
        c,
        "offsets-beyond-file",
        st_edit(|h, d| {
            let (a, b) = offsets(h, "model.norm.weight");
            let len = d.len();
            h["model.norm.weight"]["data_offsets"] = json!([len + a, len + b]);
        }),
        &["model.safetensors"],
    );
    st_err(
        c,
        "offsets-reversed",
        st_edit(|h, _| {
            let (a, b) = offsets(h, "model.norm.weight");
            h["model.norm.weight"]["data_offsets"] = json!([b, a]);
        }),
        &["model.safetensors"],
    );
    st_err(
        c,
        "offsets-negative",
        st_edit(|h, _| h["model.norm.weight"]["data_offsets"] = json!([-4, 508])),
        &["model.safetensors"],
    );
    st_err(
        c,
        "dtype-unknown",
        st_edit(|h, _| h["model.norm.weight"]["dtype"] = json!("F7")),
        &["model.safetensors"],
    );
    st_err(
        c,
        "dtype-integer",
        st_edit(|h, d| {
            // Same byte size, integer type.
            h["model.norm.weight"]["dtype"] = json!("I32");
            let _ = d;
        }),
        &["model.norm.weight"],
    );
    st_err(
        c,
        "dtype-bool",
        st_edit(|h, _| {
            let (a, _) = offsets(h, "model.norm.weight");
            h["model.norm.weight"]["dtype"] = json!("BOOL");
            h["model.norm.weight"]["shape"] = json!([512]);
            h["model.norm.weight"]["data_offsets"] = json!([a, a + 512]);
        }),
        &["model.norm.weight", "model.safetensors"],
    );
    st_err(
        c,
        "tensor-missing",
        st_rebuild(&full, |t| {
            t.remove("model.layers.2.mlp.down_proj.weight");
        }),
        &["model.layers.2.mlp.down_proj.weight"],
    );
    st_err(
        c,
        "tensor-wrong-shape",
        st_edit(|h, _| h["model.norm.weight"]["shape"] = json!([2, 64])),
        &["model.norm.weight"],
    );
    st_err(
        c,
        "tensor-scalar",
        st_edit(|h, _| {
            let (a, _) = offsets(h, "model.norm.weight");
            h["model.norm.weight"]["shape"] = json!([]);
            h["model.norm.weight"]["data_offsets"] = json!([a, a + 4]);
        }),
        &["model.norm.weight", "model.safetensors"],
    );
    st_err(
        c,
        "names-without-prefix",
        {
            let mut h2 = serde_json::Map::new();
            for (k, v) in &h {
                h2.insert(k.trim_start_matches("model.").to_string(), v.clone());
            }
            st_join(&h2, &d)
        },
        &["embed_tokens"],
    );
    st_err(
        c,
        "metadata-not-strings",
        st_edit(|h, _| {
            h.insert("__metadata__".into(), json!({"format": 1}));
        }),
        &["model.safetensors"],
    );
    for (name, value) in [
        ("nan", f32::NAN),
        ("inf", f32::INFINITY),
        ("neg-inf", f32::NEG_INFINITY),
    ] {
        st_err(
            c,
            &format!("weight-{name}"),
            st_edit(|h, d| {
                let (a, _) = offsets(h, "model.layers.1.self_attn.v_proj.weight");
                d[a + 40..a + 44].copy_from_slice(&value.to_le_bytes());
            }),
            &["model.layers.1.self_attn.v_proj.weight"],
        );
    }
    {
        let m = c.model("st-directory");
        std::fs::remove_file(m.join("model.safetensors")).unwrap();
        std::fs::create_dir(m.join("model.safetensors")).unwrap();
        c.add(
            class,
            "is-a-directory",
            generate(&m, &[]),
            err(&["model.safetensors"]),
        );
    }
    {
        let m = c.model("st-extra-tensor");
        let (mut h, mut d) = st_split(&full);
        let at = d.len();
        d.extend_from_slice(&[0; 16]);
        h.insert(
            "some.unused.tensor".into(),
            json!({"dtype": "F32", "shape": [4], "data_offsets": [at, at + 16]}),
        );
        write(&m.join("model.safetensors"), st_join(&h, &d));
        c.add(
            class,
            "extra-tensor-ignored",
            generate(&m, &[]),
            Expect::Accept("tensors the architecture does not use are ignored with a warning"),
        );
    }
    // Sharded checkpoints: the index and its shard paths.
    let index = |m: &Path, v: Value| {
        std::fs::rename(m.join("model.safetensors"), m.join("shard-1.safetensors")).unwrap();
        write_json(&m.join("model.safetensors.index.json"), &v);
    };
    let weight_map = |file: &str| -> Value {
        let map: serde_json::Map<String, Value> = h
            .keys()
            .filter(|k| *k != "__metadata__")
            .map(|k| (k.clone(), json!(file)))
            .collect();
        json!({"metadata": {}, "weight_map": map})
    };
    let index_cases: Vec<(&str, Value, &[&'static str])> = vec![
        (
            "index-no-weight-map",
            json!({"metadata": {}}),
            &["weight_map"],
        ),
        (
            "index-weight-map-array",
            json!({"weight_map": []}),
            &["weight_map"],
        ),
        (
            "index-value-number",
            json!({"weight_map": {first: 3}}),
            &["weight_map"],
        ),
        (
            "index-missing-shard",
            weight_map("shard-9.safetensors"),
            &["shard-9.safetensors"],
        ),
        (
            "index-parent-path",
            weight_map("../shard-1.safetensors"),
            &["outside", "../shard-1"],
        ),
        (
            "index-absolute-path",
            weight_map("/etc/passwd"),
            &["outside", "/etc/passwd"],
        ),
        ("index-empty-name", weight_map(""), &["weight_map", "shard"]),
        (
            "index-promises-missing-tensor",
            {
                let mut v = weight_map("shard-1.safetensors");
                v["weight_map"]["model.not.there"] = json!("shard-1.safetensors");
                v
            },
            &["model.not.there"],
        ),
    ];
    for (name, v, patterns) in index_cases {
        let m = c.model(&format!("st-{name}"));
        index(&m, v);
        if name == "index-parent-path" {
            // The escaping path names a real file, so only the containment check stops it.
            std::fs::copy(
                m.join("shard-1.safetensors"),
                m.parent().unwrap().join("shard-1.safetensors"),
            )
            .unwrap();
        }
        c.add(class, name, generate(&m, &[]), err(patterns));
    }
    {
        let m = c.model("st-index-not-json");
        index(&m, json!(null));
        write(&m.join("model.safetensors.index.json"), "{ weight_map: ");
        c.add(
            class,
            "index-not-json",
            generate(&m, &[]),
            err(&["model.safetensors.index.json"]),
        );
    }
    {
        let m = c.model("st-index-ok");
        index(&m, weight_map("shard-1.safetensors"));
        c.add(
            class,
            "index-single-shard",
            generate(&m, &[]),
            Expect::Accept("a sharded checkpoint with relative shard names loads"),
        );
    }
    // Weights larger than the memory the process may use (4 GiB of BF16 embeddings, 8 GiB once
    // converted to f32, stored as a sparse file; every case runs under a 6 GiB address-space
    // limit): refused before any allocation instead of aborting in it.
    {
        let m = c.model("st-larger-than-memory");
        let vocab: u64 = 1 << 24;
        let mut cfg = config();
        cfg["vocab_size"] = json!(vocab);
        write_json(&m.join("config.json"), &cfg);
        let (mut h, d) = st_split(&full);
        h.remove("model.embed_tokens.weight");
        let bytes = st_rebuild(&st_join(&h, &d), |_| {});
        let (mut h, d) = st_split(&bytes);
        let big = vocab * 128 * 2;
        h.insert(
            "model.embed_tokens.weight".into(),
            json!({"dtype": "BF16", "shape": [vocab, 128], "data_offsets": [d.len() as u64, d.len() as u64 + big]}),
        );
        let head = st_join(&h, &d);
        let path = m.join("model.safetensors");
        write(&path, &head);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(head.len() as u64 + big).unwrap();
        c.add(
            class,
            "larger-than-memory",
            generate(&m, &[]),
            err(&["GiB"]),
        );
    }
    // Pickle is never executed: a folder with only pytorch_model.bin.
    {
        let m = c.model("st-pickle-only");
        std::fs::rename(m.join("model.safetensors"), m.join("pytorch_model.bin")).unwrap();
        c.add(class, "pickle-only", generate(&m, &[]), err(&["pickle"]));
    }
}

fn tokenizer_cases(c: &mut Corpus) {
    let class = "tokenizer";
    let tok_err =
        |c: &mut Corpus, name: &str, file: &str, text: Vec<u8>, patterns: &[&'static str]| {
            let m = c.model(&format!("tok-{name}"));
            write(&m.join(file), text);
            c.add(class, name, generate(&m, &[]), err(patterns));
        };
    {
        let m = c.model("tok-missing");
        std::fs::remove_file(m.join("tokenizer.json")).unwrap();
        c.add(
            class,
            "missing-generate",
            generate(&m, &[]),
            err(&["tokenizer.json"]),
        );
        let d = c.dir("tok-missing-data");
        c.add(
            class,
            "missing-data",
            data_stats(&repo("assets/data/capitals/train.json"), &d, &[]),
            err(&["tokenizer.json"]),
        );
    }
    tok_err(c, "empty", "tokenizer.json", vec![], &["tokenizer.json"]);
    tok_err(
        c,
        "not-json",
        "tokenizer.json",
        b"vocab: a b c".to_vec(),
        &["tokenizer.json"],
    );
    tok_err(
        c,
        "empty-object",
        "tokenizer.json",
        b"{}".to_vec(),
        &["tokenizer.json"],
    );
    let full = std::fs::read(tiny().join("tokenizer.json")).unwrap();
    tok_err(
        c,
        "truncated",
        "tokenizer.json",
        full[..full.len() / 3].to_vec(),
        &["tokenizer.json"],
    );
    let tok: Value = serde_json::from_slice(&full).unwrap();
    {
        let mut t = tok.clone();
        t["model"]["type"] = json!("Transmogrifier");
        tok_err(
            c,
            "model-type-unknown",
            "tokenizer.json",
            serde_json::to_vec(&t).unwrap(),
            &["tokenizer.json"],
        );
    }
    {
        // A token id beyond the model's embedding table (vocab_size 2048).
        let mut t = tok.clone();
        t["added_tokens"].as_array_mut().unwrap().push(json!({
            "id": 5000, "content": "<|beyond|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
        let m = c.model("tok-id-beyond-embeddings");
        write_json(&m.join("tokenizer.json"), &t);
        c.add(
            class,
            "id-beyond-embeddings",
            generate(&m, &[]),
            err(&["embedding table"]),
        );
        let out = c.dir("tok-id-beyond-ft").join("out");
        c.add(
            class,
            "id-beyond-embeddings-finetune",
            finetune(
                &m,
                &repo("assets/data/capitals/train.json"),
                &out,
                &["--max-steps", "1"],
            ),
            err(&["embedding table"]),
        );
    }
    {
        let mut t = tok.clone();
        t["model"]["vocab"] = json!({});
        t["model"]["merges"] = json!([]);
        t["added_tokens"] = json!([]);
        tok_err(
            c,
            "empty-vocab",
            "tokenizer.json",
            serde_json::to_vec(&t).unwrap(),
            &["no tokens", "tokenizer"],
        );
    }
    tok_err(
        c,
        "config-not-json",
        "tokenizer_config.json",
        b"{eos: }".to_vec(),
        &["tokenizer_config.json"],
    );
    tok_err(
        c,
        "config-array",
        "tokenizer_config.json",
        b"[]".to_vec(),
        &["tokenizer_config.json"],
    );
    {
        let mut t = read_json(&tiny().join("tokenizer_config.json"));
        t["eos_token"] = json!(42);
        tok_err(
            c,
            "config-eos-number",
            "tokenizer_config.json",
            serde_json::to_vec(&t).unwrap(),
            &["eos_token"],
        );
    }
    {
        let mut t = read_json(&tiny().join("tokenizer_config.json"));
        t["eos_token"] = json!("<|no-such-token|>");
        let m = c.model("tok-eos-unknown");
        write_json(&m.join("tokenizer_config.json"), &t);
        c.add(
            class,
            "config-eos-unknown",
            generate(&m, &[]),
            Expect::Accept("an EOS token the vocabulary lacks is ignored with a warning; EOS ids also come from config.json/generation_config.json"),
        );
    }
    {
        let m = c.model("tok-config-missing");
        std::fs::remove_file(m.join("tokenizer_config.json")).unwrap();
        c.add(
            class,
            "config-missing",
            generate(&m, &[]),
            Expect::Accept("tokenizer_config.json is optional, as in transformers"),
        );
    }
    {
        let m = c.model("tok-gencfg-bad");
        write(&m.join("generation_config.json"), "{not json");
        c.add(
            class,
            "generation-config-not-json",
            generate(&m, &[]),
            err(&["generation_config.json"]),
        );
    }
}

fn template_cases(c: &mut Corpus) {
    let class = "template";
    let conv = repo("assets/data/capitals/train.json");
    let cases: Vec<(&str, &str, &[&'static str])> = vec![
        (
            "syntax-error",
            "{% for m in messages %}{{ m.content }",
            &["template"],
        ),
        ("unclosed-block", "{% if messages %}hello", &["template"]),
        (
            "unknown-filter",
            "{{ messages | frobnicate }}",
            &["frobnicate"],
        ),
        (
            "unknown-function",
            "{{ launch_missiles() }}",
            &["launch_missiles", "template"],
        ),
        (
            "raise-exception",
            "{{ raise_exception('this template refuses') }}",
            &["this template refuses"],
        ),
        (
            "runaway-loop",
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            &["instructions"],
        ),
        (
            "huge-output",
            "{% for a in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
            &["output", "MiB", "limit"],
        ),
        ("huge-repeat", "{{ 'x' * 10000000000 }}", &["template"]),
        (
            "recursive-macro",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            &["template"],
        ),
        (
            "include",
            "{% include 'other.jinja' %}",
            &["template", "other.jinja"],
        ),
        ("division-by-zero", "{{ 1 // 0 }}", &["template"]),
        ("deep-parens", "PARENS", &["template"]),
        (
            "messages-not-iterable",
            "{% for m in messages.content %}{{ m }}{% endfor %}",
            &["template", "tokens"],
        ),
    ];
    for (name, body, patterns) in cases {
        let body = if body == "PARENS" {
            format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000))
        } else {
            body.to_string()
        };
        let m = c.model(&format!("tpl-{name}"));
        write(&m.join("chat_template.jinja"), &body);
        let dataset_err = matches!(name, "syntax-error" | "runaway-loop" | "huge-output");
        c.add(class, name, generate(&m, &["--chat"]), err(patterns));
        if dataset_err {
            c.add(
                class,
                &format!("{name}-data"),
                data_stats(&conv, &m, &["--template", "tokenizer"]),
                err(patterns),
            );
        }
    }
    {
        let m = c.model("tpl-invalid-utf8");
        write(&m.join("chat_template.jinja"), b"{{ '\xff\xfe' }}");
        c.add(
            class,
            "invalid-utf8",
            generate(&m, &["--chat"]),
            err(&["chat_template.jinja"]),
        );
    }
    {
        let m = c.model("tpl-not-string");
        std::fs::remove_file(m.join("chat_template.jinja")).unwrap();
        let mut t = read_json(&m.join("tokenizer_config.json"));
        t["chat_template"] = json!(12345);
        write_json(&m.join("tokenizer_config.json"), &t);
        c.add(
            class,
            "config-template-number",
            generate(&m, &["--chat"]),
            err(&["chat_template"]),
        );
    }
    {
        let m = c.model("tpl-none");
        std::fs::remove_file(m.join("chat_template.jinja")).unwrap();
        let mut t = read_json(&m.join("tokenizer_config.json"));
        t.as_object_mut().unwrap().remove("chat_template");
        write_json(&m.join("tokenizer_config.json"), &t);
        c.add(
            class,
            "no-template",
            generate(&m, &["--chat"]),
            err(&["template"]),
        );
    }
    {
        let m = c.model("tpl-empty");
        write(&m.join("chat_template.jinja"), "");
        c.add(
            class,
            "empty-template",
            generate(&m, &["--chat"]),
            err(&["no tokens"]),
        );
    }
    c.add(
        class,
        "unknown-preset",
        generate(&tiny(), &["--chat", "--chat-template", "no-such-preset"]),
        err(&["no-such-preset"]),
    );
    c.add(
        class,
        "unknown-preset-data",
        data_stats(&conv, &tiny(), &["--template", "no-such-preset"]),
        err(&["no-such-preset"]),
    );
    {
        let m = c.model("tpl-undefined-index");
        write(
            &m.join("chat_template.jinja"),
            "{{ messages[100].content }}hello",
        );
        c.add(
            class,
            "undefined-index",
            generate(&m, &["--chat"]),
            err(&["undefined value"]),
        );
    }
}

fn dataset_cases(c: &mut Corpus) {
    let class = "dataset";
    let files = repo("tests/bad_inputs");
    let ds =
        |c: &mut Corpus, name: &str, text: Vec<u8>, extra: &[&str], patterns: &[&'static str]| {
            let f = c.dir(&format!("ds-{name}")).join("data.json");
            write(&f, text);
            c.add(class, name, data_stats(&f, &tiny(), extra), err(patterns));
        };
    let j = |v: Value| serde_json::to_vec(&v).unwrap();
    c.add(
        class,
        "missing-file",
        data_stats(&repo("tests/bad_inputs/no-such-file.json"), &tiny(), &[]),
        err(&["no-such-file.json"]),
    );
    ds(c, "empty-file", vec![], &[], &["data.json"]);
    ds(c, "whitespace", b"  \n\n ".to_vec(), &[], &["data.json"]);
    ds(
        c,
        "not-json",
        b"type: text_only".to_vec(),
        &[],
        &["data.json"],
    );
    ds(c, "array", j(json!([{"text": "a"}])), &[], &["data.json"]);
    ds(c, "string", j(json!("text_only")), &[], &["data.json"]);
    ds(
        c,
        "no-type",
        j(json!({"instances": [{"text": "a"}]})),
        &[],
        &["type"],
    );
    ds(
        c,
        "type-unknown",
        j(json!({"type": "poetry", "instances": []})),
        &[],
        &["poetry"],
    );
    ds(
        c,
        "type-number",
        j(json!({"type": 3, "instances": []})),
        &[],
        &["type"],
    );
    ds(
        c,
        "no-instances",
        j(json!({"type": "text_only"})),
        &[],
        &["instances"],
    );
    ds(
        c,
        "instances-object",
        j(json!({"type": "text_only", "instances": {"text": "a"}})),
        &[],
        &["instances"],
    );
    ds(
        c,
        "instances-empty",
        j(json!({"type": "text_only", "instances": []})),
        &[],
        &["no instances", "empty"],
    );
    ds(
        c,
        "text-number",
        j(json!({"type": "text_only", "instances": [{"text": 5}]})),
        &[],
        &["text"],
    );
    ds(
        c,
        "text-null",
        j(json!({"type": "text_only", "instances": [{"text": null}]})),
        &[],
        &["text"],
    );
    ds(
        c,
        "text-missing",
        j(json!({"type": "text_only", "instances": [{"txt": "a"}]})),
        &[],
        &["text"],
    );
    ds(
        c,
        "instance-string",
        j(json!({"type": "text_only", "instances": ["a"]})),
        &[],
        &["instance"],
    );
    ds(
        c,
        "text2text-no-output",
        j(json!({"type": "text2text", "instances": [{"input": "a"}]})),
        &[],
        &["output"],
    );
    ds(
        c,
        "conversation-messages-string",
        j(json!({"type": "conversation", "instances": [{"messages": "hi"}]})),
        &[],
        &["messages"],
    );
    ds(
        c,
        "conversation-role-unknown",
        j(
            json!({"type": "conversation", "instances": [{"messages": [{"role": "wizard", "content": "hi"}]}]}),
        ),
        &[],
        &["wizard"],
    );
    ds(
        c,
        "conversation-content-number",
        j(
            json!({"type": "conversation", "instances": [{"messages": [{"role": "user", "content": 7}]}]}),
        ),
        &[],
        &["content"],
    );
    ds(
        c,
        "conversation-no-messages",
        j(json!({"type": "conversation", "instances": [{}]})),
        &[],
        &["messages"],
    );
    ds(
        c,
        "conversation-empty-messages",
        j(json!({"type": "conversation", "instances": [{"messages": []}]})),
        &[],
        &["message", "no tokens", "empty"],
    );
    ds(
        c,
        "deeply-nested",
        format!(
            "{{\"type\": \"text_only\", \"instances\": [{}{}]}}",
            "[".repeat(50_000),
            "]".repeat(50_000)
        )
        .into_bytes(),
        &[],
        &["data.json"],
    );
    ds(
        c,
        "invalid-utf8",
        b"{\"type\": \"text_only\", \"instances\": [{\"text\": \"a\xff\"}]}".to_vec(),
        &[],
        &["data.json"],
    );
    ds(
        c,
        "truncated",
        b"{\"type\": \"text_only\", \"instances\": [{\"text\": \"abc\"}, {\"te".to_vec(),
        &[],
        &["data.json"],
    );
    ds(
        c,
        "unknown-type-flag",
        j(json!({"type": "text_only", "instances": [{"text": "a"}]})),
        &["--type", "limerick"],
        &["limerick"],
    );
    // JSON Lines.
    {
        let f = c.dir("ds-jsonl-bad-line").join("data.jsonl");
        write(
            &f,
            "{\"type\": \"text_only\"}\n{\"text\": \"fine\"}\n{\"text\": \n",
        );
        c.add(
            class,
            "jsonl-bad-line",
            data_stats(&f, &tiny(), &[]),
            err(&["data.jsonl", "line"]),
        );
        let f = c.dir("ds-jsonl-no-header").join("data.jsonl");
        write(&f, "{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
        c.add(
            class,
            "jsonl-no-header",
            data_stats(&f, &tiny(), &[]),
            err(&["--type", "type"]),
        );
    }
    {
        let d = c.dir("ds-empty-folder").join("data");
        std::fs::create_dir_all(&d).unwrap();
        c.add(
            class,
            "empty-folder",
            data_stats(&d, &tiny(), &[]),
            err(&["data"]),
        );
        let d = c.dir("ds-mixed-folder").join("data");
        write(
            &d.join("a.json"),
            j(json!({"type": "text_only", "instances": [{"text": "a"}]})),
        );
        write(
            &d.join("b.json"),
            j(json!({"type": "text2text", "instances": [{"input": "a", "output": "b"}]})),
        );
        c.add(
            class,
            "mixed-types-folder",
            data_stats(&d, &tiny(), &[]),
            err(&["text2text", "type"]),
        );
    }
    // Flags of `data`.
    c.add(
        class,
        "block-size-zero",
        data_stats(
            &repo("assets/data/capitals/train.json"),
            &tiny(),
            &["--block-size", "0"],
        ),
        err(&["block"]),
    );
    // Files under tests/bad_inputs/.
    for (file, patterns) in [
        (
            "dataset_trailing_comma.json",
            &["dataset_trailing_comma.json"][..],
        ),
        ("dataset_duplicate_type.json", &["type"][..]),
        ("dataset_nul_bytes.json", &["dataset_nul_bytes.json"][..]),
    ] {
        c.add(
            class,
            file,
            data_stats(&files.join(file), &tiny(), &[]),
            err(patterns),
        );
    }
    // Documented accepts.
    {
        let f = c.dir("ds-huge-field").join("data.json");
        let text = "All work and no play makes Jack a dull boy. ".repeat(20_000);
        write(
            &f,
            j(json!({"type": "text_only", "instances": [{"text": text}]})),
        );
        c.add(
            class,
            "huge-field-truncated",
            data_stats(&f, &tiny(), &["--block-size", "64"]),
            Expect::Accept("samples longer than --block-size are truncated (stats report the truncated fraction)"),
        );
        let f = c.dir("ds-extra-fields").join("data.json");
        write(
            &f,
            j(
                json!({"type": "text_only", "meta": {"x": 1}, "instances": [{"text": "a b c", "id": 3}]}),
            ),
        );
        c.add(
            class,
            "extra-fields-ignored",
            data_stats(&f, &tiny(), &[]),
            Expect::Accept("keys LMFlow does not use are ignored, as LMFlow"),
        );
        let f = c.dir("ds-empty-text").join("data.json");
        write(
            &f,
            j(json!({"type": "text_only", "instances": [{"text": ""}]})),
        );
        c.add(
            class,
            "empty-text-stats",
            data_stats(&f, &tiny(), &[]),
            Expect::Accept("stats only count (an empty text is 0 tokens); training and eval refuse data without a trained token"),
        );
        c.add(
            class,
            "empty-text-eval",
            args(&["eval", "--model", &s(&tiny()), "--dataset", &s(&f)]),
            err(&["no token", "tokens"]),
        );
        let out = c.dir("ds-empty-text-ft").join("out");
        c.add(
            class,
            "empty-text-finetune",
            finetune(&tiny(), &f, &out, &["--max-steps", "1"]),
            err(&["trained token"]),
        );
        c.add(
            class,
            "conversation-eval",
            args(&[
                "eval",
                "--model",
                &s(&tiny()),
                "--dataset",
                &s(&repo("assets/data/capitals/train.json")),
            ]),
            err(&["text_only"]),
        );
    }
}

fn adapter_cases(c: &mut Corpus, good: &Path) {
    let class = "adapter";
    let with_adapter = |c: &mut Corpus, name: &str| -> PathBuf {
        let d = c.dir(&format!("ad-{name}")).join("adapter");
        copy_dir(good, &d);
        d
    };
    let run = |a: &Path| generate(&tiny(), &["--adapter", &s(a)]);
    {
        let d = c.dir("ad-missing").join("adapter");
        c.add(class, "folder-missing", run(&d), err(&["adapter"]));
    }
    let cfg = read_json(&good.join("adapter_config.json"));
    let cfg_err = |c: &mut Corpus, name: &str, v: Vec<u8>, patterns: &[&'static str]| {
        let a = with_adapter(c, name);
        write(&a.join("adapter_config.json"), v);
        c.add(class, name, run(&a), err(patterns));
    };
    {
        let a = with_adapter(c, "config-missing");
        std::fs::remove_file(a.join("adapter_config.json")).unwrap();
        c.add(
            class,
            "config-missing",
            run(&a),
            err(&["adapter_config.json"]),
        );
    }
    cfg_err(
        c,
        "config-not-json",
        b"r = 4".to_vec(),
        &["adapter_config.json"],
    );
    cfg_err(c, "config-empty", vec![], &["adapter_config.json"]);
    let edits: Vec<(&str, &str, Value, &[&'static str])> = vec![
        ("r-zero", "r", json!(0), &["r"]),
        ("r-mismatch", "r", json!(8), &["rank", "r"]),
        ("r-negative", "r", json!(-4), &["adapter_config.json", "r"]),
        ("r-string", "r", json!("4"), &["adapter_config.json", "r"]),
        (
            "alpha-string",
            "lora_alpha",
            json!("sixteen"),
            &["lora_alpha", "adapter_config.json"],
        ),
        (
            "targets-match-nothing",
            "target_modules",
            json!(["flux_capacitor"]),
            &["flux_capacitor", "target"],
        ),
        (
            "targets-number",
            "target_modules",
            json!(5),
            &["target_modules", "adapter_config.json"],
        ),
        (
            "peft-type-unknown",
            "peft_type",
            json!("PROMPT_TUNING"),
            &["PROMPT_TUNING"],
        ),
        (
            "dropout-string",
            "lora_dropout",
            json!("high"),
            &["lora_dropout", "adapter_config.json"],
        ),
    ];
    for (name, key, value, patterns) in edits {
        let mut v = cfg.clone();
        v[key] = value;
        cfg_err(c, name, serde_json::to_vec(&v).unwrap(), patterns);
    }
    let weights = good.join("adapter_model.safetensors");
    let wbytes = std::fs::read(&weights).unwrap();
    let (wh, _) = st_split(&wbytes);
    let a_name = wh
        .keys()
        .find(|k| k.contains("q_proj.lora_A"))
        .unwrap()
        .clone();
    let w_err = |c: &mut Corpus, name: &str, bytes: Vec<u8>, patterns: &[&'static str]| {
        let a = with_adapter(c, name);
        write(&a.join("adapter_model.safetensors"), bytes);
        c.add(class, name, run(&a), err(patterns));
    };
    {
        let a = with_adapter(c, "weights-missing");
        std::fs::remove_file(a.join("adapter_model.safetensors")).unwrap();
        c.add(class, "weights-missing", run(&a), err(&["adapter_model"]));
    }
    w_err(
        c,
        "weights-truncated",
        wbytes[..wbytes.len() - 7].to_vec(),
        &["adapter_model.safetensors"],
    );
    w_err(c, "weights-empty", vec![], &["adapter_model.safetensors"]);
    {
        let mut b = wbytes.clone();
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        w_err(c, "weights-header-huge", b, &["adapter_model.safetensors"]);
    }
    {
        let (mut h, d) = st_split(&wbytes);
        h[&a_name]["shape"] = json!([2, 64]);
        w_err(
            c,
            "weights-bad-shape-header",
            st_join(&h, &d),
            &["adapter_model.safetensors"],
        );
    }
    {
        // Consistent file, wrong input dimension for the layer.
        let bytes = st_rebuild(&wbytes, |t| {
            t.insert(
                a_name.clone(),
                ("F32".into(), vec![4, 100], vec![0; 4 * 4 * 100]),
            );
        });
        w_err(
            c,
            "weights-wrong-in-features",
            bytes,
            &[a_name.as_str().to_owned().leak()],
        );
    }
    {
        let (mut h, d) = st_split(&wbytes);
        h.remove(&a_name);
        w_err(
            c,
            "weights-lora-a-missing",
            st_join(&h, &d),
            &["lora_A", "q_proj"],
        );
    }
    {
        let (mut h, mut d) = st_split(&wbytes);
        let at = d.len();
        d.extend_from_slice(&vec![0; 4 * 4 * 128]);
        h.insert(
            "base_model.model.model.layers.0.self_attn.rotary.lora_A.weight".into(),
            json!({"dtype": "F32", "shape": [4, 128], "data_offsets": [at, at + 2048]}),
        );
        w_err(c, "weights-unknown-layer", st_join(&h, &d), &["rotary"]);
    }
    for (name, value) in [("weights-nan", f32::NAN), ("weights-inf", f32::INFINITY)] {
        let (h, mut d) = st_split(&wbytes);
        let (a, _) = offsets(&h, &a_name);
        d[a..a + 4].copy_from_slice(&value.to_le_bytes());
        w_err(
            c,
            name,
            st_join(&h, &d),
            &[a_name.as_str().to_owned().leak()],
        );
    }
    {
        let a = with_adapter(c, "pickle-only");
        std::fs::rename(
            a.join("adapter_model.safetensors"),
            a.join("adapter_model.bin"),
        )
        .unwrap();
        c.add(class, "pickle-only", run(&a), err(&["pickle"]));
    }
    {
        let a = with_adapter(c, "unknown-config-key");
        let mut v = cfg.clone();
        v["some_new_peft_option"] = json!(true);
        write_json(&a.join("adapter_config.json"), &v);
        c.add(
            class,
            "unknown-config-key",
            run(&a),
            Expect::Accept(
                "unknown adapter_config.json keys are ignored, as PEFT warns and ignores",
            ),
        );
    }
    // merge refuses to write into inputs.
    {
        let a = with_adapter(c, "merge-into-adapter");
        let sum = std::fs::read(a.join("adapter_model.safetensors")).unwrap();
        let a2 = a.clone();
        c.add_checked(
            class,
            "merge-out-is-adapter",
            args(&[
                "merge",
                "--model",
                &s(&tiny()),
                "--adapter",
                &s(&a),
                "--out",
                &s(&a),
            ]),
            err(&["--out"]),
            Box::new(move || {
                (std::fs::read(a2.join("adapter_model.safetensors")).unwrap() == sum)
                    .then_some(())
                    .ok_or_else(|| "the adapter was modified".to_string())
            }),
        );
        let m = c.model("merge-into-model");
        let before = std::fs::read(m.join("model.safetensors")).unwrap();
        let m2 = m.clone();
        c.add_checked(
            class,
            "merge-out-is-model",
            args(&[
                "merge",
                "--model",
                &s(&m),
                "--adapter",
                &s(good),
                "--out",
                &s(&m),
            ]),
            err(&["--out"]),
            Box::new(move || {
                (std::fs::read(m2.join("model.safetensors")).unwrap() == before)
                    .then_some(())
                    .ok_or_else(|| "the model was modified".to_string())
            }),
        );
    }
}

fn flag_cases(c: &mut Corpus) {
    let class = "flags";
    let data = repo("assets/data/capitals/train.json");
    let out = c.dir("flags-out").join("out");
    let ft: Vec<(&str, &[&str], &[&'static str])> = vec![
        ("lora-r-zero", &["--lora-r", "0"], &["--lora-r"]),
        (
            "lora-r-huge",
            &["--lora-r", "1000000000000"],
            &["rank", "r"],
        ),
        ("lora-r-negative", &["--lora-r=-4"], &["--lora-r"]),
        (
            "lora-alpha-nan",
            &["--lora-alpha", "nan"],
            &["--lora-alpha"],
        ),
        (
            "lora-alpha-inf",
            &["--lora-alpha", "inf"],
            &["--lora-alpha"],
        ),
        (
            "lora-alpha-negative",
            &["--lora-alpha=-1"],
            &["--lora-alpha"],
        ),
        (
            "lora-dropout-one",
            &["--lora-dropout", "1"],
            &["--lora-dropout"],
        ),
        (
            "lora-dropout-nan",
            &["--lora-dropout", "nan"],
            &["--lora-dropout"],
        ),
        ("block-size-one", &["--block-size", "1"], &["--block-size"]),
        ("block-size-zero", &["--block-size", "0"], &["--block-size"]),
        ("max-steps-zero", &["--max-steps", "0"], &["--max-steps"]),
        ("epochs-zero", &["--epochs", "0"], &["--epochs"]),
        ("epochs-nan", &["--epochs", "NaN"], &["--epochs"]),
        (
            "learning-rate-nan",
            &["--learning-rate", "nan"],
            &["--learning-rate"],
        ),
        (
            "learning-rate-negative",
            &["--learning-rate=-0.1"],
            &["--learning-rate"],
        ),
        (
            "warmup-ratio-inf",
            &["--warmup-ratio", "inf"],
            &["--warmup-ratio"],
        ),
        ("batch-size-zero", &["--batch-size", "0"], &["batch"]),
        ("grad-accum-zero", &["--grad-accum", "0"], &["accum"]),
        (
            "scheduler-unknown",
            &["--lr-scheduler", "zigzag"],
            &["zigzag"],
        ),
        ("optim-unknown", &["--optim", "teleport"], &["teleport"]),
        ("template-unknown", &["--template", "klingon"], &["klingon"]),
        (
            "target-modules-nothing",
            &["--target-modules", "warp_core"],
            &["warp_core"],
        ),
        (
            "lisa-layers-zero",
            &["--full", "--lisa-layers", "0"],
            &["--lisa-layers"],
        ),
        (
            "lora-plus-nan",
            &["--lora-plus-ratio", "nan"],
            &["--lora-plus-ratio"],
        ),
        ("max-steps-text", &["--max-steps", "ten"], &["--max-steps"]),
        (
            "config-missing",
            &["--config", "/nonexistent/train.json"],
            &["train.json"],
        ),
        (
            "dataset-missing",
            &["--dataset", "/nonexistent/data.json"],
            &["data.json"],
        ),
        (
            "eval-dataset-missing",
            &["--eval-dataset", "/nonexistent/eval.json"],
            &["eval.json"],
        ),
    ];
    for (name, extra, patterns) in ft {
        let mut a = finetune(&tiny(), &data, &out, &["--max-steps", "1"]);
        if extra[0] == "--dataset" {
            let i = a.iter().position(|x| x == "--dataset").unwrap();
            a[i + 1] = extra[1].to_string();
        } else {
            a.extend(args(extra));
        }
        c.add(class, &format!("finetune-{name}"), a, err(patterns));
    }
    c.add(
        class,
        "finetune-block-size-beyond-context",
        finetune(&tiny(), &data, &out, &["--max-steps", "1", "--block-size", "100000000"]),
        Expect::Accept("--block-size is clamped to the model's context with a warning, as LMFlow clamps to model_max_length"),
    );
    c.add(
        class,
        "finetune-save-steps-zero",
        finetune(
            &tiny(),
            &data,
            &c.dir("flags-save-0").join("out"),
            &["--max-steps", "1", "--save-steps", "0"],
        ),
        Expect::Accept(
            "--save-steps 0 saves no intermediate checkpoint, only the last step and final/",
        ),
    );
    {
        let f = c.dir("flags-config-nan").join("train.json");
        write(&f, "{\"learning_rate\": -1.0, \"max_grad_norm\": -5.0}");
        c.add(
            class,
            "finetune-config-file-values",
            finetune(&tiny(), &data, &out, &["--config", &s(&f)]),
            err(&["learning_rate", "max_grad_norm"]),
        );
        let f = c.dir("flags-config-bad").join("train.json");
        write(&f, "{\"learning_rate\": \"fast\"}");
        c.add(
            class,
            "finetune-config-file-type",
            finetune(&tiny(), &data, &out, &["--config", &s(&f)]),
            err(&["train.json", "learning_rate"]),
        );
    }
    let gen_cases: Vec<(&str, &[&str], &[&'static str])> = vec![
        (
            "temperature-negative",
            &["--temperature=-1"],
            &["temperature"],
        ),
        (
            "temperature-nan",
            &["--temperature", "nan"],
            &["temperature"],
        ),
        ("top-p-above-one", &["--top-p", "2"], &["top_p", "top-p"]),
        ("top-p-nan", &["--top-p", "nan"], &["top_p", "top-p"]),
        ("min-p-negative", &["--min-p=-0.5"], &["min_p", "min-p"]),
        (
            "repetition-penalty-zero",
            &["--repetition-penalty", "0"],
            &["repetition"],
        ),
        (
            "repetition-penalty-inf",
            &["--repetition-penalty", "inf"],
            &["repetition"],
        ),
        (
            "num-return-zero",
            &["--num-return-sequences", "0"],
            &["num_return_sequences", "num-return-sequences"],
        ),
        (
            "rope-scaling-not-json",
            &["--rope-scaling", "{yarn"],
            &["--rope-scaling"],
        ),
        (
            "rope-scaling-factor-negative",
            &["--rope-scaling", "{\"rope_type\":\"linear\",\"factor\":-4}"],
            &["factor"],
        ),
        (
            "draft-missing",
            &["--draft-model", "/nonexistent/draft"],
            &["draft"],
        ),
        (
            "gamma-zero",
            &["--draft-model", "ASSETS", "--gamma", "0"],
            &["gamma"],
        ),
        ("device-unknown", &["--device", "abacus"], &["abacus"]),
        ("dtype-unknown", &["--dtype", "f8"], &["f8"]),
        (
            "input-missing",
            &["--input", "/nonexistent/prompts.txt"],
            &["prompts.txt"],
        ),
        (
            "max-new-tokens-negative",
            &["--max-new-tokens=-1"],
            &["--max-new-tokens"],
        ),
    ];
    for (name, extra, patterns) in gen_cases {
        let extra: Vec<String> = extra
            .iter()
            .map(|x| {
                if *x == "ASSETS" {
                    s(&tiny())
                } else {
                    x.to_string()
                }
            })
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        c.add(
            class,
            &format!("generate-{name}"),
            generate(&tiny(), &extra),
            err(patterns),
        );
    }
    {
        let f = c.dir("flags-prompts-bad").join("prompts.jsonl");
        write(
            &f,
            "{\"prompt\": \"hello\"}\n{\"question\": \"no prompt key\"}\n",
        );
        c.add(
            class,
            "generate-input-jsonl-no-prompt",
            generate(&tiny(), &["--input", &s(&f)]),
            err(&["prompts.jsonl:2"]),
        );
        let f = c.dir("flags-prompts-empty").join("prompts.txt");
        write(&f, "\n\n");
        c.add(
            class,
            "generate-input-empty",
            generate(&tiny(), &["--input", &s(&f)]),
            err(&["no prompts"]),
        );
    }
    c.add(
        class,
        "generate-max-new-tokens-huge",
        generate(&tiny(), &["--max-new-tokens", "100000000"]),
        Expect::Accept("--max-new-tokens is clamped to the context with a warning, as transformers stops at max_length"),
    );
    c.add(
        class,
        "generate-empty-prompt",
        generate(&tiny(), &["--prompt", ""]),
        err(&["no tokens"]),
    );
    let eval_data = repo("assets/data/moby-dick-eval.json");
    for (name, extra, patterns) in [
        (
            "eval-batch-size-zero",
            &["--batch-size", "0"][..],
            &["batch"][..],
        ),
        (
            "eval-block-size-zero",
            &["--block-size", "0"][..],
            &["block"][..],
        ),
        (
            "eval-block-size-one",
            &["--block-size", "1"][..],
            &["block", "token"][..],
        ),
        ("eval-stride-zero", &["--stride", "0"][..], &["stride"][..]),
        (
            "eval-metric-unknown",
            &["--metric", "vibes"][..],
            &["vibes"][..],
        ),
    ] {
        let mut a = args(&["eval", "--model", &s(&tiny()), "--dataset", &s(&eval_data)]);
        a.extend(args(extra));
        c.add(class, name, a, err(patterns));
    }
    c.add(
        class,
        "unknown-subcommand",
        args(&["levitate"]),
        err(&["levitate"]),
    );
    c.add(class, "no-arguments", args(&[]), err(&["usage"]));
}

fn checkpoint_cases(c: &mut Corpus, base: &Path) {
    let class = "checkpoint";
    let data = repo("assets/data/capitals/train.json");
    // The base run has checkpoint-1, checkpoint-2 and final/ (rank 4, 2 steps, saved every
    // step). Resuming it for a third step reads checkpoint-2.
    let resume = |out: &Path, extra: &[&str]| {
        let mut e = vec!["--max-steps", "3", "--save-steps", "1"];
        e.extend_from_slice(extra);
        finetune(&tiny(), &data, out, &e)
    };
    let damaged = |c: &mut Corpus, name: &str, damage: &dyn Fn(&Path)| -> PathBuf {
        let out = c.dir(&format!("ck-{name}")).join("out");
        copy_dir(base, &out);
        damage(&out);
        out
    };
    let ck2 = |o: &Path| o.join("checkpoint-2");
    let adapter_file = |o: &Path| {
        let w = o.join("checkpoint-2/weights");
        std::fs::read_dir(&w)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .unwrap()
    };
    let cases: Vec<(&str, Damage, Expect)> = vec![
        (
            "state-missing",
            Box::new(move |o: &Path| {
                std::fs::remove_file(ck2(o).join("trainer_state.json")).unwrap()
            }),
            Expect::Accept(
                "a checkpoint without trainer_state.json is incomplete (killed mid-save) and skipped; the run resumes from the newest complete one",
            ),
        ),
        (
            "state-garbage",
            Box::new(move |o: &Path| write(&ck2(o).join("trainer_state.json"), "{\"global_st")),
            err(&["trainer_state.json", "checkpoint-2"]),
        ),
        (
            "state-wrong-types",
            Box::new(move |o: &Path| {
                write(
                    &ck2(o).join("trainer_state.json"),
                    "{\"global_step\": \"two\"}",
                )
            }),
            err(&["trainer_state.json", "checkpoint-2"]),
        ),
        (
            "state-step-huge",
            Box::new(move |o: &Path| {
                let mut v = read_json(&ck2(o).join("trainer_state.json"));
                v["global_step"] = json!(1u64 << 60);
                write_json(&ck2(o).join("trainer_state.json"), &v);
            }),
            err(&["global_step", "checkpoint-2"]),
        ),
        (
            "weights-missing",
            Box::new(move |o: &Path| std::fs::remove_dir_all(ck2(o).join("weights")).unwrap()),
            err(&["checkpoint-2"]),
        ),
        (
            "weights-truncated",
            Box::new(move |o: &Path| {
                let f = adapter_file(o);
                let b = std::fs::read(&f).unwrap();
                write(&f, &b[..b.len() / 2]);
            }),
            err(&["checkpoint-2"]),
        ),
        (
            "weights-nan",
            Box::new(move |o: &Path| {
                let f = adapter_file(o);
                let (h, mut d) = st_split(&std::fs::read(&f).unwrap());
                let name = h.keys().find(|k| k.contains("lora_B")).unwrap().clone();
                let (a, _) = offsets(&h, &name);
                d[a..a + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                write(&f, st_join(&h, &d));
            }),
            err(&["holds NaN"]),
        ),
        (
            "optimizer-missing",
            Box::new(move |o: &Path| std::fs::remove_file(ck2(o).join("optimizer.bpk")).unwrap()),
            Expect::Accept(
                "a missing optimizer state resumes with a fresh optimizer and a warning",
            ),
        ),
        (
            "optimizer-garbage",
            Box::new(move |o: &Path| write(&ck2(o).join("optimizer.bpk"), b"\x00\x01garbage")),
            err(&["optimizer"]),
        ),
        (
            "optimizer-truncated",
            Box::new(move |o: &Path| {
                let b = std::fs::read(ck2(o).join("optimizer.bpk")).unwrap();
                write(&ck2(o).join("optimizer.bpk"), &b[..b.len() / 2]);
            }),
            err(&["optimizer"]),
        ),
        (
            "run-json-garbage",
            Box::new(|o: &Path| write(&o.join("run.json"), "{{{")),
            err(&["run.json"]),
        ),
        (
            "run-json-other-rank",
            Box::new(|o: &Path| {
                let mut v = read_json(&o.join("run.json"));
                v["rank"] = json!(16);
                write_json(&o.join("run.json"), &v);
            }),
            err(&["rank: 16 in the folder's run, 4 now"]),
        ),
        (
            "checkpoint-is-a-file",
            Box::new(move |o: &Path| {
                std::fs::remove_dir_all(ck2(o)).unwrap();
                write(&ck2(o), "not a folder");
            }),
            err(&["checkpoint-2 is not a checkpoint folder"]),
        ),
        (
            "leftover-temp-folder",
            Box::new(|o: &Path| write(&o.join(".checkpoint-3.tmp/trainer_state.json"), "{}")),
            Expect::Accept("a staging folder left by a killed save is ignored and replaced"),
        ),
        (
            "metrics-garbage",
            Box::new(|o: &Path| write(&o.join("metrics.jsonl"), "\x00\x01 not json\n")),
            err(&["metrics.jsonl"]),
        ),
        (
            "output-is-a-file",
            Box::new(|o: &Path| {
                std::fs::remove_dir_all(o).unwrap();
                write(o, "I am a file");
            }),
            err(&["out"]),
        ),
    ];
    for (name, damage, expect) in cases {
        let out = damaged(c, name, &*damage);
        c.add(class, name, resume(&out, &[]), expect);
    }
    // --resume-fallback: a damaged newest checkpoint is skipped only when asked.
    let out = damaged(c, "fallback", &|o: &Path| {
        write(&ck2(o).join("trainer_state.json"), "{\"global_st")
    });
    let o2 = out.clone();
    c.add_checked(
        class,
        "resume-fallback",
        resume(&out, &["--resume-fallback"]),
        Expect::Accept("--resume-fallback: the damaged newest checkpoint is reported and the run resumes from the previous good one"),
        Box::new(move || {
            let state = read_json(&o2.join("checkpoint-3/trainer_state.json"));
            (state["global_step"] == 3)
                .then_some(())
                .ok_or_else(|| format!("unexpected state {state}"))
        }),
    );
    // --no-resume into a run's folder; --overwrite-output keeps foreign files.
    let out = damaged(c, "no-resume", &|_| {});
    c.add(
        class,
        "no-resume-over-run",
        resume(&out, &["--no-resume"]),
        err(&["--overwrite-output"]),
    );
}

fn kill_cases(c: &mut Corpus) {
    let class = "kill";
    let data = repo("assets/data/capitals/train.json");
    // SIGKILL at staggered moments of a run that saves after every step; the run must then
    // resume from a complete checkpoint and finish.
    for (i, ms) in [300u64, 700, 1100, 1500, 1900, 2400, 2900, 3500]
        .into_iter()
        .enumerate()
    {
        let out = c.dir(&format!("kill-{i}")).join("out");
        let run = finetune(
            &tiny(),
            &data,
            &out,
            &["--max-steps", "30", "--save-steps", "1"],
        );
        let then = finetune(
            &tiny(),
            &data,
            &out,
            &["--max-steps", "31", "--save-steps", "1"],
        );
        c.cases.push(Case {
            class,
            name: format!("{class}/sigkill-after-{ms}ms"),
            run: Run::Kill {
                first: run,
                delay: Duration::from_millis(ms),
                out,
                then,
            },
            expect: Expect::Accept(
                "a run killed at any moment resumes from its newest complete checkpoint",
            ),
            check: None,
        });
    }
}

// ---------------------------------------------------------------- running

fn spawn(args: &[String], dir: &Path, tag: &str) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmflow"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{tag}.stdout"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{tag}.stderr"))).unwrap())
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG");
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            libc::setrlimit(libc::RLIMIT_AS, &limit);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

struct Finished {
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    stderr: String,
}

fn wait(mut child: Child, dir: &Path, tag: &str, timeout: Duration) -> Finished {
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = std::fs::read(dir.join(format!("{tag}.stderr"))).unwrap_or_default();
    Finished {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Every `checkpoint-N` folder left in `out` is complete.
fn checkpoints_complete(out: &Path) -> Result<usize, String> {
    let mut n = 0;
    for e in std::fs::read_dir(out).map_err(|e| e.to_string())? {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name
            .strip_prefix("checkpoint-")
            .is_some_and(|r| r.parse::<usize>().is_ok())
        {
            let p = e.path();
            for f in ["trainer_state.json", "optimizer.bpk", "weights"] {
                if !p.join(f).exists() {
                    return Err(format!("{name} lacks {f} after the kill"));
                }
            }
            serde_json::from_str::<Value>(
                &std::fs::read_to_string(p.join("trainer_state.json")).unwrap(),
            )
            .map_err(|e| format!("{name}/trainer_state.json: {e}"))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Outcome of one case.
#[derive(Debug, PartialEq, Eq, Clone, Copy, PartialOrd, Ord)]
enum Verdict {
    ClearError,
    Accept,
    Panic,
    Abort,
    Timeout,
    SilentSuccess,
    UnclearError,
    UnexpectedError,
    CheckFailed,
}

fn run_case(case: &Case, dir: &Path) -> (Verdict, String) {
    let f = match &case.run {
        Run::Args(a) => wait(spawn(a, dir, "run"), dir, "run", CASE_TIMEOUT),
        Run::Kill {
            first,
            delay,
            out,
            then,
        } => {
            let mut child = spawn(first, dir, "killed");
            std::thread::sleep(*delay);
            let _ = child.kill();
            let _ = child.wait();
            if out.exists()
                && let Err(e) = checkpoints_complete(out)
            {
                return (Verdict::CheckFailed, e);
            }
            wait(spawn(then, dir, "run"), dir, "run", CASE_TIMEOUT)
        }
    };
    let message = f
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(6)
        .collect::<Vec<_>>()
        .join(" | ");
    let verdict = if f.timed_out {
        Verdict::Timeout
    } else if f.signal.is_some() {
        Verdict::Abort
    } else if f.code == Some(101) || f.stderr.contains("panicked") {
        Verdict::Panic
    } else {
        let ok = f.code == Some(0);
        match (&case.expect, ok) {
            (Expect::Error(_), true) => Verdict::SilentSuccess,
            (Expect::Error(p), false) => {
                let lower = f.stderr.to_lowercase();
                if p.iter().any(|p| lower.contains(&p.to_lowercase())) {
                    Verdict::ClearError
                } else {
                    Verdict::UnclearError
                }
            }
            (Expect::Accept(_), true) => Verdict::Accept,
            (Expect::Accept(_), false) => Verdict::UnexpectedError,
        }
    };
    if matches!(verdict, Verdict::ClearError | Verdict::Accept)
        && let Some(check) = &case.check
        && let Err(e) = check()
    {
        return (Verdict::CheckFailed, e);
    }
    let detail = match f.signal {
        Some(sig) => format!("signal {sig}: {message}"),
        None => format!("exit {:?}: {message}", f.code),
    };
    (verdict, detail)
}

fn build_corpus() -> (tempfile::TempDir, Corpus) {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut c = Corpus {
        root: tmp.path().to_path_buf(),
        cases: Vec::new(),
        setup: 0.0,
    };
    // Shared fixture: a good two-step LoRA run (checkpoints 1 and 2, final adapter).
    let base = tmp.path().join("base-run");
    let a = finetune(
        &tiny(),
        &repo("assets/data/capitals/train.json"),
        &base,
        &["--max-steps", "2", "--save-steps", "1"],
    );
    let dir = tmp.path().join("base-logs");
    let f = wait(spawn(&a, &dir, "base"), &dir, "base", CASE_TIMEOUT);
    assert_eq!(f.code, Some(0), "base run failed: {}", f.stderr);
    c.setup = started.elapsed().as_secs_f64();
    model_config_cases(&mut c);
    safetensors_cases(&mut c);
    tokenizer_cases(&mut c);
    template_cases(&mut c);
    dataset_cases(&mut c);
    adapter_cases(&mut c, &base.join("final"));
    flag_cases(&mut c);
    checkpoint_cases(&mut c, &base);
    kill_cases(&mut c);
    (tmp, c)
}

#[test]
fn bad_input_corpus() {
    let (_tmp, mut corpus) = build_corpus();
    let filter = std::env::var("BAD_INPUTS_FILTER").ok();
    let verbose = std::env::var("BAD_INPUTS_VERBOSE").is_ok();
    let total = corpus.cases.len();
    if let Some(f) = &filter {
        corpus.cases.retain(|c| c.name.contains(f.as_str()));
    } else {
        assert!(total >= 150, "the corpus has only {total} cases");
    }
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Verdict, String, f64)>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    let root = corpus.root.join("runs");
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(case) = corpus.cases.get(i) else {
                        break;
                    };
                    let t = Instant::now();
                    let dir = root.join(i.to_string());
                    let (v, detail) = run_case(case, &dir);
                    results
                        .lock()
                        .unwrap()
                        .push((i, v, detail, t.elapsed().as_secs_f64()));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| r.0);
    let mut counts: BTreeMap<Verdict, usize> = BTreeMap::new();
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, v, detail, secs) in &results {
        let case = &corpus.cases[*i];
        *counts.entry(*v).or_default() += 1;
        *by_class.entry(case.class).or_default() += 1;
        let expected = match &case.expect {
            Expect::Error(p) => format!("error matching {p:?}"),
            Expect::Accept(why) => format!("accept ({why})"),
        };
        if verbose {
            println!("{:<55} {v:?} {secs:.1}s  {detail}", case.name);
        }
        if !matches!(v, Verdict::ClearError | Verdict::Accept) {
            failures.push(format!(
                "{}: {v:?}, expected {expected}\n    {detail}",
                case.name
            ));
        }
    }
    let n = |v| counts.get(&v).copied().unwrap_or(0);
    let slowest = results
        .iter()
        .max_by(|a, b| a.3.total_cmp(&b.3))
        .map(|r| format!("{} {:.1}s", corpus.cases[r.0].name, r.3))
        .unwrap_or_default();
    let summary = format!(
        "{} cases: {} clear errors, {} documented accepts, {} panics, {} aborts, {} timeouts, \
         {} silent successes, {} unclear errors, {} unexpected errors, {} failed checks \
         ({:.0}s on {threads} threads after {:.0}s of setup; slowest: {slowest})",
        results.len(),
        n(Verdict::ClearError),
        n(Verdict::Accept),
        n(Verdict::Panic),
        n(Verdict::Abort),
        n(Verdict::Timeout),
        n(Verdict::SilentSuccess),
        n(Verdict::UnclearError),
        n(Verdict::UnexpectedError),
        n(Verdict::CheckFailed),
        started.elapsed().as_secs_f64(),
        corpus.setup,
    );
    // Written to the process's stderr itself, not through `println!` (which the test harness
    // captures), so that CI's log shows the counts of every run.
    {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "bad-input corpus: {summary}");
        let _ = writeln!(err, "bad-input corpus by class: {by_class:?}");
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
