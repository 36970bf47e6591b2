//! `lmflow generate`: continue prompts with a model (optionally a LoRA adapter, a draft model
//! for speculative decoding, and a RoPE scaling override).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::Device;
use lmflow_datasets::{ChatTemplate, Conversation, Message, Role, TemplateTokens};
use lmflow_infer::{
    GenerationConfig, GenerationOutput, Generator, SpeculativeGenerator, load_model,
    parse_rope_scaling,
};
use lmflow_models::{LoadOptions, Pretrained, Tokenizer};

use crate::device::{DeviceKind, resolve};

pub use crate::dtype::Dtype;

/// Model selection shared by `generate` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder (Hub layout: config.json, safetensors, tokenizer files).
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT adapter folder (adapter_config.json + adapter_model.safetensors) applied to the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Smaller model with the same vocabulary: enables speculative decoding.
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// Draft tokens per speculative round.
    #[arg(long, default_value_t = 5)]
    pub gamma: usize,
    /// Overrides the model's `rope_scaling`, as JSON, e.g.
    /// '{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":4096}'.
    #[arg(long)]
    pub rope_scaling: Option<String>,
    /// Weight dtype.
    #[arg(long, value_enum, default_value_t)]
    pub dtype: Dtype,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceKind,
}

/// Decoding settings shared by `generate` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most tokens generated per sequence.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// EOS is suppressed until this many tokens were generated.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// Greedy decoding (the default unless a sampling option is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k", "min_p"])]
    pub greedy: bool,
    /// Sampling temperature (enables sampling).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass (enables sampling).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Top-k truncation, 0 = off (enables sampling; transformers' default when sampling is 50).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Min-p truncation (enables sampling).
    #[arg(long)]
    pub min_p: Option<f64>,
    /// Repetition penalty (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop once the generated text contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The generation config these options describe, with the tokenizer's EOS and pad ids.
    pub fn config(&self, tokenizer: &Tokenizer, num_return_sequences: usize) -> GenerationConfig {
        let sampling = self.temperature.is_some()
            || self.top_p.is_some()
            || self.top_k.is_some()
            || self.min_p.is_some()
            || num_return_sequences > 1;
        let eos = tokenizer.eos_token_ids().to_vec();
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            do_sample: sampling && !self.greedy,
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(50),
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            num_return_sequences,
            seed: self.seed,
            pad_token_id: tokenizer
                .pad_token_id()
                .or(eos.first().copied())
                .unwrap_or(0),
            eos_token_ids: eos,
            stop_strings: self.stop.clone(),
        }
    }
}

/// A loaded target model, optional draft model and the device.
pub struct Loaded {
    /// Target model (with adapter).
    pub target: Pretrained,
    /// Draft model for speculative decoding.
    pub draft: Option<Pretrained>,
    /// Device both live on.
    pub device: Device,
}

impl Loaded {
    /// The tokenizer of the target folder.
    pub fn tokenizer(&self) -> anyhow::Result<&Tokenizer> {
        self.target.tokenizer.as_ref().with_context(|| {
            format!(
                "{}: no tokenizer.json in the model folder",
                self.target.dir.display()
            )
        })
    }

