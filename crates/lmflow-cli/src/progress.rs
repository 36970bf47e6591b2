//! The training progress bar shared by `finetune` (text and LLaVA): steps, loss, learning rate,
//! tokens per second and ETA, with resume, eval and checkpoint lines.

use indicatif::{ProgressBar, ProgressStyle};
use lmflow_train::TrainEvent;

/// A progress bar for a training run; hidden when `hidden` (e.g. `--quiet` or a non-root rank).
pub fn train_bar(hidden: bool) -> ProgressBar {
    let bar = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Shows one trainer event on `bar`.
pub fn show(bar: &ProgressBar, event: TrainEvent) {
    match event {
        TrainEvent::Started {
            total_steps,
            start_step,
            resumed_from,
        } => {
            bar.set_length(total_steps as u64);
            bar.set_position(start_step as u64);
            if let Some(p) = resumed_from {
                bar.println(format!("resuming from {}", p.display()));
            }
        }
        TrainEvent::Step {
            step,
            loss,
            lr,
            tokens_per_second,
        } => {
            bar.set_position(step as u64);
            bar.set_message(format!(
                "loss {loss:.4}  lr {lr:.2e}  {tokens_per_second:.0} tok/s"
            ));
        }
        TrainEvent::Logged(r) => {
            if let Some(e) = r.eval_loss {
                bar.println(format!("step {}: eval loss {e:.4}", r.step));
            }
        }
        TrainEvent::Saved { path } => tracing::info!("checkpoint {}", path.display()),
    }
}
