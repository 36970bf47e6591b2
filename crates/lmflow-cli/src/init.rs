//! `lmflow init`: a randomly initialised model folder from a configuration, the starting point
//! of pretraining from scratch (`AutoModelForCausalLM.from_config(config)` followed by
//! `save_pretrained` in transformers; LMFlow's `--config_name` without `--model_name_or_path`).
//!
//! The weights are drawn as transformers' `_init_weights` draws them: linear and embedding
//! weights `N(0, initializer_range)` (`init_std` for OPT; default 0.02), biases 0, norm weights 1
//! (norm biases 0), the padding row of the token embedding 0 (LLaMA family and OPT, which give
//! their embedding a `padding_idx`), and GPT-2's residual projections (`c_proj`)
//! `N(0, initializer_range / sqrt(2 * n_layer))`. The draws come from the CPU backend's generator
//! seeded with `--seed`: the same seed gives the same file. The folder gets the tokenizer files
//! of `--tokenizer`, so it is a complete model folder that `lmflow finetune --full` continues
//! (see docs/pretraining.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::{Distribution, Tensor, TensorData};
use lmflow_models::{CausalLm, LoadOptions, ModelConfig, Tokenizer, load_pretrained};

/// Arguments of `lmflow init`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model configuration: a `config.json` file, or a folder holding one (only the
    /// configuration is read, never weights).
    #[arg(long)]
    config: PathBuf,
    /// Folder of the tokenizer files (tokenizer.json, tokenizer_config.json, ...), e.g. made by
    /// `lmflow tokenizer train`; copied into the output folder.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output model folder (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// How one tensor of a fresh model is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitRule {
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases).
    Zeros,
    /// `N(0, std)`; with `zero_row`, that row is set to 0 afterwards (an embedding's padding
    /// row).
    Normal {
        /// Standard deviation.
        std: f64,
        /// Row set to zero (the `padding_idx` of a token embedding).
        zero_row: Option<usize>,
    },
}

/// The transformers `_init_weights` rule for the tensor `name` (Hub name) of shape `shape` of
/// a model with configuration `config`.
pub fn init_rule(config: &ModelConfig, name: &str, shape: &[usize]) -> anyhow::Result<InitRule> {
    let opt = config.model_type == "opt";
    let std = if opt {
        config.f64_opt("init_std")?
    } else {
        config.f64_opt("initializer_range")?
    }
    .unwrap_or(0.02);
    if !(std.is_finite() && std >= 0.0) {
        bail!("initializer_range {std}: must be a finite, non-negative number");
    }
    if shape.len() == 1 {
        // The only 1-D parameters are norm weights/biases and linear biases.
        return Ok(if name.ends_with(".weight") {
            InitRule::Ones
        } else {
            InitRule::Zeros
        });
    }
    let zero_row = if name.ends_with("embed_tokens.weight") {
        config
            .token_ids("pad_token_id")?
            .first()
            .map(|&p| p as usize)
            .filter(|&p| p < shape[0])
    } else {
        None
    };
    let std = if config.model_type == "gpt2" && name.ends_with("c_proj.weight") {
        let layers = config.usize_req(&["n_layer", "num_hidden_layers"])?;
        std / (2.0 * layers as f64).sqrt()
    } else {
        std
    };
    Ok(InitRule::Normal { std, zero_row })
}

/// The tensors (Hub names, f32) of a model with `config`, initialised as transformers'
/// `_init_weights` (see [`init_rule`]), drawn from `device`'s generator in name order.
pub fn init_tensors(
    config: &ModelConfig,
    device: &burn::tensor::Device,
) -> anyhow::Result<Vec<(String, TensorData)>> {
    // The architecture decides the names and shapes; its own (PyTorch-default) draws are
    // replaced below.
    let template = CausalLm::from_config(config, device)?.state_dict();
    let mut out = Vec::with_capacity(template.len());
    for (name, data) in template {
        let shape = data.shape().to_vec();
        drop(data);
        let numel: usize = shape.iter().product();
        let values = match init_rule(config, &name, &shape)
            .with_context(|| format!("config.json: initialising {name}"))?
        {
            InitRule::Ones => vec![1.0f32; numel],
            InitRule::Zeros => vec![0.0f32; numel],
            InitRule::Normal { std, zero_row } => {
                let mut v = Tensor::<1>::random([numel], Distribution::Normal(0.0, std), device)
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
                if let Some(row) = zero_row {
                    let width = numel / shape[0];
                    v[row * width..(row + 1) * width].fill(0.0);
                }
                v
            }
        };
        out.push((name, TensorData::new(values, shape)));
    }
    Ok(out)
}

fn read_config(path: &Path) -> anyhow::Result<ModelConfig> {
    Ok(if path.is_dir() {
        ModelConfig::from_dir(path)?
    } else {
        ModelConfig::from_file(path)?
    })
}

/// Runs `lmflow init`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = read_config(&args.config)?;
    let tokenizer = Tokenizer::from_dir(&args.tokenizer)
        .with_context(|| format!("--tokenizer {}", args.tokenizer.display()))?;
    let vocab = config
        .usize_req(&["vocab_size"])
        .with_context(|| format!("--config {}", args.config.display()))?;
    if tokenizer.vocab_size() > vocab {
        bail!(
            "--config {}: vocab_size {vocab} is smaller than the tokenizer's {} tokens ({})",
            args.config.display(),
            tokenizer.vocab_size(),
            args.tokenizer.display()
        );
    }
    crate::merge::check_output_folder(
        &args.out,
        &[("--config", &args.config), ("--tokenizer", &args.tokenizer)],
    )?;
    let device = burn::tensor::Device::flex();
    device.seed(args.seed);
    let tensors = init_tensors(&config, &device)?;
    let params: usize = tensors.iter().map(|(_, t)| t.num_elements()).sum();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    lmflow_models::save_safetensors(&args.out.join("model.safetensors"), &tensors)?;
    drop(tensors);
    let key = if config.raw.contains_key("torch_dtype") {
        "torch_dtype"
    } else {
        "dtype"
    };
    config.set(key, serde_json::Value::String("float32".into()));
    config.save(&args.out)?;
    lmflow_models::model::copy_tokenizer_files(&args.tokenizer, &args.out)?;
    // The folder must load as any model folder does.
    load_pretrained(&args.out, &device, &LoadOptions::default())
        .with_context(|| format!("reloading {}", args.out.display()))?;
    eprintln!(
        "initialised {} ({} parameters, seed {}) -> {}",
        config.model_type,
        params,
        args.seed,
        args.out.display()
    );
    Ok(())
}