    /// Generates (speculatively when a draft model is loaded), streaming text to `on_text`.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        gamma: usize,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> anyhow::Result<Vec<GenerationOutput>> {
        let tokenizer = self.tokenizer()?;
        let mut context = self.target.model.max_position_embeddings();
        if let Some(draft) = &self.draft {
            // Speculative rounds run up to gamma + 1 positions ahead of the accepted text.
            context = context
                .min(draft.model.max_position_embeddings())
                .saturating_sub(gamma + 1);
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let max_new_tokens = fit_to_context(config.max_new_tokens, longest, context)?;
        let clamped;
        let config = if max_new_tokens < config.max_new_tokens {
            eprintln!(
                "warning: --max-new-tokens {} clamped to {max_new_tokens}: the longest prompt has \
                 {longest} tokens and the model's context is {context} positions",
                config.max_new_tokens
            );
            clamped = GenerationConfig {
                max_new_tokens,
                ..config.clone()
            };
            &clamped
        } else {
            config
        };
        match &self.draft {
            Some(draft) => {
                let spec = SpeculativeGenerator::new(
                    &self.target.model,
                    &draft.model,
                    &self.device,
                    gamma,
                )?
                .with_tokenizer(tokenizer);
                let (out, stats) = spec.generate_streaming(prompts, config, on_text)?;
                tracing::info!(
                    rounds = stats.rounds,
                    acceptance = stats.acceptance_rate(),
                    "speculative decoding"
                );
                Ok(out)
            }
            None => Ok(Generator::new(&self.target.model, &self.device)
                .with_tokenizer(tokenizer)
                .generate_streaming(prompts, config, on_text)?),
        }
    }
}

/// The most new tokens that fit after a prompt of `prompt_len` tokens in a context of
/// `context` positions: `max_new_tokens` clamped (as `transformers` stops at `max_length`), so
/// that no position beyond the model's context is ever computed or cached.
///
/// # Errors
/// When the prompt alone fills the context.
pub fn fit_to_context(
    max_new_tokens: usize,
    prompt_len: usize,
    context: usize,
) -> anyhow::Result<usize> {
    if prompt_len >= context {
        bail!(
            "the prompt has {prompt_len} tokens but the model's context is {context} positions \
             (max_position_embeddings): no room to generate"
        );
    }
    Ok(max_new_tokens.min(context - prompt_len))
}

/// Loads the models named by `args`.
pub fn load(args: &ModelArgs) -> anyhow::Result<Loaded> {
    let device = resolve(args.device)?;
    let dtype = args.dtype.float();
    let rope_scaling = match &args.rope_scaling {
        Some(json) => Some(parse_rope_scaling(&args.model, json).context("--rope-scaling")?),
        None => None,
    };
    let options = LoadOptions {
        dtype: Some(dtype),
        rope_scaling,
    };
    let target = load_model(&args.model, args.adapter.as_deref(), &options, &device)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let draft = match &args.draft_model {
        Some(dir) => Some(
            load_model(
                dir,
                None,
                &LoadOptions {
                    dtype: Some(dtype),
                    rope_scaling: None,
                },
                &device,
            )
            .with_context(|| format!("loading draft model {}", dir.display()))?,
        ),
        None => None,
    };
    Ok(Loaded {
        target,
        draft,
        device,
    })
}

/// Renders `conversation` with the chat template `spec` (`"tokenizer"` or a preset name) and
/// the generation prompt, then tokenizes it without adding special tokens again.
pub fn chat_prompt(
    tokenizer: &Tokenizer,
    spec: &str,
    conversation: &Conversation,
) -> anyhow::Result<Vec<u32>> {
    let template = ChatTemplate::resolve(spec, tokenizer)
        .with_context(|| format!("chat template `{spec}`"))?;
    let text = template.render_text(
        conversation,
        &TemplateTokens::from_tokenizer(tokenizer),
        true,
    )?;
    Ok(tokenizer.encode(&text, false)?)
}

/// A one-message user conversation.
pub fn user_conversation(system: Option<String>, text: &str) -> Conversation {
    Conversation {
        system,
        tools: Vec::new(),
        messages: vec![Message {
            role: Role::User,
            content: text.to_string(),
            extra: Default::default(),
        }],
    }
}

