//! `lmflow data inspect` / `lmflow data stats`: see what the model will be trained on.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use lmflow_datasets::inspect::{render_sample, render_stats};
use lmflow_datasets::{DatasetType, InspectOptions, TokenizeConfig, inspect, stats};
use lmflow_models::Tokenizer;

/// Arguments of `lmflow data`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
enum DataCommand {
    /// Show rendered samples with trained tokens highlighted (or as JSON with --json).
    Inspect(Common),
    /// Counts, token-length percentiles, truncated and masked fractions.
    Stats(Common),
}

/// Options shared by both subcommands.
#[derive(clap::Args, Debug)]
struct Common {
    /// Dataset: an LMFlow JSON file, a folder of them, or JSON Lines.
    #[arg(long)]
    dataset: PathBuf,
    /// Folder with tokenizer.json (+ tokenizer_config.json), usually the model folder.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Chat template: `tokenizer` (the tokenizer's own) or a preset name (chatml, llama3, ...).
    #[arg(long)]
    template: Option<String>,
    /// At most this many instances.
    #[arg(long)]
    limit: Option<usize>,
    /// Maximum tokens per sample.
    #[arg(long, default_value_t = 1024)]
    block_size: usize,
    /// Train on prompt tokens too.
    #[arg(long)]
    train_on_prompt: bool,
    /// Type of JSON Lines files without a header line (e.g. `conversation`).
    #[arg(long)]
    r#type: Option<String>,
    /// Machine-readable output (inspect: one JSON object per sample; stats: one object).
    #[arg(long)]
    json: bool,
}

impl Common {
    fn options(&self) -> anyhow::Result<InspectOptions> {
        let dataset_type = match &self.r#type {
            Some(t) => Some(
                serde_json::from_value::<DatasetType>(serde_json::Value::String(t.clone()))
                    .with_context(|| format!("unknown --type `{t}`"))?,
            ),
            None => None,
        };
        Ok(InspectOptions {
            template: self.template.clone(),
            limit: self.limit,
            dataset_type,
            tokenize: TokenizeConfig {
                block_size: self.block_size,
                train_on_prompt: self.train_on_prompt,
                ..TokenizeConfig::default()
            },
        })
    }
}

/// Runs `lmflow data`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Inspect(c) => {
            let tokenizer = Tokenizer::from_dir(&c.tokenizer)?;
            let samples = inspect(&c.dataset, &tokenizer, &c.options()?)?;
            let color = std::io::stdout().is_terminal();
            for s in &samples {
                if c.json {
                    println!("{}", serde_json::to_string(s)?);
                } else {
                    println!("{}", render_sample(s, &tokenizer, color)?);
                }
            }
        }
        DataCommand::Stats(c) => {
            let tokenizer = Tokenizer::from_dir(&c.tokenizer)?;
            let s = stats(&c.dataset, &tokenizer, &c.options()?)?;
            if c.json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                print!("{}", render_stats(&s));
            }
        }
    }
    Ok(())
}
