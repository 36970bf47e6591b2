//! `lmflow bench`: training and decoding throughput of a named model shape (random weights, no
//! files needed) or of a model folder, printed as one JSON line.
//!
//! `bench/reference.py` measures torch + transformers + peft the same way and
//! `bench/compare.sh` runs both on one machine and prints the ratios (see docs/performance.md).
//!
//! - `train` runs the real [`Trainer`] loop (forward, token-weighted loss, backward, global-norm
//!   clipping, AdamW step) on random token rows of `batch × seq`; the first `--warmup` steps are
//!   not timed, `step_s` is the mean of the next `--steps`.
//! - `decode` times [`Generator::generate`] (greedy, EOS ignored), best of `--repeats` runs with
//!   one new token (the prefill) and with `--new-tokens`: `prefill_tok_s = batch · prompt / t1`,
//!   `decode_tok_s = batch · (new − 1) / (tN − t1)`.
//!
//! Peak RSS is the process's high-water mark (`VmHWM`), so run one measurement per process.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::Device;
use lmflow_datasets::TokenizedSample;
use lmflow_infer::{GenerationConfig, Generator, SeededRng};
use lmflow_models::{CausalLm, LoadOptions, ModelConfig, load_pretrained};
use lmflow_optim::schedule::ScheduleKind;
use lmflow_peft::trainable::cast_float_params;
use lmflow_peft::{LinearVisitor, LoraConfig, Nf4Config, TargetModules, get_peft_model};
use lmflow_train::{FullModelWeights, LoraWeights, TrainEvent, Trainer, TrainerConfig, WeightsIo};
use serde_json::json;

use crate::device::{DeviceKind, resolve};
use crate::dtype::Dtype;

/// Arguments of `lmflow bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    work: Work,
}

#[derive(clap::Subcommand, Debug)]
enum Work {
    /// Training throughput (tokens/s) and peak memory.
    Train(TrainArgs),
    /// Prefill and greedy-decode throughput.
    Decode(DecodeArgs),
}

/// Named model shapes (random weights).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// LLaMA, hidden 512, intermediate 1408, 8 layers, 8 heads / 4 KV heads, vocab 32000, untied.
    CpuSmall,
    /// Qwen2-0.5B: hidden 896, intermediate 4864, 24 layers, 14 heads / 2 KV heads, vocab
    /// 151936, tied.
    #[value(name = "gpu-0.5b")]
    Gpu05b,
    /// Same model as `gpu-0.5b`, benchmarked for memory at B1×T512.
    #[value(name = "mem-0.5b")]
    Mem05b,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::CpuSmall => "cpu-small",
            Shape::Gpu05b => "gpu-0.5b",
            Shape::Mem05b => "mem-0.5b",
        }
    }

    /// The `config.json` of this shape.
    fn config(self) -> serde_json::Value {
        match self {
            Shape::CpuSmall => json!({
                "model_type": "llama", "architectures": ["LlamaForCausalLM"],
                "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
                "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 32000,
                "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                "tie_word_embeddings": false, "hidden_act": "silu",
            }),
            Shape::Gpu05b | Shape::Mem05b => json!({
                "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                "tie_word_embeddings": true, "hidden_act": "silu", "use_sliding_window": false,
            }),
        }
    }

    /// Default `(batch, seq)` of the training benchmark.
    fn train_default(self) -> (usize, usize) {
        match self {
            Shape::CpuSmall => (4, 256),
            Shape::Gpu05b => (4, 1024),
            Shape::Mem05b => (1, 512),
        }
    }
}

/// What is trained.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// LoRA r16, alpha 32 on every linear layer of the decoder.
    Lora,
    /// LoRA on an NF4-quantised base (QLoRA).
    Qlora,
    /// Every parameter.
    Full,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Qlora => "qlora",
            Method::Full => "full",
        }
    }
}