/// Arguments of `lmflow generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Prompt text (repeatable).
    #[arg(long, required_unless_present = "input")]
    prompt: Vec<String>,
    /// File of prompts: one per line, or JSON Lines with a "prompt", "input" or "text" key.
    #[arg(long, conflicts_with = "prompt")]
    input: Option<PathBuf>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Chat template: "tokenizer" (the model's own) or a preset name.
    #[arg(long, default_value = "tokenizer")]
    chat_template: String,
    /// System prompt used with --chat.
    #[arg(long)]
    system: Option<String>,
    /// Samples per prompt (implies sampling).
    #[arg(long, default_value_t = 1)]
    num_return_sequences: usize,
    /// Prompts per batch (left-padded together).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print one JSON object per output: {"prompt_ids", "new_ids", "text", ...}.
    #[arg(long)]
    json: bool,
    /// LLaVA models: an image for the prompt's `<image>` marker (repeat for several markers,
    /// in order). The image is only in the prefill; decoding uses the KV cache.
    #[arg(long)]
    image: Vec<PathBuf>,
}

fn read_prompts(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
            let p = ["prompt", "input", "text"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|x| x.as_str()));
            let Some(p) = p else {
                bail!(
                    "{}:{}: expected a \"prompt\", \"input\" or \"text\" string",
                    path.display(),
                    i + 1
                );
            };
            prompts.push(p.to_string());
        } else {
            prompts.push(line.to_string());
        }
    }
    Ok(prompts)
}

/// Runs `lmflow generate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if lmflow_models::llava::is_llava_dir(&args.model.model) {
        return run_llava(&args);
    }
    if !args.image.is_empty() {
        bail!(
            "{}: --image needs a LLaVA model folder (config.json with model_type \"llava\")",
            args.model.model.display()
        );
    }
    let prompts = match &args.input {
        Some(path) => read_prompts(path)?,
        None => args.prompt.clone(),
    };
    if prompts.is_empty() {
        bail!("no prompts given");
    }
    let loaded = load(&args.model)?;
    let tokenizer = loaded.tokenizer()?;
    let config = args.sampling.config(tokenizer, args.num_return_sequences);
    let mut encoded = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let ids = if args.chat {
            chat_prompt(
                tokenizer,
                &args.chat_template,
                &user_conversation(args.system.clone(), p),
            )?
        } else {
            tokenizer.encode(p, true)?
        };
        if ids.is_empty() {
            bail!("prompt {i} encodes to no tokens");
        }
        encoded.push(ids);
    }
    // Stream to the terminal when there is a single sequence to show.
    let stream = !args.json && encoded.len() == 1 && args.num_return_sequences == 1;
    let mut stdout = std::io::stdout().lock();
    for (chunk_index, chunk) in encoded.chunks(args.batch_size.max(1)).enumerate() {
        let outputs = loaded.generate(chunk, &config, args.model.gamma, &mut |_, text| {
            if stream {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
        })?;
        for o in outputs {
            let prompt_index = chunk_index * args.batch_size.max(1) + o.prompt_index;
            let text = o.text.clone().unwrap_or_default();
            if args.json {
                let line = serde_json::json!({
                    "prompt_index": prompt_index,
                    "prompt_ids": o.prompt_ids,
                    "new_ids": o.new_ids,
                    "text": text,
                    "finish_reason": o.finish_reason,
                });
                writeln!(stdout, "{line}")?;
            } else if stream {
                writeln!(stdout)?;
            } else {
                writeln!(
                    stdout,
                    "=== prompt {prompt_index}: {}",
                    prompts[prompt_index]
                )?;
                writeln!(stdout, "{text}")?;
            }
        }
    }
    Ok(())
}

