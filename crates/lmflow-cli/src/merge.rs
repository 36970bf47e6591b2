//! `lmflow merge`: fold a LoRA / DoRA adapter (PEFT format) into its base model and write a
//! full Hub-layout model folder (PEFT's `merge_and_unload` + `save_pretrained`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lmflow_models::{LoadOptions, load_pretrained};

use crate::device::{DeviceKind, resolve};
use crate::dtype::Dtype;

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
    /// Dtype the base model is loaded in, merged in and written as (config.json records it).
    /// As PEFT, the adapter's update `B A` is computed in the adapter's dtype (f32) and added
    /// to the weight in this dtype.
    #[arg(long, value_enum, default_value_t)]
    pub dtype: Dtype,
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
    check_output_folder(
        &args.out,
        &[("--model", &model_dir), ("--adapter", &args.adapter)],
    )?;
    let options = LoadOptions {
        dtype: Some(args.dtype.float()),
        ..LoadOptions::default()
    };
    let mut pretrained = load_pretrained(&model_dir, &device, &options)
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

/// Refuses an output folder that exists and is not empty, or that is, contains or lies inside
/// one of the `inputs` (compared as canonical paths, so links and `..` do not hide it): a merge
/// never writes over a model folder or into its own inputs.
pub fn check_output_folder(out: &Path, inputs: &[(&str, &Path)]) -> anyhow::Result<()> {
    let out_abs = canonical_lenient(out);
    for (flag, input) in inputs {
        let input_abs = canonical_lenient(input);
        if out_abs == input_abs {
            bail!(
                "--out {} is the {flag} folder: writing there would overwrite the input; choose a new folder",
                out.display()
            );
        }
        if out_abs.starts_with(&input_abs) {
            bail!(
                "--out {} lies inside the {flag} folder {}; choose a folder outside it",
                out.display(),
                input.display()
            );
        }
        if input_abs.starts_with(&out_abs) {
            bail!(
                "--out {} contains the {flag} folder {}; choose a new folder",
                out.display(),
                input.display()
            );
        }
    }
    if out.exists() {
        let mut entries = std::fs::read_dir(out).with_context(|| {
            format!(
                "--out {} exists and is not a readable folder",
                out.display()
            )
        })?;
        if entries.next().is_some() {
            bail!(
                "--out {} exists and is not empty; refusing to write a model over it (delete it or choose a new folder)",
                out.display()
            );
        }
    }
    Ok(())
}

/// The canonical form of `path`; for a path that does not exist yet, its nearest existing
/// ancestor canonicalised with the remaining components appended.
fn canonical_lenient(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut rest = Vec::new();
    let mut cur = absolute.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(cur) {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (cur.file_name(), cur.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return absolute,
        }
    }
}