/// Options shared by both benchmarks.
#[derive(clap::Args, Debug)]
struct Common {
    /// Named shape with random weights (ignored with --model).
    #[arg(long, value_enum, default_value = "cpu-small")]
    shape: Shape,
    /// Benchmark a model folder instead of a named shape.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Weight dtype of the model (LoRA/QLoRA adapters and their optimizer state stay f32;
    /// `--method full` then trains pure bf16/f16, without f32 master weights).
    #[arg(long, value_enum, default_value_t)]
    dtype: Dtype,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    #[command(flatten)]
    common: Common,
    /// What is trained.
    #[arg(long, value_enum, default_value = "lora")]
    method: Method,
    /// Rows per step (default: the shape's).
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per row (default: the shape's).
    #[arg(long)]
    seq: Option<usize>,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Activation checkpointing per decoder layer (as `finetune --gradient-checkpointing`).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Attention implementation (as `finetune --attention`): tiled, eager or auto.
    #[arg(long, default_value = "auto")]
    attention: lmflow_models::AttentionImpl,
}

#[derive(clap::Args, Debug)]
struct DecodeArgs {
    #[command(flatten)]
    common: Common,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32)]
    prompt: usize,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Timed runs of each length (the best is kept).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

/// Runs `lmflow bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let line = match args.work {
        Work::Train(a) => train(a)?,
        Work::Decode(a) => decode(a)?,
    };
    println!("{line}");
    Ok(())
}

/// The process's peak resident set in MiB (`VmHWM` of `/proc/self/status`), if readable.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn impl_name(device: DeviceKind) -> String {
    let backend = match device {
        DeviceKind::Cpu => "burn flex",
        DeviceKind::Cuda => "burn cuda",
    };
    format!("lmflow-rs {} ({backend})", env!("CARGO_PKG_VERSION"))
}

fn device_name(device: DeviceKind) -> &'static str {
    match device {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Cuda => "cuda",
    }
}

/// The model to benchmark, its configuration and its label.
fn build_model(
    common: &Common,
    device: &Device,
) -> anyhow::Result<(CausalLm, ModelConfig, String)> {
    device.seed(common.seed);
    match &common.model {
        Some(dir) => {
            let options = LoadOptions {
                dtype: Some(common.dtype.float()),
                ..LoadOptions::default()
            };
            let pretrained = load_pretrained(dir, device, &options)?;
            Ok((
                pretrained.model,
                pretrained.config,
                dir.display().to_string(),
            ))
        }
        None => {
            let config = ModelConfig::from_json(
                common.shape.config(),
                std::path::Path::new("<bench shape>"),
            )?;
            let model = CausalLm::from_config(&config, device)?;
            // Drawn lazily in f32 and converted one parameter at a time.
            let model = match common.dtype {
                Dtype::F32 => model,
                d => cast_float_params(model, d.float()),
            };
            Ok((model, config, common.shape.name().to_string()))
        }
    }
}

fn random_rows(rows: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = SeededRng::new(seed);
    let span = (vocab as u64).saturating_sub(3).max(1);
    (0..rows)
        .map(|_| {
            (0..len)
                .map(|_| (3 + rng.next_u64() % span) as u32)
                .collect()
        })
        .collect()
}

