//! `lmflow finetune`: LoRA (default) or full fine-tuning of a Hub-layout model on an LMFlow
//! dataset, with a progress bar, `metrics.jsonl`, `loss.png` and resumable checkpoints.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lmflow_datasets::{
    ChatTemplate, Dataset, DatasetType, ReadOptions, SampleEncoder, TokenizeConfig,
    TokenizedSample, read_dataset,
};
use lmflow_models::{LoadOptions, Tokenizer, load_pretrained};
use lmflow_optim::schedule::ScheduleKind;
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model};
use lmflow_train::distributed::{GradientSync, SingleProcess, ThreadGroup};
use lmflow_train::{
    DataFingerprint, FullModelWeights, LoraWeights, RunIdentity, StartMode, TrainOutcome, Trainer,
    TrainerConfig, WeightsIo, plan_run_folder,
};

use crate::device::{DeviceKind, resolve};
use crate::dtype::Dtype;
use crate::train_flags::TrainFlags;

mod multimodal;

/// Arguments of `lmflow finetune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model folder (Hub layout: config.json, safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// Training data: an LMFlow JSON file, a folder of them, or JSON Lines.
    #[arg(long)]
    dataset: PathBuf,
    /// Evaluation data (same formats); evaluated at `--eval-steps` and at the end.
    #[arg(long)]
    eval_dataset: Option<PathBuf>,
    /// Output folder: adapter (or model) in `final/`, checkpoints, metrics.jsonl, loss.png.
    #[arg(long, default_value = "output")]
    output: PathBuf,
    /// Chat template for conversation data: `tokenizer` (the model's own) or a preset name.
    #[arg(long, default_value = "tokenizer")]
    template: String,
    /// Tokens per training row (default: the tokenizer's model_max_length capped at 2048,
    /// else 1024). Longer `text_only` texts are split into consecutive blocks of this size;
    /// longer text2text/conversation samples are truncated.
    #[arg(long)]
    block_size: Option<usize>,
    /// Train on prompt tokens too.
    #[arg(long)]
    train_on_prompt: bool,
    /// Do not pack several `text_only` samples into each row (packing is on by default for
    /// `text_only` data, off for the other types).
    #[arg(long)]
    no_packing: bool,
    /// Full fine-tuning instead of LoRA.
    #[arg(long)]
    full: bool,
    /// LISA (with --full): train only this many decoder layers at a time, re-sampled every
    /// --lisa-interval steps; embeddings and head always train.
    #[arg(long, requires = "full")]
    lisa_layers: Option<usize>,
    /// LISA: steps between re-sampling the trained layers.
    #[arg(long, default_value_t = 20)]
    lisa_interval: usize,
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
    /// rsLoRA scaling (alpha / sqrt(r)).
    #[arg(long)]
    use_rslora: bool,
    /// QLoRA: store the frozen base linear layers (all but the output head) as NF4 with double
    /// quantisation (bitsandbytes' format, about 4.1 bits per weight); adapters stay f32.
    #[arg(long, conflicts_with = "full")]
    qlora: bool,
    /// DoRA (weight-decomposed LoRA).
    #[arg(long)]
    use_dora: bool,
    /// Optimizer from lmflow-optim's registry (adamw, adabelief, lion, radam, ...), with its
    /// default hyper-parameters; use --config for others.
    #[arg(long)]
    optim: Option<String>,
    /// LoRA+: learning-rate ratio of the B matrices over the A matrices (e.g. 16).
    #[arg(long)]
    lora_plus_ratio: Option<f64>,
    /// Trainer settings (learning rate, epochs, batch, schedule, seed, steps).
    #[command(flatten)]
    train: TrainFlags,
    /// Start afresh instead of resuming: refused when the output folder holds an earlier
    /// run's checkpoints or `final/` (pass --overwrite-output to delete them).
    #[arg(long)]
    no_resume: bool,
    /// Delete the earlier run in the output folder (its checkpoints, final/, metrics.jsonl,
    /// loss.png, run.json; nothing else) and start afresh.
    #[arg(long)]
    overwrite_output: bool,
    /// When the newest checkpoint is damaged, rename it `checkpoint-<step>.damaged` and resume
    /// from the newest good one (without it, a damaged checkpoint is an error).
    #[arg(long, conflicts_with_all = ["no_resume", "overwrite_output"])]
    resume_fallback: bool,
    /// After training, answer this many evaluation (else training) conversations greedily and
    /// show the answers (0: none).
    #[arg(long, default_value_t = 3)]
    samples: usize,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Attention implementation (LLaMA family): `tiled` keeps memory linear in the sequence
    /// (online softmax, backward by recomputation per tile), `eager` materialises the
    /// `[seq, seq]` scores, `auto` tiles sequences of at least 2,048 tokens. Same results.
    #[arg(long, default_value = "auto")]
    attention: lmflow_models::AttentionImpl,
    /// Activation checkpointing per decoder layer: keep only each layer's input during the
    /// forward pass and run the layer again in the backward pass (less memory, about a third
    /// more compute, same results). LLaMA-family models; not with --lora-dropout.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Dtype the model's weights are stored and computed in. LoRA/DoRA/QLoRA adapters, their
    /// gradients and optimizer state stay f32; loss and softmax run in f32. With --full,
    /// bf16/f16 trains pure bf16/f16 (weights, gradients and optimizer moments; no f32 master
    /// copy). See docs/memory.md.
    #[arg(long, value_enum, default_value_t)]
    dtype: Dtype,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
    /// Data parallelism across processes: `mpi` (start with `mpirun`/`srun`, one process per
    /// GPU; needs a build with `--features mpi`). See docs/distributed.md.
    #[arg(long, value_enum, default_value_t)]
    distributed: DistributedKind,
    /// Data parallelism across the devices of this machine, one thread per device, e.g.
    /// `cuda:0,cuda:1` (or `cpu,cpu`). `--batch-size` is per device. See docs/distributed.md.
    #[arg(long, conflicts_with_all = ["distributed", "device"])]
    devices: Option<String>,
    /// LLaVA models: folder the image paths of the dataset are relative to (default: the
    /// dataset file's folder). The data is LLaVA's JSON or LMFlow conversations with `images`;
    /// see docs/multimodal.md.
    #[arg(long)]
    image_folder: Option<PathBuf>,
    /// LLaVA stage 1 (LLaVA's `--tune_mm_mlp_adapter`): train the projector only (vision
    /// tower and language model frozen); `final/` gets mm_projector.safetensors, a PEFT folder
    /// and the whole model.
    #[arg(long)]
    tune_mm_mlp_adapter: bool,
    /// LLaVA stage 2: start from this stage-1 projector (mm_projector.safetensors, or a
    /// stage-1 `final/` folder), as LLaVA's `--pretrain_mm_mlp_adapter`.
    #[arg(long)]
    pretrain_mm_mlp_adapter: Option<PathBuf>,
}

