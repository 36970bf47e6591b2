//! `lmflow tokenizer train` and `lmflow tokenizer extend`: LMFlow's model customisation.
//!
//! - `train`: a byte-level BPE tokenizer (GPT-2 / Qwen style: byte-level pre-tokenizer and
//!   decoder, no normaliser) trained with the `tokenizers` BPE trainer on text files, with
//!   special tokens first (ids 0, 1, ...), written as `tokenizer.json` + `tokenizer_config.json`
//!   (special tokens, `model_max_length`, a ChatML chat template by default) that both
//!   `lmflow` and transformers' `AutoTokenizer` load.
//! - `extend`: adds tokens to a model folder's tokenizer (a file of tokens, or the words of
//!   domain text that a BPE tokenizer trained on it keeps whole and the model's tokenizer
//!   splits), as
//!   transformers' `tokenizer.add_tokens`, and resizes the input embeddings and the output head
//!   as `model.resize_token_embeddings(len(tokenizer))`: old rows are kept, each new row is the
//!   mean of the old rows (transformers' default `mean_resizing` draws the new rows from a normal
//!   distribution with that mean and 1e-9 times the rows' covariance; here exactly the mean).
//!   `config.json`'s `vocab_size` is updated. Old token ids keep their rows, so the logits of
//!   old tokens for text made of old tokens are unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::Value;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, Tokenizer, TokenizerBuilder, TokenizerImpl,
};

/// The default chat template of trained tokenizers (ChatML, as the bundled tiny model's).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Arguments of `lmflow tokenizer`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Train a byte-level BPE tokenizer on text files.
    Train(TrainArgs),
    /// Add tokens to a model folder's tokenizer and resize its embeddings and output head.
    Extend(ExtendArgs),
}

/// BPE training settings shared by `train` and `extend --train`.
#[derive(clap::Args, Debug)]
struct BpeArgs {
    /// Vocabulary size of the trained tokenizer (special tokens and the 256 byte symbols
    /// included).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Pairs seen fewer times are not merged.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Text files to train on (UTF-8, read whole).
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    #[command(flatten)]
    bpe: BpeArgs,
    /// Output folder (tokenizer.json, tokenizer_config.json).
    #[arg(long)]
    out: PathBuf,
    /// Special tokens, comma separated; they get the first ids in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "<|endoftext|>,<|im_start|>,<|im_end|>"
    )]
    special_tokens: Vec<String>,
    /// End-of-sequence token (must be one of the special tokens).
    #[arg(long, default_value = "<|im_end|>")]
    eos_token: String,
    /// Padding token (must be one of the special tokens).
    #[arg(long, default_value = "<|endoftext|>")]
    pad_token: String,
    /// Beginning-of-sequence token (none by default, as Qwen).
    #[arg(long)]
    bos_token: Option<String>,
    /// `model_max_length` recorded in tokenizer_config.json.
    #[arg(long, default_value_t = 2048)]
    model_max_length: usize,
    /// Jinja chat template file (default: ChatML with `<|im_start|>` / `<|im_end|>`).
    #[arg(long)]
    chat_template: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ExtendArgs {
    /// Model folder (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// File of tokens to add, one per line.
    #[arg(long, conflicts_with = "train", required_unless_present = "train")]
    tokens: Option<PathBuf>,
    /// Text files: a byte-level BPE tokenizer of `--vocab-size` is trained on them; the words
    /// of the files (seen at least `--min-frequency` times) that it encodes as one token and
    /// the model's tokenizer splits into several are added, most frequent first, as whole-word
    /// tokens (they do not match inside longer words).
    #[arg(long, num_args = 1.., requires = "vocab_size")]
    train: Vec<PathBuf>,
    #[command(flatten)]
    bpe: BpeArgs,
    /// Output model folder (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `lmflow tokenizer`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Train(a) => train(a),
        Command::Extend(a) => extend(a),
    }
}

fn paths_as_strings(files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    files
        .iter()
        .map(|f| {
            if !f.is_file() {
                bail!("{}: not a readable file", f.display());
            }
            Ok(f.display().to_string())
        })
        .collect()
}

