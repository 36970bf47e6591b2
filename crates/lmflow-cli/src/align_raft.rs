//! `lmflow align raft`: RAFT (reward-ranked fine-tuning), LMFlow's alignment loop, with a
//! lexicon, rule or reward-model reward.

use std::path::PathBuf;

use anyhow::{Context, bail};
use lmflow_align::RewardFunction;
use lmflow_align::raft::{Raft, RaftConfig, RaftPrompt, Selection};
use lmflow_align::reward_fn::{KeywordReward, LengthReward, Lexicon, LexiconReward};
use lmflow_align::reward_model::{PairFormat, RewardModelScorer};
use lmflow_datasets::{ChatTemplate, Instance, ReadOptions, Role, TemplateTokens, read_dataset};
use lmflow_models::{LoadOptions, load_pretrained, load_sequence_classifier};
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model, merge_and_unload};
use lmflow_train::{FullModelWeights, LoraWeights, TrainerConfig, WeightsIo};

use crate::device::{DeviceKind, resolve};

/// Arguments of `lmflow align raft`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Policy model folder (Hub layout, with tokenizer).
    #[arg(long)]
    model: PathBuf,
    /// Prompts: `text_only` (continued as raw text), `text2text` (the inputs) or `conversation`
    /// (the messages up to the last user turn, rendered with the chat template).
    #[arg(long)]
    prompts: PathBuf,
    /// Reward: `afinn` (AFINN-111 sum over the response), `afinn-per-word`, `hu-liu`,
    /// `length:MIN:MAX` (words), `keywords:WORD,WORD,...` (+1 each present), or `model:DIR`
    /// (a reward model folder; pairs rendered as the prompts are).
    #[arg(long, default_value = "afinn")]
    reward: String,
    /// Output folder: metrics.jsonl, checkpoints/iter-N, final/ (trained weights), model/ (the
    /// aligned model, adapters merged).
    #[arg(long, default_value = "output/raft")]
    output: PathBuf,
    /// Chat template for conversation prompts: `tokenizer` or a preset name.
    #[arg(long, default_value = "tokenizer")]
    template: String,
    /// RAFT iterations.
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// Prompts drawn per iteration.
    #[arg(long, default_value_t = 32)]
    prompts_per_iteration: usize,
    /// Responses sampled per prompt (K).
    #[arg(long, default_value_t = 4)]
    samples_per_prompt: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Nucleus sampling mass (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Top-k truncation (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Fewest new tokens (EOS suppressed before).
    #[arg(long, default_value_t = 1)]
    min_new_tokens: usize,
    /// Most new tokens.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 16)]
    generation_batch_size: usize,
    /// `local` (best response per prompt) or `global` (top --top-fraction of all responses).
    #[arg(long, default_value = "local")]
    selection: String,
    /// Share of responses kept with `--selection global`.
    #[arg(long, default_value_t = 0.25)]
    top_fraction: f64,
    /// Responses of 4+ words whose distinct-2 is lower are dropped as degenerate (0: off).
    #[arg(long, default_value_t = 0.5)]
    min_distinct2: f64,
    /// Fine-tuning steps per iteration.
    #[arg(long, default_value_t = 8)]
    sft_steps: usize,
    /// Fine-tuning learning rate (constant within an iteration's steps is not forced: the
    /// default linear schedule decays over each iteration's steps).
    #[arg(long, default_value_t = 1e-4)]
    learning_rate: f64,
    /// Samples per fine-tuning micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Tokens per fine-tuning sample (prompt + response).
    #[arg(long, default_value_t = 512)]
    block_size: usize,
    /// LoRA instead of full fine-tuning.
    #[arg(long)]
    lora: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Seed of prompt draws, sampling and fine-tuning order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Start afresh instead of resuming from the newest iteration checkpoint.
    #[arg(long)]
    no_resume: bool,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
}

/// Runs `lmflow align raft`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let device = resolve(a.device)?.autodiff();
    // Every random draw (adapter or head initialisation, dropout) comes from the backend's
    // generator: seed it so that the same seed gives the same run.
    device.seed(a.seed);
    let plain = device.clone().inner();
    let pretrained = load_pretrained(&a.model, &device, &LoadOptions::default())?;
    let tok = pretrained
        .tokenizer
        .clone()
        .with_context(|| format!("{}: no tokenizer.json", a.model.display()))?;
    let template = ChatTemplate::resolve(&a.template, &tok).ok();

    // Prompts.
    let data = read_dataset(&a.prompts, &ReadOptions::default())
        .with_context(|| format!("reading {}", a.prompts.display()))?;
    let tokens = TemplateTokens::from_tokenizer(&tok);
    let mut prompts = Vec::new();
    for (i, inst) in data.instances.iter().enumerate() {
        let p = match inst {
            Instance::TextOnly { text } => RaftPrompt {
                text: text.clone(),
                ids: tok.encode(text, true)?,
            },
            Instance::Text2Text { input, .. } => RaftPrompt {
                text: input.clone(),
                ids: tok.encode(input, true)?,
            },
            Instance::Conversation(c) => {
                let t = template
                    .as_ref()
                    .with_context(|| "conversation prompts need a chat template (--template)")?;
                let mut c = c.clone();
                while c.messages.last().is_some_and(|m| m.role != Role::User) {
                    c.messages.pop();
                }
                let Some(last) = c.messages.last() else {
                    bail!("{}: instance {i} has no user turn", a.prompts.display());
                };
                let text = last.content.clone();
                let rendered = t.render_text(&c, &tokens, true)?;
                RaftPrompt {
                    text,
                    ids: tok.encode(&rendered, false)?,
                }
            }
            other => bail!(
                "{}: `{}` instances are not prompts (use text_only, text2text or conversation)",
                a.prompts.display(),
                other.dataset_type()
            ),
        };
        prompts.push(p);
    }

    // Reward.
    let reward: Box<dyn RewardFunction> = match (text_reward(&a.reward)?, a.reward.as_str()) {
        (Some(rule), _) => rule,
        (None, spec) if spec.starts_with("model:") => {
            let dir = PathBuf::from(&spec["model:".len()..]);
            let rm = load_sequence_classifier(&dir, &plain, &LoadOptions::default(), None)?;
            if rm.new_head {
                bail!("{}: not a reward model (no score.weight)", dir.display());
            }
            let rm_tok = rm.tokenizer.clone().unwrap_or_else(|| tok.clone());
            let format = match &template {
                Some(t)
                    if data
                        .instances
                        .iter()
                        .any(|i| matches!(i, Instance::Conversation(_))) =>
                {
                    PairFormat::Chat(Box::new(t.clone()))
                }
                _ => PairFormat::Text,
            };
            let batch = if rm.model.pad_token_id.is_some() {
                16
            } else {
                1
            };
            Box::new(RewardModelScorer::new(
                rm.model,
                rm_tok,
                format,
                a.block_size,
                batch,
                plain.clone(),
            )?)
        }
        (None, other) => bail!(
            "unknown --reward `{other}` (afinn, afinn-per-word, hu-liu, length:MIN:MAX, \
             keywords:W,W, model:DIR)"
        ),
    };

    let selection = match a.selection.as_str() {
        "local" => Selection::Local,
        "global" => Selection::Global {
            fraction: a.top_fraction,
        },
        other => bail!("--selection must be local or global, got `{other}`"),
    };
    let config = RaftConfig {
        output_dir: a.output.clone(),
        iterations: a.iterations,
        prompts_per_iteration: a.prompts_per_iteration,
        samples_per_prompt: a.samples_per_prompt,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        min_new_tokens: a.min_new_tokens,
        max_new_tokens: a.max_new_tokens,
        generation_batch_size: a.generation_batch_size,
        selection,
        min_distinct2: a.min_distinct2,
        seed: a.seed,
        resume: !a.no_resume,
        sft: TrainerConfig {
            max_steps: Some(a.sft_steps),
            learning_rate: a.learning_rate,
            per_device_train_batch_size: a.batch_size,
            warmup_ratio: 0.0,
            block_size: a.block_size,
            packing: false,
            logging_steps: 1,
            save_steps: a.sft_steps.max(1) * 1000,
            seed: a.seed,
            ..TrainerConfig::default()
        },
    };

    let (model, weights): (_, Box<dyn WeightsIo>) = if a.lora {
        let lora = LoraConfig::new(
            a.lora_r,
            a.lora_alpha,
            TargetModules::Pattern("all-linear".into()),
        );
        let (model, _) = get_peft_model(pretrained.model, &lora, "default")?;
        (
            model,
            Box::new(LoraWeights::new(lora, "default", device.clone())),
        )
    } else {
        (
            pretrained.model,
            Box::new(FullModelWeights::new(
                pretrained.config.clone(),
                device.clone(),
            )),
        )
    };
    let raft = Raft::new(
        config,
        &tok,
        reward.as_ref(),
        weights.as_ref(),
        device.clone(),
    )?;
    let outcome = raft.run(model, &prompts, &mut |r| {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    })?;
    let mut model = burn::module::Module::valid(&outcome.model);
    if a.lora {
        merge_and_unload(&mut model, "default")?;
    }
    let dir = a.output.join("model");
    model.save(&dir, &pretrained.config)?;
    lmflow_models::model::copy_tokenizer_files(&a.model, &dir)?;
    eprintln!(
        "aligned model in {}{}",
        dir.display(),
        outcome
            .resumed_from
            .map(|n| format!(" (resumed after iteration {n})"))
            .unwrap_or_default()
    );
    Ok(())
}

