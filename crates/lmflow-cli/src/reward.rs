//! `lmflow reward`: train a reward model on preference data (Bradley-Terry objective of the
//! shared training loop, full or LoRA) and score datasets with one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use lmflow_align::reward_model::{
    ClassifierLoraWeights, ClassifierWeights, PairFormat, RewardModelScorer, RewardObjective,
    encode_pairs, pairwise_accuracy,
};
use lmflow_datasets::{ChatTemplate, Instance, ReadOptions, TokenizedPair, read_dataset};
use lmflow_models::{LoadOptions, SequenceClassifier, Tokenizer, load_sequence_classifier};
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model, merge_and_unload};
use lmflow_train::{TrainEvent, Trainer, TrainerConfig, WeightsIo};

use crate::device::{DeviceKind, resolve};

/// Arguments of `lmflow reward`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: RewardCommand,
}

#[derive(clap::Subcommand, Debug)]
enum RewardCommand {
    /// Train a reward model (a one-label `*ForSequenceClassification`) on `paired_conversation`
    /// or `paired_text_to_text` data with the loss -log σ(r_chosen - r_rejected - margin).
    Train(TrainArgs),
    /// Score every sample of a dataset with a reward model: one JSON line per sample.
    Score(ScoreArgs),
}

/// Arguments of `lmflow reward train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Start model: a causal LM folder (a new one-row `score` head is drawn) or a sequence
    /// classifier folder.
    #[arg(long)]
    model: PathBuf,
    /// Preference data (`paired_conversation` or `paired_text_to_text`).
    #[arg(long)]
    dataset: PathBuf,
    /// Held-out preference data: pairwise accuracy and loss at --eval-steps and at the end.
    #[arg(long)]
    eval_dataset: Option<PathBuf>,
    /// Output folder: `model/` (the reward model, Hub layout), `final/` (trained weights:
    /// the model, or the LoRA adapter), checkpoints, metrics.jsonl.
    #[arg(long, default_value = "output/reward")]
    output: PathBuf,
    /// Chat template for `paired_conversation`: `tokenizer` or a preset name.
    #[arg(long, default_value = "tokenizer")]
    template: String,
    /// Tokens per sample (longer ones are cut).
    #[arg(long, default_value_t = 512)]
    block_size: usize,
    /// LoRA instead of full fine-tuning (the `score` head trains fully, as PEFT's
    /// modules_to_save).
    #[arg(long)]
    lora: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Comma-separated module names or `all-linear`.
    #[arg(long, default_value = "all-linear")]
    target_modules: String,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    learning_rate: f64,
    /// Epochs.
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Optimizer steps, overriding epochs.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Pairs per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Warmup fraction of the steps.
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    /// TRL's center_rewards_coefficient: adds c·(r_chosen + r_rejected)² (0: off).
    #[arg(long, default_value_t = 0.0)]
    center_rewards_coefficient: f64,
    /// Shuffling seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Evaluate every this many steps (0: at the end only).
    #[arg(long, default_value_t = 0)]
    eval_steps: usize,
    /// Write a checkpoint every this many steps.
    #[arg(long, default_value_t = 500)]
    save_steps: usize,
    /// Start afresh instead of resuming from the newest checkpoint.
    #[arg(long)]
    no_resume: bool,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
}

/// Arguments of `lmflow reward score`.
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// Reward model folder (a one-label sequence classifier).
    #[arg(long)]
    model: PathBuf,
    /// Data to score: `paired_conversation` / `paired_text_to_text` (chosen and rejected scored),
    /// `conversation` (the last assistant turn given the user turns), `text2text`, `text_only`.
    #[arg(long)]
    dataset: PathBuf,
    /// Chat template for conversations: `tokenizer` or a preset name.
    #[arg(long, default_value = "tokenizer")]
    template: String,
    /// Tokens per sample (longer ones are cut).
    #[arg(long, default_value_t = 512)]
    block_size: usize,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Write the JSON lines here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
}

/// Runs `lmflow reward`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        RewardCommand::Train(a) => train(a),
        RewardCommand::Score(a) => score(a),
    }
}

fn tokenizer_of(dir: &Path, tok: Option<Tokenizer>) -> anyhow::Result<Tokenizer> {
    tok.with_context(|| format!("{}: no tokenizer.json", dir.display()))
}