/// Trains a byte-level BPE tokenizer on `files`.
fn train_bpe(
    files: &[PathBuf],
    bpe: &BpeArgs,
    special_tokens: &[String],
) -> anyhow::Result<Tokenizer> {
    let vocab_size = bpe.vocab_size.context("--vocab-size is required")?;
    let floor = 256 + special_tokens.len();
    if vocab_size <= floor {
        bail!(
            "--vocab-size {vocab_size}: must exceed the 256 byte symbols plus {} special tokens",
            special_tokens.len()
        );
    }
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(bpe.min_frequency)
        .special_tokens(
            special_tokens
                .iter()
                .map(|t| AddedToken::from(t.clone(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, DecoderWrapper> =
        TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
            .with_decoder(Some(ByteLevel::default().into()))
            .build()
            .map_err(|e| anyhow::anyhow!("building the tokenizer: {e}"))?;
    tokenizer
        .train_from_files(&mut trainer, paths_as_strings(files)?)
        .map_err(|e| anyhow::anyhow!("training the tokenizer: {e}"))?;
    Ok(tokenizer.into())
}

fn check_out(out: &Path, inputs: &[(&str, &Path)]) -> anyhow::Result<()> {
    crate::merge::check_output_folder(out, inputs)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

fn save_tokenizer(tokenizer: &Tokenizer, out: &Path) -> anyhow::Result<()> {
    let path = out.join("tokenizer.json");
    tokenizer
        .save(&path, false)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    for (flag, token) in [
        ("--eos-token", &args.eos_token),
        ("--pad-token", &args.pad_token),
    ]
    .into_iter()
    .chain(args.bos_token.as_ref().map(|b| ("--bos-token", b)))
    {
        if !args.special_tokens.contains(token) {
            bail!(
                "{flag} {token:?} is not one of --special-tokens {:?}",
                args.special_tokens
            );
        }
    }
    let chat_template = match &args.chat_template {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => CHATML_TEMPLATE.to_string(),
    };
    let inputs: Vec<(&str, &Path)> = args
        .input
        .iter()
        .map(|p| ("--input", p.as_path()))
        .collect();
    check_out(&args.out, &inputs)?;
    let tokenizer = train_bpe(&args.input, &args.bpe, &args.special_tokens)?;
    save_tokenizer(&tokenizer, &args.out)?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": args.bos_token,
        "eos_token": args.eos_token,
        "pad_token": args.pad_token,
        "unk_token": null,
        "add_bos_token": args.bos_token.is_some(),
        "model_max_length": args.model_max_length,
        "clean_up_tokenization_spaces": false,
        "chat_template": chat_template,
    });
    write_json(&args.out.join("tokenizer_config.json"), &config)?;
    eprintln!(
        "trained a byte-level BPE tokenizer of {} tokens -> {}",
        tokenizer.get_vocab_size(true),
        args.out.display()
    );
    Ok(())
}

/// The words of `files` (runs of alphanumeric characters) that `trained` encodes as one token
/// (alone or after a space) and `old` splits into several, seen at least `min_count` times,
/// most frequent first.
fn learned_words(
    trained: &Tokenizer,
    old: &Tokenizer,
    files: &[PathBuf],
    min_count: u64,
) -> anyhow::Result<Vec<String>> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() >= 2)
        {
            *counts.entry(word.to_string()).or_default() += 1;
        }
    }
    let len = |t: &Tokenizer, s: &str| -> anyhow::Result<usize> {
        Ok(t.encode(s, false)
            .map_err(|e| anyhow::anyhow!("encoding {s:?}: {e}"))?
            .get_ids()
            .len())
    };
    let mut words = Vec::new();
    for (word, count) in counts {
        if count < min_count.max(1) {
            continue;
        }
        let learned = len(trained, &word)? == 1 || len(trained, &format!(" {word}"))? == 1;
        if learned && len(old, &word)? > 1 {
            words.push((count, word));
        }
    }
    words.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok(words.into_iter().map(|(_, w)| w).collect())
}

/// Embedding-like tensors resized with the vocabulary (Hub names across the architectures).
fn is_vocab_tensor(name: &str) -> bool {
    [
        "embed_tokens.weight",
        "wte.weight",
        "lm_head.weight",
        "lm_head.bias",
        "embed_out.weight",
        "word_embeddings.weight",
    ]
    .iter()
    .any(|suffix| name.ends_with(suffix))
}

fn to_f64(dtype: Dtype, bytes: &[u8], name: &str) -> anyhow::Result<Vec<f64>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        other => bail!("tensor `{name}`: dtype {other:?} cannot be resized (f32, f16, bf16)"),
    })
}

fn from_f64(dtype: Dtype, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.bitsize() / 8);
    for &v in values {
        match dtype {
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            _ => out.extend_from_slice(&(v as f32).to_le_bytes()),
        }
    }
    out
}

