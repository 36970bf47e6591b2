//! `lmflow merge`: fold a LoRA / DoRA adapter (PEFT format) into its base model and write a
//! full Hub-layout model folder (PEFT's `merge_and_unload` + `save_pretrained`).

use std::path::PathBuf;

use anyhow::Context;
use lmflow_models::{LoadOptions, load_pretrained};

use crate::device::{DeviceKind, resolve};

/// Arguments of `lmflow merge`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base model folder (config.json + safetensors). Default: the adapter's
    /// `base_model_name_or_path` (relative paths resolved against the adapter folder).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output folder for the merged model (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    pub out: PathBuf,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
}

/// Runs `lmflow merge`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = resolve(args.device)?;
    let model_dir = match args.model {
        Some(m) => m,
        None => {
            let cfg = lmflow_peft::LoraConfig::from_file(
                &args.adapter.join(lmflow_peft::io::CONFIG_FILE),
            )?;
            lmflow_peft::io::base_model_dir(&args.adapter, &cfg)
                .context("the adapter config has no base_model_name_or_path; pass --model")?
        }
    };
    let mut pretrained = load_pretrained(&model_dir, &device, &LoadOptions::default())
        .with_context(|| format!("loading base model {}", model_dir.display()))?;
    let name = "default";
    lmflow_peft::load_adapter(&mut pretrained.model, &args.adapter, name, &device)
        .with_context(|| format!("loading adapter {}", args.adapter.display()))?;
    lmflow_peft::merge_and_unload(&mut pretrained.model, name)?;
    pretrained
        .save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "merged {} into {} -> {}",
        args.adapter.display(),
        model_dir.display(),
        args.out.display()
    );
    Ok(())
}
