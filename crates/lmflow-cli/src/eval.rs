//! `lmflow eval`: negative log-likelihood / perplexity of a model (optionally with a PEFT
//! adapter and a RoPE scaling override) on a `text_only` dataset, printed as one JSON line.

use std::path::PathBuf;

use anyhow::{Context, bail};
use lmflow_datasets::{DatasetType, Instance, ReadOptions, read_dataset};
use lmflow_infer::{load_model, parse_rope_scaling};
use lmflow_models::LoadOptions;
use lmflow_models::eval::evaluate_nll;

use crate::device::{DeviceKind, resolve};
use crate::dtype::Dtype;

/// Metric reported by `lmflow eval`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Mean summed NLL per sample (LMFlow's `nll`).
    Nll,
    /// Perplexity `exp(nll_sum / predicted_tokens)`.
    Ppl,
    /// Accuracy on `input`/`output` instances: multiple choice by log-likelihood when an
    /// instance has `options`, else greedy generation with answer extraction (see
    /// `eval_accuracy.rs`).
    Accuracy,
}

/// Arguments of `lmflow eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model folder (Hub layout: config.json, safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// PEFT adapter folder (adapter_config.json + adapter_model.safetensors) applied to the
    /// model, as `lmflow generate --adapter`: the figures equal those of the merged model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Overrides the model's `rope_scaling`, as JSON (as `lmflow generate --rope-scaling`), e.g.
    /// '{"rope_type":"linear","factor":2.0}'.
    #[arg(long)]
    rope_scaling: Option<String>,
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
    /// nll/ppl: score texts longer than the block with a sliding window moving by this many
    /// tokens (instead of truncating), as the transformers perplexity guide.
    #[arg(long)]
    stride: Option<usize>,
    /// accuracy: LMFlow answer type for generated answers (gsm8k, multiple_choice, text, ...).
    #[arg(long, default_value = "text")]
    answer_type: String,
    /// accuracy: prompt template; `{input}` is replaced by the instance's input.
    #[arg(long, default_value = "{input}")]
    prompt_structure: String,
    /// accuracy: tokens generated per answer.
    #[arg(long, default_value_t = 100)]
    max_new_tokens: usize,
    /// Weight dtype.
    #[arg(long, value_enum, default_value_t)]
    dtype: Dtype,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
    /// LLaVA models: folder the dataset's image paths are relative to (default: the dataset
    /// file's folder). The dataset is LLaVA's JSON or LMFlow conversations with `images`; the
    /// NLL covers the assistant turns (see docs/multimodal.md).
    #[arg(long)]
    image_folder: Option<PathBuf>,
    /// LLaVA models: chat template rendering the conversations (`tokenizer` or a preset).
    #[arg(long, default_value = "tokenizer")]
    template: String,
}