/// `--distributed`: how the ranks of a data-parallel run find each other.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DistributedKind {
    /// One process (or `--devices` threads).
    #[default]
    None,
    /// MPI processes (`mpirun -np N lmflow finetune --distributed mpi ...`).
    Mpi,
}

/// How this run's ranks are launched.
enum Launch {
    /// One process on one device.
    Single(burn::tensor::Device),
    /// This process is one rank of an MPI job.
    #[cfg(feature = "mpi")]
    Mpi(lmflow_train::distributed::MpiSync, burn::tensor::Device),
    /// One thread per device.
    Threads(Vec<burn::tensor::Device>),
}

impl Launch {
    fn new(args: &Args) -> anyhow::Result<Self> {
        if let Some(list) = &args.devices {
            let devices = list
                .split(',')
                .map(|name| parse_device(name.trim()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            return Ok(match devices.len() {
                1 => Launch::Single(devices[0].clone()),
                _ => Launch::Threads(devices),
            });
        }
        match args.distributed {
            DistributedKind::None => Ok(Launch::Single(resolve(args.device)?)),
            #[cfg(feature = "mpi")]
            DistributedKind::Mpi => {
                let sync = lmflow_train::distributed::MpiSync::init()?;
                let device = match args.device {
                    DeviceKind::Cpu => burn::tensor::Device::flex(),
                    _ => parse_device(&format!("cuda:{}", sync.local_rank()))?,
                };
                Ok(Launch::Mpi(sync, device))
            }
            #[cfg(not(feature = "mpi"))]
            DistributedKind::Mpi => bail!(
                "this lmflow was built without MPI support; rebuild with `--features mpi` \
                 (see docs/distributed.md)"
            ),
        }
    }

    fn rank(&self) -> usize {
        match self {
            #[cfg(feature = "mpi")]
            Launch::Mpi(sync, _) => sync.rank(),
            _ => 0,
        }
    }

    fn world_size(&self) -> usize {
        match self {
            Launch::Single(_) => 1,
            #[cfg(feature = "mpi")]
            Launch::Mpi(sync, _) => sync.world_size(),
            Launch::Threads(d) => d.len(),
        }
    }

    /// The device of rank 0 of this process (where the model is loaded).
    fn device(&self) -> burn::tensor::Device {
        match self {
            Launch::Single(d) => d.clone(),
            #[cfg(feature = "mpi")]
            Launch::Mpi(_, d) => d.clone(),
            Launch::Threads(d) => d[0].clone(),
        }
    }
}

/// A device named in `--devices`: `cpu`, `cuda` or `cuda:N`.
fn parse_device(name: &str) -> anyhow::Result<burn::tensor::Device> {
    match name {
        "cpu" => Ok(burn::tensor::Device::flex()),
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let index: usize = match name.strip_prefix("cuda:") {
                Some(i) => i
                    .parse()
                    .with_context(|| format!("--devices: `{name}`: bad device number"))?,
                None => 0,
            };
            #[cfg(feature = "cuda")]
            {
                Ok(burn::tensor::Device::cuda(index))
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = index;
                bail!(
                    "--devices {name}: this lmflow was built without CUDA support; rebuild with `--features cuda`"
                )
            }
        }
        _ => bail!("--devices: unknown device `{name}` (cpu, cuda or cuda:N)"),
    }
}

/// What a run trains with: its weights files for a device.
enum WeightsSpec {
    Full(lmflow_models::ModelConfig),
    Lora(Box<LoraConfig>),
}

impl WeightsSpec {
    fn io(&self, device: &burn::tensor::Device) -> Box<dyn WeightsIo> {
        match self {
            WeightsSpec::Full(c) => Box::new(FullModelWeights::new(c.clone(), device.clone())),
            WeightsSpec::Lora(l) => {
                Box::new(LoraWeights::new((**l).clone(), "default", device.clone()))
            }
        }
    }
}

/// One rank's training: evaluation before, the training loop with its progress bar (rank 0
/// only), returning the outcome and the evaluation loss before training.
#[allow(clippy::too_many_arguments)]
fn train_rank(
    cfg: TrainerConfig,
    sync: Box<dyn GradientSync>,
    device: burn::tensor::Device,
    pad_id: u32,
    model: lmflow_models::CausalLm,
    weights: &dyn WeightsIo,
    train: &[TokenizedSample],
    eval: Option<&[TokenizedSample]>,
    quiet: bool,
) -> anyhow::Result<(TrainOutcome, Option<f64>)> {
    let root = sync.is_root();
    let trainer = Trainer::new(cfg, device, pad_id)?.with_sync(sync);
    // Ctrl-C stops a single-process run cleanly (ranks would have to agree on the step).
    let trainer = if trainer.sync().world_size() == 1 {
        trainer.with_stop_flag(interrupt::install())
    } else {
        trainer
    };
    let eval_before = match eval {
        Some(e) => Some(trainer.evaluate(&model, e)?),
        None => None,
    };
    let bar = crate::progress::train_bar(quiet || !root);
    let outcome = trainer.train(model, weights, train, eval, &mut |event| {
        crate::progress::show(&bar, event)
    });
    let outcome = interrupt::exit_if_interrupted(outcome, &bar)?;
    bar.finish_and_clear();
    Ok((outcome, eval_before))
}

fn trainer_config(args: &Args) -> anyhow::Result<TrainerConfig> {
    let mut cfg = args.train.trainer_config(TrainerConfig {
        learning_rate: if args.full { 2e-4 } else { 2e-3 },
        num_train_epochs: 3.0,
        lr_scheduler_type: ScheduleKind::Cosine,
        warmup_ratio: 0.03,
        logging_steps: 5,
        save_steps: 100,
        ..TrainerConfig::default()
    })?;
    cfg.output_dir = args.output.clone();
    if let Some(name) = &args.optim {
        cfg.optimizer = Some(lmflow_optim::OptimizerConfig::from_value(
            serde_json::json!({ "name": name }),
        )?);
    }
    if args.lisa_layers.is_some() {
        cfg.lisa_activated_layers = args.lisa_layers;
        cfg.lisa_interval_steps = args.lisa_interval;
    }
    if args.lora_plus_ratio.is_some() {
        cfg.lora_plus_ratio = args.lora_plus_ratio;
    }
    if args.no_resume || args.overwrite_output {
        cfg.resume = false;
    }
    if args.gradient_checkpointing {
        cfg.gradient_checkpointing = true;
    }
    Ok(cfg)
}

/// Checks the numeric flags that would make the run meaningless, crash or abort, before any
/// work starts. (Trainer settings are checked by `TrainerConfig::validate`, adapter settings
/// by `LoraConfig::validate` and the layers' sizes.)
fn validate_args(args: &Args) -> anyhow::Result<()> {
    if let Some(b) = args.block_size
        && b < 2
    {
        bail!(
            "--block-size {b}: must be at least 2 (each trained token is predicted from the ones before it)"
        );
    }
    if !args.full {
        if args.lora_r == 0 {
            bail!("--lora-r must be at least 1");
        }
        if !args.lora_alpha.is_finite() || args.lora_alpha <= 0.0 {
            bail!(
                "--lora-alpha {}: must be a finite, positive number",
                args.lora_alpha
            );
        }
        if !(0.0..1.0).contains(&args.lora_dropout) {
            bail!("--lora-dropout {}: must lie in [0, 1)", args.lora_dropout);
        }
    }
    if args.gradient_checkpointing && !args.full && args.lora_dropout > 0.0 {
        bail!(
            "--gradient-checkpointing with --lora-dropout {}: the layers run twice and would draw \
             different dropout masks; use --lora-dropout 0",
            args.lora_dropout
        );
    }
    if args.lisa_layers == Some(0) {
        bail!("--lisa-layers must be at least 1");
    }
    if args.lisa_layers.is_some() && args.lisa_interval == 0 {
        bail!("--lisa-interval must be at least 1");
    }
    if args.train.max_steps == Some(0) {
        bail!("--max-steps must be at least 1");
    }
    if let Some(e) = args.train.epochs
        && !(e.is_finite() && e > 0.0)
    {
        bail!("--epochs {e}: must be a finite, positive number");
    }
    for (flag, value) in [
        ("--learning-rate", args.train.learning_rate),
        ("--warmup-ratio", args.train.warmup_ratio),
        ("--lora-plus-ratio", args.lora_plus_ratio),
    ] {
        if let Some(v) = value
            && !(v.is_finite() && v >= 0.0)
        {
            bail!("{flag} {v}: must be a finite, non-negative number");
        }
    }
    Ok(())
}

/// The run's identity for `run.json` (see `lmflow_train::run_folder`).
fn run_identity(args: &Args, cfg: &TrainerConfig) -> anyhow::Result<RunIdentity> {
    let method = if args.lisa_layers.is_some() {
        "lisa"
    } else if args.full {
        "full"
    } else if args.qlora {
        "qlora"
    } else if args.use_dora {
        "dora"
    } else {
        "lora"
    };
    let adapter = !args.full;
    let model = std::fs::canonicalize(&args.model).unwrap_or_else(|_| args.model.clone());
    Ok(RunIdentity {
        method: method.into(),
        rank: adapter.then_some(args.lora_r),
        alpha: adapter.then_some(args.lora_alpha),
        target_modules: adapter.then(|| args.target_modules.clone()),
        use_rslora: adapter && args.use_rslora,
        lisa_layers: args.lisa_layers,
        model: model.display().to_string(),
        optimizer: cfg
            .optimizer
            .as_ref()
            .map_or("adamw", |o| o.name())
            .to_string(),
        seed: Some(cfg.seed),
        world_size: 1,
        dtype: args.dtype.name().into(),
        dataset: Some(
            DataFingerprint::of_path(&args.dataset)
                .with_context(|| format!("cannot read {}", args.dataset.display()))?,
        ),
    })
}

/// How many tokens of a dataset training keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCount {
    /// Tokens of the tokenized dataset (before any truncation or split).
    pub total: usize,
    /// Tokens in the samples kept for training.
    pub kept: usize,
}