/// `lmflow generate` with a LLaVA model: each prompt (with `--chat`, wrapped in the chat
/// template) has its `<image>` markers expanded by the processor and replaced by the images'
/// features in the prefill; decoding is greedy with the KV cache.
fn run_llava(args: &Args) -> anyhow::Result<()> {
    use lmflow_datasets::multimodal::{LlavaProcessor, load_image, stack_pixel_values};

    let sampling = &args.sampling;
    if sampling.temperature.is_some()
        || sampling.top_p.is_some()
        || sampling.top_k.is_some()
        || sampling.min_p.is_some()
        || args.num_return_sequences > 1
        || sampling.repetition_penalty != 1.0
        || !sampling.stop.is_empty()
    {
        bail!(
            "LLaVA models generate greedily for now: sampling options, --repetition-penalty, \
             --stop and --num-return-sequences are not supported with them"
        );
    }
    if args.model.draft_model.is_some() {
        bail!("--draft-model is not supported with LLaVA models yet");
    }
    let prompts = match &args.input {
        Some(path) => read_prompts(path)?,
        None => args.prompt.clone(),
    };
    if prompts.is_empty() {
        bail!("no prompts given");
    }
    let device = resolve(args.model.device)?;
    let options = LoadOptions {
        dtype: Some(args.model.dtype.float()),
        rope_scaling: None,
    };
    let loaded = lmflow_models::load_llava(&args.model.model, &device, &options)
        .with_context(|| format!("loading LLaVA model {}", args.model.model.display()))?;
    let mut loaded = loaded;
    if let Some(dir) = &args.model.adapter {
        // A stage-2 adapter: LoRA on the language model, the projector as modules_to_save.
        lmflow_peft::load_adapter(&mut loaded.model, dir, "default", &device)
            .with_context(|| format!("loading adapter {}", dir.display()))?;
    }
    let tokenizer = loaded.tokenizer.as_ref().with_context(|| {
        format!(
            "{}: no tokenizer.json in the model folder",
            args.model.model.display()
        )
    })?;
    let processor = LlavaProcessor::from_dir(&args.model.model, tokenizer)?;
    let images = args
        .image
        .iter()
        .map(load_image)
        .collect::<Result<Vec<_>, _>>()?;
    let eos = tokenizer.eos_token_ids().to_vec();
    let mut stdout = std::io::stdout().lock();
    for (index, prompt) in prompts.iter().enumerate() {
        let text = if args.chat {
            let template = ChatTemplate::resolve(&args.chat_template, tokenizer)
                .with_context(|| format!("chat template `{}`", args.chat_template))?;
            template.render_text(
                &user_conversation(args.system.clone(), prompt),
                &TemplateTokens::from_tokenizer(tokenizer),
                true,
            )?
        } else {
            prompt.clone()
        };
        let markers = text.matches(processor.image_token()).count();
        let used = &images[..markers.min(images.len())];
        if markers != images.len() {
            bail!(
                "prompt {index} has {markers} {} marker(s) but {} --image given",
                processor.image_token(),
                images.len()
            );
        }
        // The chat template writes the special tokens itself.
        let (ids, pixels) = processor.encode_prompt(tokenizer, &text, used, !args.chat)?;
        let max_new = fit_to_context(
            sampling.max_new_tokens,
            ids.len(),
            loaded.model.language_model.max_position_embeddings(),
        )?;
        let ids_tensor = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(
                ids.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(),
                [1, ids.len()],
            ),
            &device,
        );
        let pixel_values = if pixels.is_empty() {
            None
        } else {
            let (values, dims) = stack_pixel_values(&pixels)?;
            Some(burn::tensor::Tensor::<4>::from_data(
                burn::tensor::TensorData::new(values, dims),
                &device,
            ))
        };
        let out = loaded
            .model
            .greedy_generate(ids_tensor, None, pixel_values, max_new, &eos)?;
        let new_ids = out.into_iter().next().unwrap_or_default();
        let text = tokenizer.decode(&new_ids, true)?;
        if args.json {
            let line = serde_json::json!({
                "prompt_index": index,
                "prompt_ids": ids,
                "new_ids": new_ids,
                "text": text,
                "images": args.image,
            });
            writeln!(stdout, "{line}")?;
        } else if prompts.len() == 1 {
            writeln!(stdout, "{text}")?;
        } else {
            writeln!(stdout, "=== prompt {index}: {prompt}")?;
            writeln!(stdout, "{text}")?;
        }
    }
    Ok(())
}