/// Runs `lmflow eval`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if lmflow_models::llava::is_llava_dir(&args.model) {
        return run_llava(&args);
    }
    if args.image_folder.is_some() {
        bail!(
            "{}: --image-folder needs a LLaVA model folder (config.json with model_type \"llava\")",
            args.model.display()
        );
    }
    let device = resolve(args.device)?;
    let dtype = args.dtype.float();
    let rope_scaling = match &args.rope_scaling {
        Some(json) => Some(parse_rope_scaling(&args.model, json).context("--rope-scaling")?),
        None => None,
    };
    let opts = LoadOptions {
        dtype: Some(dtype),
        rope_scaling,
    };
    let pretrained = load_model(&args.model, args.adapter.as_deref(), &opts, &device)
        .with_context(|| match &args.adapter {
            Some(a) => format!(
                "loading model {} with adapter {}",
                args.model.display(),
                a.display()
            ),
            None => format!("loading model {}", args.model.display()),
        })?;
    if args.metric == Metric::Accuracy {
        let opts = crate::eval_accuracy::AccuracyOptions {
            answer_type: &args.answer_type,
            prompt_structure: &args.prompt_structure,
            max_new_tokens: args.max_new_tokens,
            batch_size: args.batch_size,
        };
        return crate::eval_accuracy::run(&pretrained, &args.dataset, &opts, &device);
    }
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
    if block_size < 2 {
        bail!(
            "--block-size {block_size}: must be at least 2 (each scored token is predicted from the ones before it)"
        );
    }
    // A loss over no token is undefined (it used to be reported as 0 with exit code 0).
    if sequences.iter().all(|ids| ids.len() < 2) {
        bail!(
            "{}: no token to score: every text encodes to fewer than two tokens",
            args.dataset.display()
        );
    }
    let stats = match args.stride {
        Some(stride) => {
            let mut total = lmflow_models::eval::NllStats::default();
            for ids in &sequences {
                let s = lmflow_infer::eval::sliding_window_nll(
                    &pretrained.model,
                    ids,
                    block_size,
                    stride,
                    &device,
                )?;
                total.samples += 1;
                total.nll_sum += s.nll_sum;
                total.predicted_tokens += s.predicted_tokens;
            }
            total
        }
        None => evaluate_nll(
            &pretrained.model,
            &sequences,
            block_size,
            args.batch_size,
            &device,
        )?,
    };
    if stats.predicted_tokens == 0 {
        bail!("{}: no token was scored", args.dataset.display());
    }
    let metric = match args.metric {
        Metric::Nll => "nll",
        Metric::Ppl => "ppl",
        Metric::Accuracy => "accuracy",
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

/// `lmflow eval` with a LLaVA model on multimodal conversations: the NLL of the assistant
/// turns given the images and prompts (image and prompt tokens are not scored).
fn run_llava(args: &Args) -> anyhow::Result<()> {
    use lmflow_datasets::multimodal::{
        LlavaProcessor, MultimodalEncoder, MultimodalReadOptions, read_multimodal,
    };
    use lmflow_datasets::{ChatTemplate, SampleEncoder, TokenizeConfig};
    use lmflow_train::Objective;
    use lmflow_train::multimodal::{LlavaSftObjective, MultimodalItem};

    if args.metric == Metric::Accuracy || args.stride.is_some() || args.rope_scaling.is_some() {
        bail!(
            "LLaVA models: `lmflow eval` computes nll / ppl (no --stride, --rope-scaling or accuracy)"
        );
    }
    let device = resolve(args.device)?;
    let opts = LoadOptions {
        dtype: Some(args.dtype.float()),
        rope_scaling: None,
    };
    let mut loaded = lmflow_models::load_llava(&args.model, &device, &opts)
        .with_context(|| format!("loading LLaVA model {}", args.model.display()))?;
    if let Some(dir) = &args.adapter {
        lmflow_peft::load_adapter(&mut loaded.model, dir, "default", &device)
            .with_context(|| format!("loading adapter {}", dir.display()))?;
    }
    let tokenizer = loaded.tokenizer.as_ref().with_context(|| {
        format!(
            "{}: no tokenizer.json in the model folder",
            args.model.display()
        )
    })?;
    let template = ChatTemplate::resolve(&args.template, tokenizer)
        .with_context(|| format!("--template {}", args.template))?;
    let processor = LlavaProcessor::from_dir(&args.model, tokenizer)?;
    let block_size = args
        .block_size
        .unwrap_or_else(|| loaded.model.language_model.max_position_embeddings());
    let text = SampleEncoder::new(
        tokenizer,
        Some(&template),
        TokenizeConfig {
            block_size,
            ..TokenizeConfig::default()
        },
    )?;
    let encoder = MultimodalEncoder::new(&text, &processor);
    let (_, records) = read_multimodal(
        &args.dataset,
        &MultimodalReadOptions {
            image_folder: args.image_folder.clone(),
            check_images: true,
        },
    )?;
    let items = records
        .iter()
        .map(|r| Ok(MultimodalItem::from(encoder.encode(r)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pad_id = tokenizer
        .pad_token_id()
        .or(tokenizer.eos_token_id())
        .unwrap_or(0);
    let objective = LlavaSftObjective::new(pad_id, Some(processor.image_processor().clone()));
    let (mut nll_sum, mut tokens) = (0.0f64, 0usize);
    for chunk in items.chunks(args.batch_size.max(1)) {
        let refs: Vec<&MultimodalItem> = chunk.iter().collect();
        let (sum, _) = objective.evaluate(&loaded.model, &refs, &device)?;
        nll_sum += sum;
        tokens += refs.iter().map(|i| objective.tokens(i)).sum::<usize>();
    }
    if tokens == 0 {
        bail!("{}: no assistant token to score", args.dataset.display());
    }
    let metric = match args.metric {
        Metric::Nll => "nll",
        _ => "ppl",
    };
    let line = serde_json::json!({
        "metric": metric,
        "nll_mean_per_sample": nll_sum / items.len() as f64,
        "nll_sum": nll_sum,
        "predicted_tokens": tokens,
        "ppl": (nll_sum / tokens as f64).exp(),
        "samples": items.len(),
        "images": items.iter().map(|i| i.images.len()).sum::<usize>(),
    });
    println!("{line}");
    Ok(())
}
