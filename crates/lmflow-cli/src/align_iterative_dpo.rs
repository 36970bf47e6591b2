//! `lmflow align iterative-dpo`: iterative DPO (LMFlow's iterative DPO aligner) over
//! `lmflow_align::iterative_dpo`: per iteration sample K responses per prompt, score them with a
//! rule or lexicon reward, pair them and run DPO from the previous iteration's model.

use std::path::PathBuf;

use anyhow::{Context, bail};
use lmflow_align::raft::{RaftConfig, RaftPrompt, Selection};
use lmflow_align::{
    DpoConfig, DpoLossType, IterativeDpoConfig, Pairing, RewardFunction, run_iterative_dpo,
};
use lmflow_datasets::{Instance, ReadOptions, read_dataset};
use lmflow_models::{LoadOptions, load_pretrained};
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model, merge_and_unload};
use lmflow_train::{FullModelWeights, LoraWeights, TrainerConfig, WeightsIo};

use crate::align_raft::text_reward;
use crate::device::{DeviceKind, resolve};

/// Arguments of `lmflow align iterative-dpo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Policy model folder (Hub layout with tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// Prompts: `text_only` (the text) or `text2text` (the input) data.
    #[arg(long)]
    prompts: PathBuf,
    /// Reward: `afinn`, `afinn-per-word`, `hu-liu`, `length:MIN:MAX` (words) or
    /// `keywords:W,W,...`.
    #[arg(long, default_value = "afinn")]
    reward: String,
    /// Output folder: `iter-NNNN/` per iteration, `iterations.jsonl`, the aligned model in
    /// `model/`.
    #[arg(long, alias = "output", default_value = "output/iterative-dpo")]
    output_dir: PathBuf,
    /// Iterations.
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// Prompts drawn per iteration.
    #[arg(long, default_value_t = 32)]
    prompts_per_iteration: usize,
    /// Responses sampled per prompt (K).
    #[arg(long, default_value_t = 4)]
    samples_per_prompt: usize,
    /// Pairing: `max_min`, `max_random` or `random`.
    #[arg(long, default_value = "max_min")]
    pairing: String,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Minimum new tokens per response.
    #[arg(long, default_value_t = 1)]
    min_new_tokens: usize,
    /// Maximum new tokens per response.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Responses of 4+ words with a lower distinct-2 are not used (0: off).
    #[arg(long, default_value_t = 0.5)]
    min_distinct2: f64,
    /// DPO steps per iteration.
    #[arg(long, default_value_t = 8)]
    dpo_steps: usize,
    /// DPO β.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// DPO loss: sigmoid, hinge, ipo or robust.
    #[arg(long, default_value = "sigmoid")]
    loss_type: String,
    /// Learning rate of each DPO run.
    #[arg(long, default_value_t = 5e-4)]
    learning_rate: f64,
    /// Pairs per DPO micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Train a LoRA adapter (merged into `model/` at the end) instead of all weights.
    #[arg(long)]
    lora: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Seed of prompt draws, sampling and data order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
}

fn reward(spec: &str) -> anyhow::Result<Box<dyn RewardFunction>> {
    text_reward(spec)?.with_context(|| {
        format!("unknown --reward `{spec}` (afinn, afinn-per-word, hu-liu, length:MIN:MAX, keywords:W,W)")
    })
}

/// Runs `lmflow align iterative-dpo`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let device = resolve(a.device)?.autodiff();
    // Every random draw (adapter or head initialisation, dropout) comes from the backend's
    // generator: seed it so that the same seed gives the same run.
    device.seed(a.seed);
    let pretrained = load_pretrained(&a.model, &device, &LoadOptions::default())?;
    let tok = pretrained
        .tokenizer
        .clone()
        .with_context(|| format!("{}: no tokenizer.json", a.model.display()))?;
    let data = read_dataset(&a.prompts, &ReadOptions::default())
        .with_context(|| format!("reading {}", a.prompts.display()))?;
    let mut prompts = Vec::with_capacity(data.len());
    for inst in &data.instances {
        let text = match inst {
            Instance::TextOnly { text } => text,
            Instance::Text2Text { input, .. } => input,
            other => bail!(
                "{}: `{}` instances are not prompts here (use text_only or text2text)",
                a.prompts.display(),
                other.dataset_type()
            ),
        };
        prompts.push(RaftPrompt {
            text: text.clone(),
            ids: tok.encode(text, true)?,
        });
    }
    let reward = reward(&a.reward)?;
    let config = IterativeDpoConfig {
        sampling: RaftConfig {
            output_dir: a.output_dir.clone(),
            iterations: a.iterations,
            prompts_per_iteration: a.prompts_per_iteration,
            samples_per_prompt: a.samples_per_prompt,
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: 0,
            min_new_tokens: a.min_new_tokens,
            max_new_tokens: a.max_new_tokens,
            generation_batch_size: 16,
            selection: Selection::Local,
            min_distinct2: a.min_distinct2,
            seed: a.seed,
            resume: true,
            sft: TrainerConfig {
                max_steps: Some(a.dpo_steps),
                learning_rate: a.learning_rate,
                per_device_train_batch_size: a.batch_size,
                per_device_eval_batch_size: a.batch_size,
                logging_steps: 1,
                save_steps: a.dpo_steps.max(1),
                ..TrainerConfig::default()
            },
        },
        pairing: a.pairing.parse::<Pairing>()?,
        dpo: DpoConfig {
            beta: a.beta,
            loss_type: a.loss_type.parse::<DpoLossType>()?,
            label_smoothing: 0.0,
        },
    };
    let (model, weights): (_, Box<dyn WeightsIo>) = if a.lora {
        let lora = LoraConfig::new(
            a.lora_r,
            a.lora_alpha,
            TargetModules::Pattern("all-linear".into()),
        );
        let (model, _) = get_peft_model(pretrained.model, &lora, "default")?;
        let io = LoraWeights::new(lora, "default", device.clone());
        (model, Box::new(io))
    } else {
        let io = FullModelWeights::new(pretrained.config.clone(), device.clone());
        (pretrained.model, Box::new(io))
    };
    let (model, _) = run_iterative_dpo(
        model,
        &prompts,
        &tok,
        reward.as_ref(),
        weights.as_ref(),
        &config,
        &device,
        &mut |r| println!("{}", serde_json::to_string(r).unwrap_or_default()),
    )?;
    let mut model = burn::module::Module::valid(&model);
    if a.lora {
        merge_and_unload(&mut model, "default")?;
    }
    let dir = a.output_dir.join("model");
    model.save(&dir, &pretrained.config)?;
    lmflow_models::model::copy_tokenizer_files(&a.model, &dir)?;
    eprintln!("aligned model in {}", dir.display());
    Ok(())
}
