//! `lmflow align dpo`: Direct Preference Optimization of a Hub-layout model (LoRA by default,
//! or full) on preference pairs, with TRL's losses and metrics, over the shared training loop
//! (metrics.jsonl, loss.png, resumable checkpoints).

use std::path::PathBuf;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use lmflow_align::{DpoConfig, DpoLossType, Reference, train_dpo};
use lmflow_datasets::{
    ChatTemplate, DatasetType, ReadOptions, SampleEncoder, TokenizeConfig, TokenizedPair,
    read_dataset,
};
use lmflow_models::{LoadOptions, Tokenizer, load_pretrained};
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model};
use lmflow_train::{FullModelWeights, LoraWeights, TrainEvent, Trainer, TrainerConfig, WeightsIo};

use crate::device::{DeviceKind, resolve};
use crate::train_flags::TrainFlags;

/// Arguments of `lmflow align dpo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Policy model folder (Hub layout with tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// Preference pairs: `paired_conversation` or `paired_text_to_text` (LMFlow JSON, a folder
    /// of them, or JSON Lines).
    #[arg(long)]
    dataset: PathBuf,
    /// Held-out pairs, evaluated at --eval-steps and at the end (eval_loss,
    /// eval_rewards/accuracies, eval_rewards/margins, ...).
    #[arg(long)]
    eval_dataset: Option<PathBuf>,
    /// Output folder: adapter (or model) in `final/`, checkpoints, metrics.jsonl, loss.png.
    #[arg(long, alias = "output", default_value = "output")]
    output_dir: PathBuf,
    /// Separate frozen reference model (default: the policy before training; with LoRA, the
    /// model with the adapter disabled). Its log-probabilities are computed once, then it is
    /// dropped.
    #[arg(long)]
    ref_model: Option<PathBuf>,
    /// Chat template for paired_conversation data: `tokenizer` or a preset name.
    #[arg(long, default_value = "tokenizer")]
    template: String,
    /// Maximum tokens per prompt + answer (default: the tokenizer's model_max_length capped
    /// at 2048, and at the model's context).
    #[arg(long)]
    block_size: Option<usize>,
    /// Temperature β of the implicit reward.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Loss: sigmoid, hinge, ipo or robust.
    #[arg(long, default_value = "sigmoid")]
    loss_type: String,
    /// Label smoothing ε (sigmoid: conservative DPO; robust), in [0, 0.5).
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Full fine-tuning instead of LoRA.
    #[arg(long)]
    full: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// LoRA dropout.
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f64,
    /// Comma-separated module names (e.g. `q_proj,v_proj`) or `all-linear`.
    #[arg(long, default_value = "all-linear")]
    target_modules: String,
    /// Trainer settings (learning rate, epochs, batch, schedule, seed, steps).
    #[command(flatten)]
    train: TrainFlags,
    /// Start afresh instead of resuming from the newest checkpoint in the output folder.
    #[arg(long)]
    no_resume: bool,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
}

