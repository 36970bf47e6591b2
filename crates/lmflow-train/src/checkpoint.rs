//! Atomic file writes and the resumable trainer state.
//!
//! Every checkpoint file is written to a temporary file in the same folder and renamed over the
//! target, so a run killed mid-write leaves the previous checkpoint intact.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError, io_err};

/// Writes `bytes` to `path` atomically (temporary file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".to_string());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

/// Replaces folder `dst` by folder `staging` (built completely beforehand): `dst` is renamed
/// away first, then `staging` takes its name, then the old one is removed. A reader never sees
/// a half-written checkpoint folder under `dst`.
pub fn replace_dir_atomic(staging: &Path, dst: &Path) -> Result<()> {
    let old = dst.with_extension("old");
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    if dst.exists() {
        std::fs::rename(dst, &old).map_err(io_err(dst))?;
    }
    std::fs::rename(staging, dst).map_err(io_err(staging))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(())
}

/// Where a run stands: enough to resume it exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub global_step: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// Micro-batches already consumed in the current epoch.
    pub batch_in_epoch: usize,
    /// Trained tokens seen so far.
    pub tokens_seen: u64,
    /// Best evaluation loss so far, if any evaluation ran.
    pub best_eval_loss: Option<f64>,
}

impl TrainerState {
    /// File name of the state inside a checkpoint folder.
    pub const FILE: &'static str = "trainer_state.json";

    /// Reads the state of a checkpoint folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_json::from_str(&text).map_err(|source| TrainError::Json { path, source })
    }

    /// Writes the state into a checkpoint folder, atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(Self::FILE);
        let text = serde_json::to_vec_pretty(self).map_err(|source| TrainError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &text)
    }
}

/// The newest complete checkpoint under `output_dir` (`checkpoint-<step>` folders with a
/// trainer state), if any.
pub fn latest_checkpoint(output_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(output_dir).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
            let path = e.path();
            path.join(TrainerState::FILE)
                .is_file()
                .then_some((step, path))
        })
        .max_by_key(|(step, _)| *step)
        .map(|(_, p)| p)
}

/// Checks that checkpoint folder `dir` can be resumed from, without loading a model: its
/// `trainer_state.json` parses and names the step of the folder (`checkpoint-<step>`), its
/// `weights/` folder holds safetensors files whose headers match their sizes and whose float
/// tensors are all finite. Returns what is wrong, in words.
pub fn verify_checkpoint(dir: &Path) -> std::result::Result<(), String> {
    let state = TrainerState::load(dir).map_err(|e| e.to_string())?;
    let named = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("checkpoint-"))
        .and_then(|n| n.parse::<usize>().ok());
    if let Some(step) = named
        && step != state.global_step
    {
        return Err(format!(
            "{}: global_step is {}, but the folder is the checkpoint of step {step}",
            dir.join(TrainerState::FILE).display(),
            state.global_step
        ));
    }
    let weights = dir.join("weights");
    let entries = std::fs::read_dir(&weights)
        .map_err(|e| format!("{}: cannot read the weights folder: {e}", weights.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no safetensors file", weights.display()));
    }
    for file in files {
        lmflow_models::weights::check_safetensors_file(&file).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes LISA's state (both optimizers and the sampled layer sets, see
/// [`Lisa::save_state`](lmflow_peft::lisa::Lisa::save_state)) into checkpoint folder `dir`.
pub fn save_lisa(lisa: &lmflow_peft::lisa::Lisa, dir: &Path) -> Result<()> {
    lisa.save_state(dir)?;
    Ok(())
}

/// Restores LISA's state from checkpoint folder `dir` at optimizer step `step`: the active
/// layers (made trainable in `model`), the sampler and both optimizers' state, so the run
/// continues exactly. A checkpoint written before LISA's state was saved resumes with fresh
/// LISA optimizers and a new layer draw (with a warning).
pub fn resume_lisa<M: burn::module::Module>(
    lisa: &mut lmflow_peft::lisa::Lisa,
    model: M,
    dir: &Path,
    step: usize,
) -> Result<M> {
    if lmflow_peft::lisa::Lisa::has_state(dir) {
        return Ok(lisa.load_state(model, dir)?);
    }
    tracing::warn!(
        "{}: no LISA state; resuming with fresh LISA optimizers (their moments restart from zero)",
        dir.display()
    );
    lisa.resume_at(step);
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn verify_checkpoint_names_what_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("checkpoint-3");
        TrainerState {
            global_step: 3,
            ..Default::default()
        }
        .save(&c)
        .unwrap();
        let err = verify_checkpoint(&c).unwrap_err();
        assert!(err.contains("weights"), "{err}");
        std::fs::create_dir_all(c.join("weights")).unwrap();
        let data = burn::tensor::TensorData::new(vec![1.0f32, 2.0], [2]);
        lmflow_models::save_safetensors(
            &c.join("weights/adapter_model.safetensors"),
            &[("a".to_string(), data)],
        )
        .unwrap();
        verify_checkpoint(&c).unwrap();
        let nan = burn::tensor::TensorData::new(vec![1.0f32, f32::NAN], [2]);
        lmflow_models::save_safetensors(
            &c.join("weights/adapter_model.safetensors"),
            &[("a".to_string(), nan)],
        )
        .unwrap();
        let err = verify_checkpoint(&c).unwrap_err();
        assert!(err.contains("tensor `a` holds NaN"), "{err}");
        TrainerState {
            global_step: 7,
            ..Default::default()
        }
        .save(&c)
        .unwrap();
        let err = verify_checkpoint(&c).unwrap_err();
        assert!(err.contains("global_step is 7"), "{err}");
    }

    #[test]
    fn latest_checkpoint_ignores_incomplete_folders() {
        let dir = tempfile::tempdir().unwrap();
        for step in [5, 10] {
            let c = dir.path().join(format!("checkpoint-{step}"));
            TrainerState {
                global_step: step,
                ..Default::default()
            }
            .save(&c)
            .unwrap();
        }
        std::fs::create_dir_all(dir.path().join("checkpoint-15")).unwrap();
        let latest = latest_checkpoint(dir.path()).unwrap();
        assert!(latest.ends_with("checkpoint-10"));
        assert_eq!(TrainerState::load(&latest).unwrap().global_step, 10);
    }
}
