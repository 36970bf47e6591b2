//! `lmflow finetune` on a LLaVA model folder: visual instruction tuning through the shared
//! loop (`lmflow_train::multimodal`). Stage 1 (`--tune-mm-mlp-adapter`) trains the projector
//! only; stage 2 trains LoRA on the language model with the projector (default) or, with
//! `--full`, the projector and the whole language model. The vision tower never trains.

use std::path::Path;

use anyhow::{Context, bail};
use lmflow_datasets::multimodal::{
    LlavaProcessor, MultimodalEncoder, MultimodalReadOptions, read_multimodal,
};
use lmflow_datasets::{ChatTemplate, SampleEncoder, TokenizeConfig};
use lmflow_models::llava::{copy_processor_files, language_model_targets};
use lmflow_models::model::copy_tokenizer_files;
use lmflow_models::{LlavaModel, LoadOptions, Tokenizer, load_llava};
use lmflow_peft::{LoraConfig, TargetModules};
use lmflow_train::multimodal::{
    LlavaFullWeights, LlavaSftObjective, LlavaStage, MultimodalItem, ProjectorWeights,
    load_projector, prepare_stage,
};
use lmflow_train::{LoraWeights, StartMode, Trainer, WeightsIo, plan_run_folder};

use super::{Args, default_block_size, interrupt, run_identity, trainer_config, validate_args};
use crate::device::resolve;

/// The language-model layers `all-linear` stands for in LLaVA's stage 2.
const LLAMA_LINEARS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Reads a multimodal dataset (LLaVA JSON or LMFlow conversations with `images`) and encodes
/// it for the model.
fn encode_dataset(
    path: &Path,
    image_folder: Option<&Path>,
    encoder: &MultimodalEncoder<'_>,
) -> anyhow::Result<Vec<MultimodalItem>> {
    let options = MultimodalReadOptions {
        image_folder: image_folder.map(Path::to_path_buf),
        check_images: true,
    };
    let (_, records) = read_multimodal(path, &options)?;
    let mut items = Vec::with_capacity(records.len());
    let mut lost = 0usize;
    for record in &records {
        let sample = encoder.encode(record)?;
        if sample.sample.target_lost {
            lost += 1;
            continue;
        }
        items.push(MultimodalItem::from(sample));
    }
    if lost > 0 {
        eprintln!(
            "warning: {}: {lost} records dropped: truncation removed all their trained tokens \
             (raise --block-size)",
            path.display()
        );
    }
    if items.is_empty() {
        bail!("{}: no trainable records", path.display());
    }
    Ok(items)
}