fn trainer_config(args: &Args) -> anyhow::Result<TrainerConfig> {
    let mut cfg = args.train.trainer_config(TrainerConfig {
        learning_rate: if args.full { 5e-6 } else { 5e-4 },
        num_train_epochs: 1.0,
        per_device_train_batch_size: 4,
        per_device_eval_batch_size: 4,
        logging_steps: 5,
        save_steps: 100,
        ..TrainerConfig::default()
    })?;
    cfg.output_dir = args.output_dir.clone();
    if args.no_resume {
        cfg.resume = false;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Reads and tokenizes preference pairs (prompt tokens masked from the loss).
pub fn read_pairs(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    block_size: usize,
) -> anyhow::Result<Vec<TokenizedPair>> {
    let data = read_dataset(path, &ReadOptions::default())?;
    if !matches!(
        data.dataset_type,
        DatasetType::PairedConversation | DatasetType::PairedTextToText
    ) {
        bail!(
            "{}: DPO needs `paired_conversation` or `paired_text_to_text` data, not `{}`",
            path.display(),
            data.dataset_type.as_str()
        );
    }
    let encoder = SampleEncoder::new(
        tokenizer,
        template,
        TokenizeConfig {
            block_size,
            ..TokenizeConfig::default()
        },
    )?;
    let mut pairs = Vec::with_capacity(data.len());
    let mut dropped = 0usize;
    for (instance, (file, index)) in data.instances.iter().zip(&data.origins) {
        let pair = encoder
            .encode_pair(instance)
            .with_context(|| format!("{}: instance {index}", file.display()))?;
        if pair.chosen.target_lost || pair.rejected.target_lost {
            dropped += 1;
            continue;
        }
        pairs.push(pair);
    }
    if dropped > 0 {
        eprintln!(
            "warning: {}: {dropped} pairs dropped (the prompt fills the block size)",
            path.display()
        );
    }
    if pairs.is_empty() {
        bail!("{}: no usable preference pairs", path.display());
    }
    Ok(pairs)
}

/// Runs `lmflow align dpo`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let loss_type: DpoLossType = args.loss_type.parse()?;
    let dpo = DpoConfig {
        beta: args.beta,
        loss_type,
        label_smoothing: args.label_smoothing,
    };
    dpo.validate()?;
    let cfg = trainer_config(&args)?;
    let device = resolve(args.device)?.autodiff();
    // Every random draw (adapter or head initialisation, dropout) comes from the backend's
    // generator: seed it so that the same seed gives the same run.
    device.seed(cfg.seed);
    let pretrained = load_pretrained(&args.model, &device, &LoadOptions::default())?;
    let tokenizer = pretrained
        .tokenizer
        .as_ref()
        .with_context(|| format!("{}: no tokenizer.json", args.model.display()))?;
    let template = match ChatTemplate::resolve(&args.template, tokenizer) {
        Ok(t) => Some(t),
        Err(_) if args.template == "tokenizer" && tokenizer.chat_template(None).is_none() => None,
        Err(e) => return Err(e).with_context(|| format!("--template {}", args.template)),
    };
    let context = pretrained.model.max_position_embeddings().max(1);
    let block_size = args
        .block_size
        .unwrap_or_else(|| crate::finetune::default_block_size(tokenizer.model_max_length()))
        .min(context);
    let train = read_pairs(&args.dataset, tokenizer, template.as_ref(), block_size)?;
    let eval = match &args.eval_dataset {
        Some(p) => Some(read_pairs(p, tokenizer, template.as_ref(), block_size)?),
        None => None,
    };
    let pad_id = tokenizer
        .pad_token_id()
        .or(tokenizer.eos_token_id())
        .unwrap_or(0);
    let reference_model = match &args.ref_model {
        Some(dir) => Some(load_pretrained(dir, &device, &LoadOptions::default())?.model),
        None => None,
    };

    let config = pretrained.config.clone();
    let (model, weights, adapter): (_, Box<dyn WeightsIo>, bool) = if args.full {
        let io = FullModelWeights::new(config, device.clone());
        (pretrained.model, Box::new(io), false)
    } else {
        if args.lora_r == 0 {
            bail!("--lora-r must be at least 1");
        }
        let targets = if args.target_modules == "all-linear" {
            TargetModules::Pattern("all-linear".into())
        } else {
            TargetModules::Names(
                args.target_modules
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect(),
            )
        };
        let mut lora = LoraConfig::new(args.lora_r, args.lora_alpha, targets);
        lora.lora_dropout = args.lora_dropout;
        lora.task_type = Some("CAUSAL_LM".into());
        lora.base_model_name_or_path = Some(args.model.display().to_string());
        let (model, _) = get_peft_model(pretrained.model, &lora, "default")?;
        let io = LoraWeights::new(lora, "default", device.clone());
        (model, Box::new(io), true)
    };
    let reference = match (&reference_model, adapter) {
        (Some(m), _) => Reference::Model(m),
        (None, true) => Reference::WithoutAdapters("default"),
        (None, false) => Reference::Policy,
    };

    let trainer = Trainer::new(cfg, device.clone(), pad_id)?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("reference log-probabilities");
    let outcome = train_dpo(
        &trainer,
        model,
        weights.as_ref(),
        dpo,
        reference,
        pad_id,
        train,
        eval,
        &device,
        &mut |event| match event {
            TrainEvent::Started {
                total_steps,
                start_step,
                resumed_from,
            } => {
                bar.set_length(total_steps as u64);
                bar.set_position(start_step as u64);
                bar.set_message("");
                if let Some(p) = resumed_from {
                    bar.println(format!("resuming from {}", p.display()));
                }
            }
            TrainEvent::Step { step, loss, lr, .. } => {
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}"));
            }
            TrainEvent::Logged(r) => {
                let get = |k: &str| r.extra.get(k).copied().unwrap_or(f64::NAN);
                bar.println(format!(
                    "step {}: loss {:.4}  margin {:.4}  accuracy {:.2}",
                    r.step,
                    r.loss.unwrap_or(f64::NAN),
                    get("rewards/margins"),
                    get("rewards/accuracies"),
                ));
                if let Some(e) = r.eval_loss {
                    bar.println(format!(
                        "step {}: eval loss {e:.4}  eval margin {:.4}  eval accuracy {:.2}",
                        r.step,
                        get("eval_rewards/margins"),
                        get("eval_rewards/accuracies"),
                    ));
                }
            }
            TrainEvent::Saved { path } => tracing::info!("checkpoint {}", path.display()),
        },
    )?;
    bar.finish_and_clear();
    drop(reference_model);
    if args.full {
        lmflow_models::model::copy_tokenizer_files(&args.model, &outcome.final_dir)?;
    }
    let summary = serde_json::json!({
        "steps": outcome.state.global_step,
        "train_loss": outcome.last_train_loss,
        "eval_loss": outcome.final_eval_loss,
        "final": outcome.final_dir.display().to_string(),
        "method": if args.full { "full" } else { "lora" },
    });
    println!("{summary}");
    Ok(())
}
