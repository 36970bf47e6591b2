//! `lmflow eval`: negative log-likelihood / perplexity of a model on a `text_only` dataset,
//! printed as one JSON line.

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::tensor::FloatDType;
use lmflow_datasets::{DatasetType, Instance, ReadOptions, read_dataset};
use lmflow_models::eval::evaluate_nll;
use lmflow_models::{LoadOptions, load_pretrained};

use crate::device::{DeviceKind, resolve};

/// Metric reported by `lmflow eval`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Mean summed NLL per sample (LMFlow's `nll`).
    Nll,
    /// Perplexity `exp(nll_sum / predicted_tokens)`.
    Ppl,
}

/// Float dtype of the weights during evaluation.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
}

/// Arguments of `lmflow eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model folder (Hub layout: config.json, safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// LMFlow `text_only` dataset: a JSON file, a folder of them, or JSON Lines.
    #[arg(long)]
    dataset: PathBuf,
    /// Metric named in the output (both figures are always printed).
    #[arg(long, value_enum, default_value = "ppl")]
    metric: Metric,
    /// Maximum tokens per sample; longer samples are truncated (default: the model's
    /// `max_position_embeddings`).
    #[arg(long)]
    block_size: Option<usize>,
    /// Samples per forward pass (right-padded).
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Weight dtype.
    #[arg(long, value_enum, default_value_t)]
    dtype: Dtype,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
}

/// Runs `lmflow eval`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = resolve(args.device)?;
    let dtype = match args.dtype {
        Dtype::F32 => FloatDType::F32,
        Dtype::Bf16 => FloatDType::BF16,
        Dtype::F16 => FloatDType::F16,
    };
    let opts = LoadOptions {
        dtype: Some(dtype),
        ..Default::default()
    };
    let pretrained = load_pretrained(&args.model, &device, &opts)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let Some(tokenizer) = &pretrained.tokenizer else {
        bail!(
            "{}: no tokenizer.json in the model folder",
            args.model.display()
        );
    };
    let dataset = read_dataset(&args.dataset, &ReadOptions::default())
        .with_context(|| format!("reading dataset {}", args.dataset.display()))?;
    if dataset.dataset_type != DatasetType::TextOnly {
        bail!(
            "{}: dataset type {:?} is not supported by `eval` (supported: text_only)",
            args.dataset.display(),
            dataset.dataset_type
        );
    }
    let mut sequences = Vec::with_capacity(dataset.instances.len());
    for (i, instance) in dataset.instances.iter().enumerate() {
        let Instance::TextOnly { text } = instance else {
            bail!("{}: instance {i} is not text_only", args.dataset.display());
        };
        let ids = tokenizer
            .encode(text, true)
            .with_context(|| format!("tokenizing instance {i}"))?;
        sequences.push(ids);
    }
    let block_size = args
        .block_size
        .unwrap_or_else(|| pretrained.model.max_position_embeddings());
    let stats = evaluate_nll(
        &pretrained.model,
        &sequences,
        block_size,
        args.batch_size,
        &device,
    )?;
    let metric = match args.metric {
        Metric::Nll => "nll",
        Metric::Ppl => "ppl",
    };
    let line = serde_json::json!({
        "metric": metric,
        "nll_mean_per_sample": stats.nll_mean_per_sample(),
        "nll_sum": stats.nll_sum,
        "predicted_tokens": stats.predicted_tokens,
        "ppl": stats.ppl(),
        "samples": stats.samples,
    });
    println!("{line}");
    Ok(())
}