/// Tokenizes a dataset read from `path`, reporting truncation. `text_only` texts longer than
/// the block size are split into consecutive blocks (nothing is lost); other types are
/// truncated to the block size.
pub fn tokenize_dataset(
    path: &Path,
    dataset: &Dataset,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    config: TokenizeConfig,
) -> anyhow::Result<(Vec<TokenizedSample>, TokenCount)> {
    match dataset.dataset_type {
        DatasetType::TextOnly | DatasetType::Text2Text | DatasetType::Conversation => {}
        other => bail!(
            "{}: `{}` data cannot be used for supervised fine-tuning (use text_only, text2text or conversation)",
            path.display(),
            other.as_str()
        ),
    }
    let encoder = SampleEncoder::new(tokenizer, template, config)?;
    let mut samples = Vec::with_capacity(dataset.len());
    let (mut truncated, mut lost, mut split) = (0usize, 0usize, 0usize);
    let mut count = TokenCount::default();
    for (instance, (file, index)) in dataset.instances.iter().zip(&dataset.origins) {
        if dataset.dataset_type == DatasetType::TextOnly {
            let blocks = encoder
                .encode_text_blocks(instance)
                .with_context(|| format!("{}: instance {index}", file.display()))?;
            split += usize::from(blocks.len() > 1);
            // Every block records the length of its whole text.
            count.total += blocks.first().map_or(0, |b| b.original_len);
            count.kept += blocks.iter().map(|b| b.len()).sum::<usize>();
            samples.extend(blocks);
            continue;
        }
        let encoded = encoder
            .encode_text(instance)
            .with_context(|| format!("{}: instance {index}", file.display()))?;
        truncated += usize::from(encoded.sample.truncated);
        count.total += encoded.sample.original_len;
        if encoded.sample.target_lost {
            lost += 1;
            continue;
        }
        count.kept += encoded.sample.len();
        samples.push(encoded.sample);
    }
    if split > 0 {
        tracing::info!(
            "{}: {split} texts longer than the block size split into consecutive blocks",
            path.display()
        );
    }
    if truncated > 0 {
        tracing::warn!(
            "{}: {truncated} samples truncated to the block size",
            path.display()
        );
    }
    if lost > 0 {
        eprintln!(
            "warning: {}: {lost} samples dropped: truncation removed all their trained tokens (raise --block-size)",
            path.display()
        );
    }
    if samples.is_empty() {
        bail!("{}: no trainable samples", path.display());
    }
    Ok((samples, count))
}