fn template_of(spec: &str, tok: &Tokenizer) -> Option<ChatTemplate> {
    ChatTemplate::resolve(spec, tok).ok()
}

fn read_pairs(
    path: &Path,
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    block_size: usize,
) -> anyhow::Result<Vec<TokenizedPair>> {
    let data = read_dataset(path, &ReadOptions::default())
        .with_context(|| format!("reading {}", path.display()))?;
    let pairs = encode_pairs(&data.instances, tok, template, block_size)
        .with_context(|| format!("tokenizing {}", path.display()))?;
    if pairs.is_empty() {
        bail!("{}: no preference pairs", path.display());
    }
    Ok(pairs)
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    let device = resolve(a.device)?.autodiff();
    // Every random draw (adapter or head initialisation, dropout) comes from the backend's
    // generator: seed it so that the same seed gives the same run.
    device.seed(a.seed);
    let plain = device.clone().inner();
    let loaded = load_sequence_classifier(&a.model, &device, &LoadOptions::default(), Some(1))?;
    let tok = tokenizer_of(&a.model, loaded.tokenizer.clone())?;
    let pad = loaded
        .model
        .pad_token_id
        .or(tok.eos_token_id())
        .context("the model has no pad_token_id and the tokenizer no pad or EOS token")?;
    let classifier = loaded.model.clone().with_pad_token_id(Some(pad));
    let template = template_of(&a.template, &tok);
    let train_pairs = read_pairs(&a.dataset, &tok, template.as_ref(), a.block_size)?;
    let eval_pairs = match &a.eval_dataset {
        Some(p) => Some(read_pairs(p, &tok, template.as_ref(), a.block_size)?),
        None => None,
    };
    if loaded.new_head {
        eprintln!(
            "new reward head (score, 1 x {})",
            classifier.model.hidden_size()
        );
    }

    let cfg = TrainerConfig {
        output_dir: a.output.clone(),
        learning_rate: a.learning_rate,
        num_train_epochs: a.epochs,
        max_steps: a.max_steps,
        per_device_train_batch_size: a.batch_size,
        per_device_eval_batch_size: a.batch_size,
        gradient_accumulation_steps: a.grad_accum,
        warmup_ratio: a.warmup_ratio,
        eval_steps: a.eval_steps,
        save_steps: a.save_steps,
        packing: false,
        block_size: a.block_size,
        seed: a.seed,
        resume: !a.no_resume,
        ..TrainerConfig::default()
    };
    let mut config = loaded.config.clone();
    config.set("pad_token_id", serde_json::json!(pad));
    let (model, weights, lora): (_, Box<dyn WeightsIo>, _) = if a.lora {
        let targets = if a.target_modules == "all-linear" {
            TargetModules::Pattern("all-linear".into())
        } else {
            TargetModules::Names(
                a.target_modules
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect(),
            )
        };
        let mut lora = LoraConfig::new(a.lora_r, a.lora_alpha, targets);
        lora.modules_to_save = Some(vec!["score".into()]);
        lora.task_type = Some("SEQ_CLS".into());
        let (peft, report) = get_peft_model(classifier, &lora, "default")?;
        eprintln!(
            "LoRA on {} layers; score head trained fully",
            report.adapted.len()
        );
        let io = ClassifierLoraWeights::new(lora.clone(), "default", Some(pad), device.clone());
        (peft.model, Box::new(io) as Box<dyn WeightsIo>, Some(lora))
    } else {
        let io = ClassifierWeights::new(config.clone(), Some(pad), device.clone());
        (classifier.model, Box::new(io) as Box<dyn WeightsIo>, None)
    };

    let trainer = Trainer::new(cfg, device.clone(), pad)?;
    let mut objective = RewardObjective::new(pad);
    objective.center_rewards_coefficient = a.center_rewards_coefficient;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let outcome = trainer.train_objective(
        model,
        weights.as_ref(),
        &objective,
        &train_pairs,
        eval_pairs.as_deref(),
        &mut |e| match e {
            TrainEvent::Started {
                total_steps,
                start_step,
                ..
            } => {
                bar.set_length(total_steps as u64);
                bar.set_position(start_step as u64);
            }
            TrainEvent::Step { step, loss, .. } => {
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.4}"));
            }
            _ => {}
        },
    )?;
    bar.finish_and_clear();

    let mut trained = SequenceClassifier::from_model(outcome.model, Some(pad))?;
    if let Some(lora) = &lora {
        let _ = lora;
        merge_and_unload(&mut trained, "default")?;
    }
    let trained = SequenceClassifier {
        model: burn::module::Module::valid(&trained.model),
        pad_token_id: trained.pad_token_id,
    };
    let model_dir = a.output.join("model");
    trained.save(&model_dir, &config)?;
    lmflow_models::model::copy_tokenizer_files(&a.model, &model_dir)?;
    let mut summary = serde_json::json!({
        "model": model_dir,
        "final": outcome.final_dir,
        "steps": outcome.state.global_step,
        "train_loss": outcome.last_train_loss,
    });
    if let Some(eval) = &eval_pairs {
        let acc = pairwise_accuracy(&trained, eval, a.batch_size, &plain)?;
        summary["eval_accuracy"] = serde_json::json!(acc);
        summary["eval_loss"] = serde_json::json!(outcome.final_eval_loss);
    }
    println!("{summary}");
    Ok(())
}