/// The rule-based rewards named on the command line (`afinn`, `afinn-per-word`, `hu-liu`,
/// `length:MIN:MAX`, `keywords:W,W`); `None` for any other spec (e.g. `model:DIR`).
pub(crate) fn text_reward(spec: &str) -> anyhow::Result<Option<Box<dyn RewardFunction>>> {
    Ok(Some(match spec {
        "afinn" => Box::new(LexiconReward::sum(Lexicon::afinn())),
        "afinn-per-word" => Box::new(LexiconReward::per_word(Lexicon::afinn())),
        "hu-liu" => Box::new(LexiconReward::sum(Lexicon::hu_liu())),
        s if s.starts_with("length:") => {
            let parts: Vec<&str> = s["length:".len()..].split(':').collect();
            let [min, max] = parts.as_slice() else {
                bail!("--reward length:MIN:MAX, got `{s}`");
            };
            let bound = |v: &str| {
                v.parse::<usize>()
                    .with_context(|| format!("--reward `{s}`: `{v}` is not a word count"))
            };
            Box::new(LengthReward::new(bound(min)?, bound(max)?)?)
        }
        s if s.starts_with("keywords:") => {
            let words: Vec<(&str, f64)> = s["keywords:".len()..]
                .split(',')
                .map(|w| (w.trim(), 1.0))
                .collect();
            Box::new(KeywordReward::new(&words)?)
        }
        _ => return Ok(None),
    }))
}