/// The default block size: the tokenizer's `model_max_length` (1024 when it has none),
/// capped at 2048 (Llama-3 and Qwen2.5 tokenizers say 131,072, whose `[seq, seq]` attention
/// would not fit in memory).
pub fn default_block_size(model_max_length: Option<usize>) -> usize {
    model_max_length.unwrap_or(1024).min(2048)
}

/// Runs `lmflow finetune`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if lmflow_models::llava::is_llava_dir(&args.model) {
        return multimodal::run(args);
    }
    if args.image_folder.is_some()
        || args.tune_mm_mlp_adapter
        || args.pretrain_mm_mlp_adapter.is_some()
    {
        bail!(
            "{}: --image-folder, --tune-mm-mlp-adapter and --pretrain-mm-mlp-adapter need a LLaVA \
             model folder (config.json with model_type \"llava\")",
            args.model.display()
        );
    }
    validate_args(&args)?;
    let mut cfg = trainer_config(&args)?;
    cfg.validate()?;
    // Decide what this run may do with the output folder before any work starts.
    let mode = if args.overwrite_output {
        StartMode::Overwrite
    } else if args.no_resume {
        StartMode::Fresh
    } else if args.resume_fallback {
        StartMode::ResumeFallback
    } else {
        StartMode::Resume
    };
    let launch = Launch::new(&args)?;
    let root = launch.rank() == 0;
    let mut identity = run_identity(&args, &cfg)?;
    identity.world_size = launch.world_size();
    let folder = plan_run_folder(&args.output, &identity, mode)?;
    for w in folder.warnings().iter().filter(|_| root) {
        eprintln!("warning: {w}");
    }
    cfg.resume = folder.resume();
    let plain_device = launch.device();
    let device = plain_device.clone().autodiff();
    // Every random draw of the run (adapter initialisation, dropout) comes from the backend's
    // generator: seed it so that the same `--seed` gives the same run.
    device.seed(cfg.seed);
    // The loaded model is moved (never cloned) into the trained model: one copy of the
    // weights for the whole run (a clone would keep the original tensors alive beside the
    // updated ones, or the f32 weights beside their NF4 copy).
    let load_options = LoadOptions {
        dtype: Some(args.dtype.float()),
        ..LoadOptions::default()
    };
    if args.full && args.dtype != Dtype::F32 && root {
        eprintln!(
            "warning: --full --dtype {}: trains pure {0} (weights, gradients and optimizer \
             moments in {0}, no f32 master weights): updates smaller than the weight's {0} \
             rounding step are lost; use --dtype f32 for exact full fine-tuning",
            args.dtype.name()
        );
    }
    let lmflow_models::Pretrained {
        model: base_model,
        tokenizer,
        config: model_config,
        ..
    } = if args.qlora {
        // QLoRA: each linear layer (all but the output head) goes to NF4 as soon as it is
        // read, so the full-precision model never exists in memory.
        let nf4 = lmflow_peft::Nf4Config::new();
        lmflow_models::model::load_pretrained_with_linear_hook(
            &args.model,
            &device,
            &load_options,
            &mut |path, lin| {
                if path != "lm_head" {
                    lin.quantize_nf4(&nf4);
                }
            },
        )?
    } else {
        load_pretrained(&args.model, &device, &load_options)?
    };
    let mut base_model = base_model;
    // A bitsandbytes 4-bit checkpoint (`quantization_config`, e.g. a `*-bnb-4bit` Hub model)
    // loads straight into NF4: QLoRA whether or not --qlora is given; its base cannot train.
    let bnb = lmflow_models::bnb::bnb_quantization(&model_config)?.is_some();
    if bnb && (args.full || args.lisa_layers.is_some()) {
        bail!(
            "{}: a bitsandbytes 4-bit checkpoint: its base weights are frozen NF4, so --full and \
             --lisa-layers cannot train them; train LoRA adapters on it (QLoRA), or start from \
             the unquantised model",
            args.model.display()
        );
    }
    base_model.set_attention_impl(args.attention)?;
    let tokenizer = tokenizer
        .as_ref()
        .with_context(|| format!("{}: no tokenizer.json", args.model.display()))?;
    // Without a template in the tokenizer, `tokenizer` means none (fine for text data); any
    // other failure (an unknown preset, a template that does not compile) is an error.
    let template = match ChatTemplate::resolve(&args.template, tokenizer) {
        Ok(t) => Some(t),
        Err(_) if args.template == "tokenizer" && tokenizer.chat_template(None).is_none() => None,
        Err(e) => return Err(e).with_context(|| format!("--template {}", args.template)),
    };
    let context = base_model.max_position_embeddings().max(1);
    let block_size = args
        .block_size
        .unwrap_or_else(|| default_block_size(tokenizer.model_max_length()))
        .min(context);
    if let Some(b) = args.block_size
        && b > block_size
    {
        // As LMFlow, which clamps to the tokenizer's model_max_length with a warning.
        eprintln!(
            "warning: --block-size {b} clamped to {block_size}, the model's context \
             (max_position_embeddings)"
        );
    }
    let tok_cfg = TokenizeConfig {
        block_size,
        train_on_prompt: args.train_on_prompt,
        ..TokenizeConfig::default()
    };
    let train_data = read_dataset(&args.dataset, &ReadOptions::default())?;
    let (train, train_tokens) = tokenize_dataset(
        &args.dataset,
        &train_data,
        tokenizer,
        template.as_ref(),
        tok_cfg.clone(),
    )?;
    let eval_data = match &args.eval_dataset {
        Some(p) => Some(read_dataset(p, &ReadOptions::default())?),
        None => None,
    };
    let eval = match (&args.eval_dataset, &eval_data) {
        (Some(p), Some(d)) => {
            Some(tokenize_dataset(p, d, tokenizer, template.as_ref(), tok_cfg)?.0)
        }
        _ => None,
    };
    tracing::info!(
        "block size {block_size}; training on {} of {} tokens",
        train_tokens.kept,
        train_tokens.total
    );
    // QLoRA dequantises each NF4 weight in the forward pass; without checkpointing autodiff
    // would keep every dequantised (f32) weight until the backward pass. With it, only one
    // layer's are alive at a time.
    if (args.qlora || bnb)
        && !cfg.gradient_checkpointing
        && args.lora_dropout == 0.0
        && base_model.layerwise().is_some()
    {
        tracing::info!("--qlora: activation checkpointing on (one dequantised layer at a time)");
        cfg.gradient_checkpointing = true;
    }
    cfg.packing = train_data.dataset_type == DatasetType::TextOnly && !args.no_packing;
    cfg.block_size = block_size;
    let pad_id = tokenizer
        .pad_token_id()
        .or(tokenizer.eos_token_id())
        .unwrap_or(0);

    let (model, weights) = if args.full {
        (base_model, WeightsSpec::Full(model_config))
    } else {
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
        lora.use_rslora = args.use_rslora;
        lora.use_dora = args.use_dora;
        lora.task_type = Some("CAUSAL_LM".into());
        lora.base_model_name_or_path = Some(args.model.display().to_string());
        let (model, report) = get_peft_model(base_model, &lora, "default")?;
        tracing::info!("LoRA on {} layers", report.adapted.len());
        (model, WeightsSpec::Lora(Box::new(lora)))
    };

    // Everything is loaded and checked: clear an overwritten run and record this one (rank 0).
    if root {
        folder.apply()?;
    }
    let (outcome, eval_before) = match launch {
        Launch::Single(_) => train_rank(
            cfg,
            Box::new(SingleProcess),
            device.clone(),
            pad_id,
            model,
            weights.io(&device).as_ref(),
            &train,
            eval.as_deref(),
            args.quiet,
        )?,
        #[cfg(feature = "mpi")]
        Launch::Mpi(sync, _) => {
            // The other ranks wait until rank 0 has prepared the output folder.
            sync.all_reduce_sum_f64(&mut [0.0])?;
            let (rank, world) = (sync.rank(), sync.world_size());
            let result = train_rank(
                cfg,
                Box::new(sync),
                device.clone(),
                pad_id,
                model,
                weights.io(&device).as_ref(),
                &train,
                eval.as_deref(),
                args.quiet,
            )
            .map_err(|e| {
                if world > 1 {
                    // The other ranks would wait for this one for ever: end the whole job.
                    eprintln!("error: rank {rank}: {e:#}");
                    lmflow_train::distributed::abort_world(1)
                }
                e
            })?;
            if !root {
                return Ok(());
            }
            result
        }
        Launch::Threads(devices) => {
            use burn::module::Module as _;
            let ranks = ThreadGroup::new(devices.len());
            let (cfg, model, weights, train, eval) =
                (&cfg, &model, &weights, &train, eval.as_deref());
            let (primary, quiet) = (&device, args.quiet);
            let results: Vec<anyhow::Result<(TrainOutcome, Option<f64>)>> =
                std::thread::scope(|s| {
                    let handles: Vec<_> = ranks
                        .into_iter()
                        .zip(devices)
                        .map(|(rank, dev)| {
                            s.spawn(move || {
                                let dev = dev.autodiff();
                                // Rank 0 trains the loaded model; the others a copy on their
                                // device (the first step broadcasts rank 0's trainable weights).
                                let model = if dev == *primary {
                                    model.clone()
                                } else {
                                    model.clone().fork(&dev)
                                };
                                train_rank(
                                    cfg.clone(),
                                    Box::new(rank),
                                    dev.clone(),
                                    pad_id,
                                    model,
                                    weights.io(&dev).as_ref(),
                                    train,
                                    eval,
                                    quiet,
                                )
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(anyhow::anyhow!("a training thread panicked"))
                            })
                        })
                        .collect()
                });
            let mut first = None;
            for (rank, result) in results.into_iter().enumerate() {
                match result {
                    Ok(r) if rank == 0 => first = Some(r),
                    Ok(_) => {}
                    Err(e) => return Err(e.context(format!("device rank {rank}"))),
                }
            }
            first.context("no rank 0")?
        }
    };
    // Keep the tokenizer beside the final weights so the folder is self-contained.
    if args.full {
        lmflow_models::model::copy_tokenizer_files(&args.model, &outcome.final_dir)?;
    }
    let samples = if args.samples > 0 {
        sample_answers(
            &outcome.model,
            tokenizer,
            template.as_ref(),
            eval_data.as_ref().unwrap_or(&train_data),
            args.samples,
            &plain_device,
        )?
    } else {
        Vec::new()
    };
    for s in &samples {
        eprintln!(
            "Q: {}\nA: {}\n",
            s["prompt"].as_str().unwrap_or(""),
            s["answer"].as_str().unwrap_or("")
        );
    }
    let summary = serde_json::json!({
        "output": args.output,
        "final": outcome.final_dir,
        "method": if args.lisa_layers.is_some() { "lisa" } else if args.full { "full" } else if args.qlora || bnb { "qlora" } else { "lora" },
        "steps": outcome.state.global_step,
        "train_samples": train.len(),
        "block_size": block_size,
        "train_tokens": train_tokens.total,
        "train_tokens_kept": train_tokens.kept,
        "train_loss": outcome.last_train_loss,
        "eval_loss_before": eval_before,
        "eval_loss_after": outcome.final_eval_loss,
        "metrics": args.output.join("metrics.jsonl"),
        "loss_curve": args.output.join("loss.png"),
        "samples": samples,
    });
    println!("{summary}");
    Ok(())
}

