//! `lmflow align`: alignment algorithms over the shared training loop (DPO, ...).

/// Arguments of `lmflow align`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: AlignCommand,
}

/// The alignment algorithms.
#[derive(clap::Subcommand, Debug)]
enum AlignCommand {
    /// Direct Preference Optimization on paired_conversation / paired_text_to_text data
    /// (LoRA by default; reference log-probabilities precomputed in one pass).
    Dpo(crate::align_dpo::Args),
    /// RAFT: sample K responses per prompt, keep the best by reward, fine-tune on them; repeat
    /// (LMFlow's reward-ranked fine-tuning).
    Raft(crate::align_raft::Args),
    /// Iterative DPO: sample K responses per prompt, score, pair (max_min, max_random,
    /// random), run DPO from the previous iteration's model; repeat.
    IterativeDpo(crate::align_iterative_dpo::Args),
}

/// Runs `lmflow align`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        AlignCommand::Dpo(a) => crate::align_dpo::run(a),
        AlignCommand::Raft(a) => crate::align_raft::run(a),
        AlignCommand::IterativeDpo(a) => crate::align_iterative_dpo::run(a),
    }
}