/// `rows` `[old, width]` bytes extended to `new` rows, each new row the mean of the old ones.
fn mean_resized(
    dtype: Dtype,
    bytes: &[u8],
    old: usize,
    width: usize,
    new: usize,
    name: &str,
) -> anyhow::Result<Vec<u8>> {
    let values = to_f64(dtype, bytes, name)?;
    let mut mean = vec![0.0f64; width];
    for row in values.chunks_exact(width) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    for m in &mut mean {
        *m /= old as f64;
    }
    let mut out = bytes.to_vec();
    let row = from_f64(dtype, &mean);
    for _ in old..new {
        out.extend_from_slice(&row);
    }
    Ok(out)
}

/// The safetensors files of a model folder (one file, or the shards of the index).
fn weight_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index)
        .with_context(|| format!("{}: no model.safetensors nor its index", dir.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{}", index.display()))?;
    let mut files: Vec<PathBuf> = value["weight_map"]
        .as_object()
        .with_context(|| format!("{}: no weight_map", index.display()))?
        .values()
        .filter_map(Value::as_str)
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn extend(args: ExtendArgs) -> anyhow::Result<()> {
    let tok_path = args.model.join("tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
    let mut tokens: Vec<String> = match &args.tokens {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.trim().is_empty())
            .collect(),
        None => {
            let trained = train_bpe(&args.train, &args.bpe, &[])?;
            learned_words(&trained, &tokenizer, &args.train, args.bpe.min_frequency)?
        }
    };
    // As transformers' add_tokens: tokens already in the vocabulary are skipped.
    let mut seen = std::collections::HashSet::new();
    tokens.retain(|t| tokenizer.token_to_id(t).is_none() && seen.insert(t.clone()));
    if tokens.is_empty() {
        bail!("no new token to add: every token is already in the vocabulary");
    }
    check_out(&args.out, &[("--model", &args.model)])?;

    let config_path = args.model.join("config.json");
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("{}: invalid JSON", config_path.display()))?;
    let old_vocab = config["vocab_size"]
        .as_u64()
        .with_context(|| format!("{}: no integer vocab_size", config_path.display()))?
        as usize;
    // Trained words match whole words only (not inside longer words); listed tokens match
    // anywhere, as transformers' add_tokens.
    let single_word = args.tokens.is_none();
    let added_tokens: Vec<AddedToken> = tokens
        .iter()
        .map(|t| AddedToken::from(t.clone(), false).single_word(single_word))
        .collect();
    let added = tokenizer.add_tokens(&added_tokens);
    // transformers: resize_token_embeddings(len(tokenizer)); never below the old size (models
    // whose embeddings are padded beyond the tokenizer keep their rows).
    let new_vocab = tokenizer.get_vocab_size(true).max(old_vocab);

    let mut resized = Vec::new();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut metadata: Option<HashMap<String, String>> = None;
    for file in weight_files(&args.model)? {
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if metadata.is_none() {
            metadata = meta.metadata().clone();
        }
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let mut data = view.data().to_vec();
            let mut new_shape = shape.clone();
            if is_vocab_tensor(&name) && shape.first() == Some(&old_vocab) {
                let width = shape[1..].iter().product::<usize>().max(1);
                data = mean_resized(view.dtype(), &data, old_vocab, width, new_vocab, &name)?;
                new_shape[0] = new_vocab;
                resized.push(name.clone());
            }
            tensors.push((name, view.dtype(), new_shape, data));
        }
    }
    if resized.is_empty() {
        bail!(
            "{}: no embedding tensor with {old_vocab} rows (config vocab_size) to resize",
            args.model.display()
        );
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow::anyhow!("tensor `{name}`: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metadata =
        metadata.unwrap_or_else(|| HashMap::from([("format".to_string(), "pt".to_string())]));
    let out_weights = args.out.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(metadata), &out_weights)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out_weights.display()))?;

    config["vocab_size"] = Value::from(new_vocab);
    write_json(&args.out.join("config.json"), &config)?;
    save_tokenizer(&tokenizer, &args.out)?;
    // Every other file (tokenizer_config.json, generation_config.json, templates, ...) as is.
    for entry in std::fs::read_dir(&args.model)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let skip = name.ends_with(".safetensors")
            || name == "model.safetensors.index.json"
            || name == "config.json"
            || name == "tokenizer.json";
        if !skip && entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), args.out.join(&*name))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    let line = serde_json::json!({
        "added_tokens": added,
        "tokens": tokens,
        "old_vocab_size": old_vocab,
        "vocab_size": new_vocab,
        "resized": resized,
    });
    println!("{line}");
    Ok(())
}