/// Greedy answers of the trained model to the first `n` conversations of a dataset (the last
/// assistant turn removed), for a quick look at what training did.
fn sample_answers(
    model: &lmflow_models::CausalLm,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    dataset: &Dataset,
    n: usize,
    device: &burn::tensor::Device,
) -> anyhow::Result<Vec<serde_json::Value>> {
    use burn::module::Module;
    use lmflow_datasets::{Instance, TemplateTokens};
    use lmflow_infer::{GenerationConfig, Generator};

    let Some(template) = template else {
        return Ok(Vec::new());
    };
    let tokens = TemplateTokens::from_tokenizer(tokenizer);
    let mut prompts = Vec::new();
    let mut questions = Vec::new();
    for instance in dataset.instances.iter().take(n) {
        let Instance::Conversation(c) = instance else {
            continue;
        };
        let mut c = c.clone();
        while c.messages.last().is_some_and(|m| m.role.is_model_output()) {
            c.messages.pop();
        }
        let Some(question) = c.messages.last().map(|m| m.content.clone()) else {
            continue;
        };
        let text = template.render_text(&c, &tokens, true)?;
        prompts.push(tokenizer.encode(&text, false)?);
        questions.push(question);
    }
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let model = model.valid();
    let config = GenerationConfig {
        eos_token_ids: tokenizer.eos_token_ids().to_vec(),
        pad_token_id: tokenizer
            .pad_token_id()
            .or(tokenizer.eos_token_id())
            .unwrap_or(0),
        ..GenerationConfig::greedy(32)
    };
    let outputs = Generator::new(&model, device)
        .with_tokenizer(tokenizer)
        .generate(&prompts, &config)?;
    Ok(questions
        .into_iter()
        .zip(outputs)
        .map(|(q, o)| serde_json::json!({"prompt": q, "answer": o.text.unwrap_or_default().trim()}))
        .collect())
}