/// The `(prompt, response)` pairs of an instance to score, with labels for the output.
fn scored_parts(instance: &Instance) -> Vec<(&'static str, Instance)> {
    match instance {
        Instance::PairedConversation { chosen, rejected } => vec![
            ("chosen", Instance::Conversation(chosen.clone())),
            ("rejected", Instance::Conversation(rejected.clone())),
        ],
        Instance::PairedTextToText {
            prompt,
            chosen,
            rejected,
            ..
        } => vec![
            (
                "chosen",
                Instance::Text2Text {
                    input: prompt.clone(),
                    output: chosen.clone(),
                },
            ),
            (
                "rejected",
                Instance::Text2Text {
                    input: prompt.clone(),
                    output: rejected.clone(),
                },
            ),
        ],
        other => vec![("reward", other.clone())],
    }
}

fn score(a: ScoreArgs) -> anyhow::Result<()> {
    let device = resolve(a.device)?;
    let loaded = load_sequence_classifier(&a.model, &device, &LoadOptions::default(), None)?;
    if loaded.new_head {
        bail!(
            "{}: not a reward model (no score.weight); train one with `lmflow reward train`",
            a.model.display()
        );
    }
    let tok = tokenizer_of(&a.model, loaded.tokenizer.clone())?;
    let template = template_of(&a.template, &tok);
    let format = match &template {
        Some(t) => PairFormat::Chat(Box::new(t.clone())),
        None => PairFormat::Text,
    };
    let batch = if loaded.model.pad_token_id.is_some() {
        a.batch_size
    } else {
        1
    };
    let scorer = RewardModelScorer::new(
        loaded.model,
        tok.clone(),
        format,
        a.block_size,
        batch,
        device,
    )?;
    let data = read_dataset(&a.dataset, &ReadOptions::default())
        .with_context(|| format!("reading {}", a.dataset.display()))?;
    let encoder = lmflow_datasets::SampleEncoder::new(
        &tok,
        template.as_ref(),
        lmflow_datasets::TokenizeConfig {
            block_size: a.block_size,
            ..Default::default()
        },
    )?;
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let bar = ProgressBar::new(data.instances.len() as u64);
    for (index, chunk) in data.instances.chunks(a.batch_size.max(1)).enumerate() {
        let mut labels = Vec::new();
        let mut samples = Vec::new();
        for (j, inst) in chunk.iter().enumerate() {
            for (label, part) in scored_parts(inst) {
                let tokens = encoder.encode_text(&part).with_context(|| {
                    format!(
                        "{}: instance {}",
                        a.dataset.display(),
                        index * a.batch_size.max(1) + j
                    )
                })?;
                labels.push((index * a.batch_size.max(1) + j, label));
                samples.push(tokens.sample);
            }
        }
        let rewards = scorer.score_tokens(&samples)?;
        let mut line = serde_json::Map::new();
        let mut current = None;
        for ((i, label), r) in labels.into_iter().zip(rewards) {
            if current != Some(i) {
                if let Some(prev) = current {
                    let _ = prev;
                    writeln!(
                        out,
                        "{}",
                        serde_json::Value::Object(std::mem::take(&mut line))
                    )?;
                }
                current = Some(i);
                line.insert("index".into(), serde_json::json!(i));
            }
            line.insert(label.into(), serde_json::json!(r));
        }
        if current.is_some() {
            writeln!(out, "{}", serde_json::Value::Object(line))?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    out.flush()?;
    Ok(())
}
