//! `lmflow`: the LMFlow-rs command-line interface.
//!
//! Each subcommand lives in its own module exposing `Args` (clap) and `run`.

use clap::{Parser, Subcommand};

mod align;
mod align_dpo;
mod align_iterative_dpo;
mod align_raft;
mod bench;
mod chat;
mod data;
mod device;
mod dtype;
mod eval;
mod eval_accuracy;
mod finetune;
mod generate;
mod init;
mod merge;
mod progress;
mod reward;
mod serve;
mod tokenizer;
mod train_flags;

/// LMFlow-rs: fine-tune, align and run large language models.
#[derive(Parser, Debug)]
#[command(name = "lmflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect a dataset as the model will see it, or print its statistics.
    Data(data::Args),
    /// Fine-tune a model (LoRA by default) on an LMFlow dataset.
    Finetune(finetune::Args),
    /// Negative log-likelihood / perplexity of a model on a text_only dataset.
    Eval(eval::Args),
    /// Generate continuations of prompts (batched, streaming, speculative with --draft-model).
    Generate(generate::Args),
    /// Chat interactively with a model using its chat template.
    Chat(chat::Args),
    /// Write a randomly initialised model folder from a config.json and a tokenizer (to
    /// pretrain from scratch with `finetune --full`).
    Init(init::Args),
    /// Merge a LoRA/DoRA adapter into its base model and write a full model folder.
    Merge(merge::Args),
    /// Benchmark training or decoding throughput (one JSON line; see bench/compare.sh).
    Bench(bench::Args),
    /// Train a byte-level BPE tokenizer, or extend a model's vocabulary.
    Tokenizer(tokenizer::Args),
    /// Serve the model over an OpenAI-compatible HTTP API (continuous batching, LoRA adapters).
    Serve(serve::Args),
    /// Train a reward model on preference data, or score a dataset with one.
    Reward(reward::Args),
    /// Align a model with preference data: `lmflow align dpo ...`.
    Align(align::Args),
    /// Print the compute devices this build supports.
    Devices,
}

/// Keeps freed tensor memory in the process instead of returning it to the kernel.
///
/// Training allocates and frees the same large buffers (activations, logits, gradients) every
/// step. glibc serves allocations above its mmap threshold with fresh `mmap`s and unmaps them on
/// free, so each step page-faults and zero-fills hundreds of megabytes again (about a quarter of
/// a CPU training step on the `cpu-small` benchmark). Serving them from the heap and never
/// trimming it makes later steps reuse the same pages. See docs/performance.md.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: `mallopt` only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> std::process::ExitCode {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(args) => data::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Init(args) => init::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Tokenizer(args) => tokenizer::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Reward(args) => reward::run(args),
        Command::Align(args) => align::run(args),
        Command::Devices => device::print_devices(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