/// Ctrl-C during `lmflow finetune`: the first one asks the trainer to stop after the optimizer
/// step in progress and to write its checkpoint; the process then exits with code 130. A
/// second Ctrl-C exits at once (the checkpoints already written are complete, as after a kill).
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};

    use indicatif::ProgressBar;
    use lmflow_train::TrainError;

    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

    #[cfg(unix)]
    extern "C" fn on_sigint(_: libc::c_int) {
        // Only async-signal-safe calls: an atomic swap, write(2) and _exit(2).
        let first = FLAG.get().is_some_and(|f| !f.swap(true, Ordering::SeqCst));
        if first {
            let msg = b"\nCtrl-C: stopping after this step and writing its checkpoint (Ctrl-C again to quit at once)\n";
            // SAFETY: writes a static buffer to stderr.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        } else {
            // SAFETY: ends the process without running any Rust code.
            unsafe { libc::_exit(130) };
        }
    }

    /// Installs the SIGINT handler and returns the flag it sets.
    pub fn install() -> Arc<AtomicBool> {
        let flag = FLAG
            .get_or_init(|| Arc::new(AtomicBool::new(false)))
            .clone();
        #[cfg(unix)]
        // SAFETY: installs a handler that only makes async-signal-safe calls.
        unsafe {
            libc::signal(
                libc::SIGINT,
                on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
        flag
    }

    /// The training result, or (after Ctrl-C stopped it) a message and exit code 130.
    pub fn exit_if_interrupted<T>(
        result: Result<T, TrainError>,
        bar: &ProgressBar,
    ) -> Result<T, TrainError> {
        if let Err(TrainError::Interrupted { .. }) = &result {
            bar.finish_and_clear();
            if let Err(e) = result {
                eprintln!("{e}");
            }
            std::process::exit(130);
        }
        result
    }
}