fn train(args: TrainArgs) -> anyhow::Result<String> {
    let common = &args.common;
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let device = resolve(common.device)?.autodiff();
    let (model, config, shape) = build_model(common, &device)?;
    let (def_batch, def_seq) = common.shape.train_default();
    let (batch, seq) = (args.batch.unwrap_or(def_batch), args.seq.unwrap_or(def_seq));
    if batch == 0 || seq < 2 {
        bail!("--batch must be at least 1 and --seq at least 2");
    }
    let total = args.warmup + args.steps;
    let samples: Vec<TokenizedSample> =
        random_rows(batch * total, seq, model.vocab_size(), common.seed)
            .into_iter()
            .map(|ids| TokenizedSample {
                labels: ids.iter().map(|&t| i64::from(t)).collect(),
                original_len: ids.len(),
                input_ids: ids,
                truncated: false,
                target_lost: false,
            })
            .collect();

    let out_dir = std::env::temp_dir().join(format!("lmflow-bench-{}", std::process::id()));
    let cfg = TrainerConfig {
        output_dir: out_dir.clone(),
        learning_rate: 1e-4,
        max_steps: Some(total),
        per_device_train_batch_size: batch,
        lr_scheduler_type: ScheduleKind::Constant,
        logging_steps: total,
        save_steps: 0,
        save_total_limit: 1,
        block_size: seq,
        resume: false,
        seed: common.seed,
        gradient_checkpointing: args.gradient_checkpointing,
        ..TrainerConfig::default()
    };
    let (mut model, weights): (CausalLm, Box<dyn WeightsIo>) = match args.method {
        Method::Full => (
            model,
            Box::new(FullModelWeights::new(config, device.clone())),
        ),
        Method::Lora | Method::Qlora => {
            let mut base = model;
            if args.method == Method::Qlora {
                let nf4 = Nf4Config::new();
                base.visit_linears_mut(&mut |path, lin| {
                    if path != "lm_head" {
                        lin.quantize_nf4(&nf4);
                    }
                });
            }
            let lora = LoraConfig::new(16, 32.0, TargetModules::Pattern("all-linear".into()));
            let (model, _) = get_peft_model(base, &lora, "default")?;
            (
                model,
                Box::new(LoraWeights::new(lora, "default", device.clone())),
            )
        }
    };
    model.set_attention_impl(args.attention)?;
    let trainer = Trainer::new(cfg, device.clone(), 0)?;
    let mut stamps: Vec<Instant> = Vec::with_capacity(total + 1);
    let started = Instant::now();
    let result = trainer.train(model, weights.as_ref(), &samples, None, &mut |event| {
        if let TrainEvent::Step { step, loss, .. } = event {
            stamps.push(Instant::now());
            tracing::info!("step {step}: loss {loss:.4}");
        }
    });
    let _ = std::fs::remove_dir_all(&out_dir);
    result.context("benchmark training run failed")?;
    // Step i ends at stamps[i - 1]; the timed steps are warmup+1 ..= total.
    let begin = match args.warmup {
        0 => started,
        w => stamps[w - 1],
    };
    let end = *stamps.last().context("no step was run")?;
    let step_s = end.duration_since(begin).as_secs_f64() / args.steps as f64;
    let tok_s = (batch * seq) as f64 / step_s;
    Ok(json!({
        "impl": impl_name(common.device),
        "shape": shape,
        "method": args.method.name(),
        "device": device_name(common.device),
        "dtype": common.dtype.name(),
        "batch": batch,
        "seq": seq,
        "steps": args.steps,
        "gradient_checkpointing": args.gradient_checkpointing,
        "attention": args.attention.to_string(),
        "tok_s": tok_s,
        "step_s": step_s,
        "peak_rss_mib": peak_rss_mib(),
    })
    .to_string())
}

fn decode(args: DecodeArgs) -> anyhow::Result<String> {
    let common = &args.common;
    if args.batch == 0 || args.prompt == 0 || args.new_tokens < 2 || args.repeats == 0 {
        bail!("--batch, --prompt and --repeats must be at least 1, --new-tokens at least 2");
    }
    let device = resolve(common.device)?;
    let (model, _, shape) = build_model(common, &device)?;
    let prompts = random_rows(args.batch, args.prompt, model.vocab_size(), common.seed);
    let generator = Generator::new(&model, &device);
    let time = |n: usize| -> anyhow::Result<f64> {
        let config = GenerationConfig::greedy(n);
        let mut best = f64::INFINITY;
        for _ in 0..args.repeats {
            let start = Instant::now();
            let out = generator.generate(&prompts, &config)?;
            device
                .sync()
                .map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))?;
            if out.iter().any(|o| o.new_ids.len() != n) {
                bail!("generation stopped early");
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    time(2)?; // warm-up
    let t1 = time(1)?;
    let tn = time(args.new_tokens)?;
    Ok(json!({
        "impl": impl_name(common.device),
        "shape": shape,
        "method": "greedy",
        "device": device_name(common.device),
        "dtype": common.dtype.name(),
        "batch": args.batch,
        "prompt": args.prompt,
        "new_tokens": args.new_tokens,
        "prefill_tok_s": (args.batch * args.prompt) as f64 / t1,
        "decode_tok_s": (args.batch * (args.new_tokens - 1)) as f64 / (tn - t1).max(1e-9),
        "peak_rss_mib": peak_rss_mib(),
    })
    .to_string())
}
