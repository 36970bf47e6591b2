//! `lmflow`: the LMFlow-rs command-line interface.
//!
//! Each subcommand lives in its own module exposing `Args` (clap) and `run`.

use clap::{Parser, Subcommand};

mod device;

/// LMFlow-rs: fine-tune, align and run large language models.
#[derive(Parser, Debug)]
#[command(name = "lmflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    // Subcommands are added here, one module each:
    //   Eval(eval::Args)        -> crates/lmflow-cli/src/eval.rs
    //   Data(data::Args)        -> crates/lmflow-cli/src/data.rs
    //   Generate / Chat         -> crates/lmflow-cli/src/generate.rs, chat.rs
    //   Merge(merge::Args)      -> crates/lmflow-cli/src/merge.rs
    /// Print the compute devices this build supports.
    Devices,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
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