/// The stage `args` ask for.
fn stage(args: &Args) -> anyhow::Result<LlavaStage> {
    if args.tune_mm_mlp_adapter {
        return Ok(LlavaStage::Projector);
    }
    if args.full {
        return Ok(LlavaStage::LanguageModel);
    }
    let names: Vec<String> = if args.target_modules == "all-linear" {
        LLAMA_LINEARS.iter().map(|s| s.to_string()).collect()
    } else {
        args.target_modules
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut lora = LoraConfig::new(args.lora_r, args.lora_alpha, language_model_targets(&refs));
    if let TargetModules::Pattern(p) = lora.target_modules.as_ref().context("targets")? {
        tracing::info!("LoRA target_modules {p}");
    }
    lora.lora_dropout = args.lora_dropout;
    lora.use_rslora = args.use_rslora;
    lora.use_dora = args.use_dora;
    lora.task_type = Some("CAUSAL_LM".into());
    lora.base_model_name_or_path = Some(args.model.display().to_string());
    Ok(LlavaStage::Lora(Box::new(lora)))
}

/// Runs `lmflow finetune` on a LLaVA model.
pub(super) fn run(args: Args) -> anyhow::Result<()> {
    validate_args(&args)?;
    for (flag, set) in [
        ("--qlora", args.qlora),
        ("--lisa-layers", args.lisa_layers.is_some()),
        ("--gradient-checkpointing", args.gradient_checkpointing),
        ("--devices", args.devices.is_some()),
        (
            "--distributed",
            args.distributed != super::DistributedKind::None,
        ),
    ] {
        if set {
            bail!("{flag} is not supported for LLaVA (vision-language) models yet");
        }
    }
    if args.tune_mm_mlp_adapter && args.full {
        bail!("--tune-mm-mlp-adapter (stage 1, projector only) and --full exclude each other");
    }
    let mut cfg = trainer_config(&args)?;
    if args.tune_mm_mlp_adapter && args.train.learning_rate.is_none() {
        // LLaVA's stage-1 learning rate.
        cfg.learning_rate = 1e-3;
    }
    cfg.packing = false;
    cfg.validate()?;
    let mode = if args.overwrite_output {
        StartMode::Overwrite
    } else if args.no_resume {
        StartMode::Fresh
    } else if args.resume_fallback {
        StartMode::ResumeFallback
    } else {
        StartMode::Resume
    };
    let stage = stage(&args)?;
    let mut identity = run_identity(&args, &cfg)?;
    identity.method = match &stage {
        LlavaStage::Projector => "llava-projector",
        LlavaStage::Lora(_) => "llava-lora",
        LlavaStage::LanguageModel => "llava-full",
    }
    .into();
    let folder = plan_run_folder(&args.output, &identity, mode)?;
    for w in folder.warnings() {
        eprintln!("warning: {w}");
    }
    cfg.resume = folder.resume();

    let plain_device = resolve(args.device)?;
    let device = plain_device.clone().autodiff();
    device.seed(cfg.seed);
    let loaded = load_llava(&args.model, &device, &LoadOptions::default())
        .with_context(|| format!("loading LLaVA model {}", args.model.display()))?;
    let tokenizer: &Tokenizer = loaded
        .tokenizer
        .as_ref()
        .with_context(|| format!("{}: no tokenizer.json", args.model.display()))?;
    let template = ChatTemplate::resolve(&args.template, tokenizer)
        .with_context(|| format!("--template {}", args.template))?;
    let processor = LlavaProcessor::from_dir(&args.model, tokenizer)
        .with_context(|| format!("{}: processor configuration", args.model.display()))?;
    let block_size = args
        .block_size
        .unwrap_or_else(|| default_block_size(tokenizer.model_max_length()))
        .min(loaded.model.language_model.max_position_embeddings().max(2));
    let text_encoder = SampleEncoder::new(
        tokenizer,
        Some(&template),
        TokenizeConfig {
            block_size,
            train_on_prompt: args.train_on_prompt,
            ..TokenizeConfig::default()
        },
    )?;
    let encoder = MultimodalEncoder::new(&text_encoder, &processor);
    let image_folder = args.image_folder.as_deref();
    let train = encode_dataset(&args.dataset, image_folder, &encoder)?;
    let eval = match &args.eval_dataset {
        Some(p) => Some(encode_dataset(p, image_folder, &encoder)?),
        None => None,
    };
    let images: usize = train.iter().map(|i| i.images.len()).sum();
    tracing::info!(
        "{} training records with {images} images, block size {block_size}",
        train.len()
    );
    let pad_id = tokenizer
        .pad_token_id()
        .or(tokenizer.eos_token_id())
        .unwrap_or(0);

    let mut model: LlavaModel = loaded.model;
    if let Some(path) = &args.pretrain_mm_mlp_adapter {
        model = load_projector(model, path, &device)
            .with_context(|| format!("--pretrain-mm-mlp-adapter {}", path.display()))?;
    }
    let (model, lora) = prepare_stage(model, &stage)?;
    let (trainable, total) = lmflow_peft::trainable::count_params(&model);
    eprintln!("trainable parameters: {trainable} of {total}");
    let weights: Box<dyn WeightsIo<LlavaModel>> = match (&stage, lora) {
        (LlavaStage::Projector, _) => Box::new(ProjectorWeights::new(
            device.clone(),
            Some(args.model.clone()),
        )),
        (LlavaStage::Lora(_), Some(lora)) => {
            Box::new(LoraWeights::new(lora, "default", device.clone()))
        }
        _ => Box::new(LlavaFullWeights::new(loaded.config.clone(), device.clone())),
    };
    let objective = LlavaSftObjective::new(pad_id, Some(processor.image_processor().clone()));

    folder.apply()?;
    let trainer = Trainer::new(cfg, device.clone(), pad_id)?.with_stop_flag(interrupt::install());
    let eval_before = match &eval {
        Some(e) => Some(trainer.evaluate_objective(&objective, &model, e)?.loss),
        None => None,
    };
    let bar = crate::progress::train_bar(args.quiet);
    let outcome = trainer.train_objective(
        model,
        weights.as_ref(),
        &objective,
        &train,
        eval.as_deref(),
        &mut |event| crate::progress::show(&bar, event),
    );
    let outcome = interrupt::exit_if_interrupted(outcome, &bar)?;
    bar.finish_and_clear();

    // Stage 1 and full runs: `final/` is also a complete model folder (transformers and
    // `lmflow generate` load it); LoRA runs keep the adapter alone.
    let final_dir = &outcome.final_dir;
    if !matches!(stage, LlavaStage::Lora(_)) {
        if matches!(stage, LlavaStage::Projector) {
            use burn::module::Module;
            outcome.model.valid().save(final_dir, &loaded.config)?;
        }
        copy_tokenizer_files(&args.model, final_dir)?;
        copy_processor_files(&args.model, final_dir)?;
    }
    let summary = serde_json::json!({
        "output": args.output,
        "final": final_dir,
        "method": identity.method,
        "steps": outcome.state.global_step,
        "train_records": train.len(),
        "train_images": images,
        "block_size": block_size,
        "train_loss": outcome.last_train_loss,
        "eval_loss_before": eval_before,
        "eval_loss_after": outcome.final_eval_loss,
        "metrics": args.output.join("metrics.jsonl"),
        "loss_curve": args.output.join("loss.png"),
    });
    println!("{summary}");
    Ok(())
}
