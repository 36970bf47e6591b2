//! Run folders that cannot mix: a run records what it is in `<output_dir>/run.json`, and a later
//! run into the same folder either continues exactly that run or starts afresh on purpose.
//!
//! [`plan_run_folder`] decides, before any work starts and without writing anything, what a new
//! run may do with an output folder:
//! - resuming ([`StartMode::Resume`]) is refused when the recorded identity differs in a
//!   setting that gives the checkpoints their meaning ([`RunIdentity::BINDING`]: method, rank,
//!   alpha, target modules, rsLoRA, model, optimizer), with a message naming each difference;
//!   other differences (the dataset) are warnings;
//! - starting afresh ([`StartMode::Fresh`]) into a folder holding checkpoints or `final/` is
//!   refused, since same-numbered checkpoints would be overwritten and higher-numbered ones
//!   resumed later;
//! - [`StartMode::Overwrite`] deletes the earlier run's files first (only the files a run
//!   writes: `checkpoint-<step>` folders, `final/`, `metrics.jsonl`, `loss.png`, `run.json` and
//!   their temporary siblings; nothing else in the folder is touched).
//!
//! Resuming also checks the newest complete checkpoint ([`verify_checkpoint`]): a damaged one
//! is an error naming it, unless [`StartMode::ResumeFallback`] asks to set it aside (renamed
//! `checkpoint-<step>.damaged`, never deleted) and resume from the newest good one.
//!
//! [`RunFolderPlan::apply`] then clears the folder when asked and writes `run.json` atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{latest_checkpoint, verify_checkpoint, write_atomic};
use crate::error::{Result, TrainError, io_err};

/// File name of the run identity inside the output folder.
pub const RUN_FILE: &str = "run.json";

/// Size and hash of a dataset's bytes: enough to tell that the data changed between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// Files read (one for a single file).
    pub files: usize,
    /// Total bytes.
    pub bytes: u64,
    /// 64-bit FNV-1a hash of the files' bytes in path order, as 16 hex digits.
    pub fnv1a64: String,
}

impl DataFingerprint {
    /// Fingerprint of a file, or of every regular file under a folder (recursively, in path
    /// order; hidden files skipped).
    pub fn of_path(path: &Path) -> Result<Self> {
        let mut files = Vec::new();
        collect_files(path, &mut files)?;
        files.sort();
        let mut hash = FNV_OFFSET;
        let mut bytes = 0u64;
        for file in &files {
            let data = std::fs::read(file).map_err(io_err(file))?;
            bytes += data.len() as u64;
            hash = fnv1a(hash, &data);
        }
        Ok(Self {
            files: files.len(),
            bytes,
            fnv1a64: format!("{hash:016x}"),
        })
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, data: &[u8]) -> u64 {
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io_err(path))? {
            let entry = entry.map_err(io_err(path))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            collect_files(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// What a training run is: the settings that give its checkpoints their meaning, and the data
/// it trains on. Written to `<output_dir>/run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunIdentity {
    /// `lora`, `dora`, `qlora`, `full` or `lisa`.
    pub method: String,
    /// Adapter rank (adapter methods only).
    pub rank: Option<usize>,
    /// Adapter alpha (adapter methods only).
    pub alpha: Option<f64>,
    /// Adapted modules as given, e.g. `all-linear` or `q_proj,v_proj` (adapter methods only).
    pub target_modules: Option<String>,
    /// Whether the adapter scales by `alpha / sqrt(r)` (rsLoRA).
    pub use_rslora: bool,
    /// LISA: decoder layers trained at a time.
    pub lisa_layers: Option<usize>,
    /// The base model folder (canonical path).
    pub model: String,
    /// Optimizer registry name (`adamw` by default).
    pub optimizer: String,
    /// Fingerprint of the training data.
    pub dataset: Option<DataFingerprint>,
    /// The run's `--seed` (every random draw derives from it; a resume with another seed is
    /// reported, not refused).
    pub seed: Option<u64>,
    /// Data-parallel ranks (1 for one process; a `run.json` without it is a one-process run).
    /// The data order and the global batch depend on it, so a resume with another world size
    /// is refused.
    pub world_size: usize,
    /// Float dtype of the model weights (`f32`, `bf16` or `f16`; a `run.json` without it is an
    /// `f32` run). Checkpointed full weights are stored in it and the numerics depend on it, so
    /// a resume in another dtype is refused.
    pub dtype: String,
}

impl Default for RunIdentity {
    fn default() -> Self {
        Self {
            method: String::new(),
            rank: None,
            alpha: None,
            target_modules: None,
            use_rslora: false,
            lisa_layers: None,
            model: String::new(),
            optimizer: "adamw".into(),
            dataset: None,
            seed: None,
            world_size: 1,
            dtype: "f32".into(),
        }
    }
}

impl RunIdentity {
    /// Fields whose change makes a checkpoint mean something else: resuming with a different
    /// value is refused.
    pub const BINDING: &'static [&'static str] = &[
        "method",
        "rank",
        "alpha",
        "target_modules",
        "use_rslora",
        "model",
        "optimizer",
        "world_size",
        "dtype",
    ];

    /// Reads `<dir>/run.json`, `None` when the folder has none.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(RUN_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| TrainError::Json { path, source })
    }

    /// Writes `<dir>/run.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(RUN_FILE);
        let text = serde_json::to_vec_pretty(self).map_err(|source| TrainError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &text)
    }

    /// Differences between the recorded identity `self` and `other`, as `(field, recorded,
    /// requested)` with JSON-rendered values, binding fields first.
    pub fn differences(&self, other: &Self) -> (Vec<Difference>, Vec<Difference>) {
        let as_map = |v: &Self| match serde_json::to_value(v) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (a, b) = (as_map(self), as_map(other));
        let (mut binding, mut other_diffs) = (Vec::new(), Vec::new());
        for (key, va) in &a {
            let vb = b.get(key).cloned().unwrap_or(serde_json::Value::Null);
            if *va == vb {
                continue;
            }
            let d = Difference {
                field: key.clone(),
                recorded: render(va),
                requested: render(&vb),
            };
            if Self::BINDING.contains(&key.as_str()) {
                binding.push(d);
            } else {
                other_diffs.push(d);
            }
        }
        (binding, other_diffs)
    }
}

fn render(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One setting that differs between the recorded run and the requested one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The `run.json` field.
    pub field: String,
    /// Its recorded value.
    pub recorded: String,
    /// The value of the requested run.
    pub requested: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} in the folder's run, {} now",
            self.field, self.recorded, self.requested
        )
    }
}

/// How a run wants to use its output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// Continue from the newest checkpoint when there is one (the default); refused when that
    /// checkpoint is damaged.
    Resume,
    /// Like [`StartMode::Resume`], but a damaged newest checkpoint is set aside (renamed
    /// `checkpoint-<step>.damaged`) and the run continues from the newest good one.
    ResumeFallback,
    /// Start afresh; refused when the folder holds an earlier run's checkpoints or `final/`.
    Fresh,
    /// Start afresh after deleting the earlier run's files.
    Overwrite,
}

/// What [`plan_run_folder`] decided.
#[derive(Debug, Clone)]
pub struct RunFolderPlan {
    dir: PathBuf,
    identity: RunIdentity,
    resume: bool,
    clear: bool,
    warnings: Vec<String>,
    /// Damaged checkpoints to rename `<name>.damaged` before resuming.
    set_aside: Vec<PathBuf>,
}

impl RunFolderPlan {
    /// Whether the trainer should resume from the newest checkpoint.
    pub fn resume(&self) -> bool {
        self.resume
    }

    /// Whether [`RunFolderPlan::apply`] deletes an earlier run's files.
    pub fn clears(&self) -> bool {
        self.clear
    }

    /// Things the user should know (e.g. the dataset changed since the checkpoint).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Creates the folder, deletes the earlier run's files when the plan says so, and records
    /// the identity in `run.json` (atomically).
    pub fn apply(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        if self.clear {
            for path in run_files(&self.dir)? {
                let result = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                result.map_err(io_err(&path))?;
            }
        }
        for path in &self.set_aside {
            let mut aside = path.clone().into_os_string();
            aside.push(".damaged");
            let aside = PathBuf::from(aside);
            if aside.exists() {
                std::fs::remove_dir_all(&aside).map_err(io_err(&aside))?;
            }
            std::fs::rename(path, &aside).map_err(io_err(path))?;
        }
        self.identity.save(&self.dir)
    }
}

/// Whether `name` is a file or folder a training run writes into its output folder.
fn is_run_file(name: &str) -> bool {
    let numbered = |rest: &str| {
        let digits = rest
            .strip_suffix(".old")
            .or_else(|| rest.strip_suffix(".tmp"))
            .or_else(|| rest.strip_suffix(".damaged"))
            .unwrap_or(rest);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    matches!(
        name,
        "final" | "final.old" | ".final.tmp" | "metrics.jsonl" | "loss.png" | RUN_FILE
    ) || name.strip_prefix("checkpoint-").is_some_and(numbered)
        || name.strip_prefix(".checkpoint-").is_some_and(numbered)
        || name.starts_with(".metrics.jsonl.tmp-")
        || name.starts_with(".run.json.tmp-")
}

/// The files and folders of a training run under `dir`, sorted.
fn run_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if !dir.is_dir() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if is_run_file(&entry.file_name().to_string_lossy()) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// `checkpoint-<step>` folders under `dir`, by step.
fn checkpoint_dirs(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Decides what a run with `identity` may do with output folder `dir` in `mode`, without
/// writing anything. See the [module documentation](self).
///
/// # Errors
/// [`TrainError::RunFolder`] when resuming would mix two runs, or starting afresh would
/// overwrite an earlier run without [`StartMode::Overwrite`]; [`TrainError::Json`] for a
/// damaged `run.json` (unless overwriting).
pub fn plan_run_folder(
    dir: &Path,
    identity: &RunIdentity,
    mode: StartMode,
) -> Result<RunFolderPlan> {
    let mut plan = RunFolderPlan {
        dir: dir.to_path_buf(),
        identity: identity.clone(),
        resume: false,
        clear: false,
        warnings: Vec::new(),
        set_aside: Vec::new(),
    };
    let refuse = |message: String| TrainError::RunFolder {
        dir: dir.to_path_buf(),
        message,
    };
    if mode == StartMode::Overwrite {
        plan.clear = true;
        return Ok(plan);
    }
    // A `checkpoint-<step>` that is not a folder would be replaced by the run's own.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let numbered = name
                .strip_prefix("checkpoint-")
                .is_some_and(|n| n.parse::<usize>().is_ok());
            if numbered && !e.path().is_dir() {
                return Err(refuse(format!(
                    "{name} is not a checkpoint folder; move it away, or pass \
                     --overwrite-output to delete the earlier run"
                )));
            }
        }
    }
    let checkpoints = checkpoint_dirs(dir);
    let has_final = dir.join("final").exists();
    let earlier = {
        let mut names: Vec<String> = checkpoints
            .iter()
            .map(|(s, _)| format!("checkpoint-{s}"))
            .collect();
        if has_final {
            names.push("final/".into());
        }
        names
    };
    let recorded = RunIdentity::load(dir).map_err(|e| {
        refuse(format!(
            "{e}; pass --overwrite-output to delete the earlier run and start afresh"
        ))
    })?;
    if mode == StartMode::Fresh {
        if !earlier.is_empty() {
            return Err(refuse(format!(
                "holds an earlier run ({}); starting afresh here would overwrite some of its \
                 checkpoints and leave the others to be resumed later. Pass --overwrite-output \
                 to delete them first, drop --no-resume to continue that run, or choose \
                 another --output",
                earlier.join(", ")
            )));
        }
        // Leftovers without checkpoints (metrics of a run killed before its first save).
        plan.clear = true;
        return Ok(plan);
    }

    let resumable = latest_checkpoint(dir);
    match &recorded {
        Some(recorded) => {
            let (binding, other) = recorded.differences(identity);
            if !binding.is_empty() && !earlier.is_empty() {
                let list: Vec<String> = binding.iter().map(|d| format!("  {d}")).collect();
                return Err(refuse(format!(
                    "holds a run with other settings ({}); continuing it with these would mix \
                     two runs:\n{}\nUse the same settings, another --output, or \
                     --overwrite-output to delete the earlier run and start afresh",
                    earlier.join(", "),
                    list.join("\n")
                )));
            }
            if resumable.is_some() {
                for d in other {
                    plan.warnings.push(format!(
                        "resuming with a different {}: {} in the folder's run, {} now",
                        d.field, d.recorded, d.requested
                    ));
                }
            }
        }
        None => {
            if resumable.is_some() {
                plan.warnings.push(format!(
                    "{}: no {RUN_FILE} (written by an older lmflow): cannot check that its \
                     checkpoints match these settings",
                    dir.display()
                ));
            } else if !earlier.is_empty() {
                return Err(refuse(format!(
                    "holds an earlier run ({}) with no checkpoint to resume and no {RUN_FILE}; \
                     pass --overwrite-output to delete it, or choose another --output",
                    earlier.join(", ")
                )));
            }
        }
    }
    if let Some(newest) = &resumable
        && let Err(damage) = verify_checkpoint(newest)
    {
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        // Older complete checkpoints, newest first, and the first one that verifies.
        let mut older: Vec<&(usize, PathBuf)> = checkpoints
            .iter()
            .filter(|(_, p)| p != newest && p.join(crate::checkpoint::TrainerState::FILE).is_file())
            .collect();
        older.reverse();
        if mode != StartMode::ResumeFallback {
            let hint = match older.first() {
                Some((_, p)) => format!(
                    "pass --resume-fallback to set it aside and resume from the previous \
                     checkpoint ({}), ",
                    name(p)
                ),
                None => String::new(),
            };
            return Err(refuse(format!(
                "its newest checkpoint {} is damaged: {damage}; {hint}or pass \
                 --overwrite-output to start afresh",
                name(newest)
            )));
        }
        plan.warnings.push(format!(
            "{} is damaged ({damage}); --resume-fallback: it is renamed {}.damaged",
            name(newest),
            name(newest)
        ));
        plan.set_aside.push(newest.clone());
        let mut good = None;
        for (_, p) in older {
            match verify_checkpoint(p) {
                Ok(()) => {
                    good = Some(p.clone());
                    break;
                }
                Err(e) => {
                    plan.warnings.push(format!(
                        "{} is damaged too ({e}); it is renamed {}.damaged",
                        name(p),
                        name(p)
                    ));
                    plan.set_aside.push(p.clone());
                }
            }
        }
        match good {
            Some(p) => plan.warnings.push(format!("resuming from {}", name(&p))),
            None => {
                return Err(refuse(format!(
                    "no checkpoint is intact (the newest, {}, is damaged: {damage}); pass \
                     --overwrite-output to start afresh",
                    name(newest)
                )));
            }
        }
    }
    plan.resume = resumable.is_some();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(rank: usize) -> RunIdentity {
        RunIdentity {
            method: "lora".into(),
            rank: Some(rank),
            alpha: Some(16.0),
            target_modules: Some("all-linear".into()),
            model: "/models/tiny".into(),
            ..RunIdentity::default()
        }
    }

    /// A checkpoint folder that passes `verify_checkpoint`: trainer state and one finite
    /// weights file.
    fn fake_checkpoint(dir: &Path, step: usize) {
        let checkpoint = dir.join(format!("checkpoint-{step}"));
        crate::TrainerState {
            global_step: step,
            ..Default::default()
        }
        .save(&checkpoint)
        .unwrap();
        std::fs::create_dir_all(checkpoint.join("weights")).unwrap();
        let data = burn::tensor::TensorData::new(vec![1.0f32, 2.0], [2]);
        lmflow_models::save_safetensors(
            &checkpoint.join("weights/adapter_model.safetensors"),
            &[("a".to_string(), data)],
        )
        .unwrap();
    }

    #[test]
    fn resuming_with_another_rank_is_refused_naming_the_rank() {
        let dir = tempfile::tempdir().unwrap();
        plan_run_folder(dir.path(), &identity(8), StartMode::Resume)
            .unwrap()
            .apply()
            .unwrap();
        fake_checkpoint(dir.path(), 10);
        let err = plan_run_folder(dir.path(), &identity(4), StartMode::Resume)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rank: 8 in the folder's run, 4 now"), "{err}");
        let same = plan_run_folder(dir.path(), &identity(8), StartMode::Resume).unwrap();
        assert!(same.resume());
        assert!(same.warnings().is_empty());
    }

    #[test]
    fn fresh_start_over_checkpoints_needs_overwrite_which_clears_only_run_files() {
        let dir = tempfile::tempdir().unwrap();
        fake_checkpoint(dir.path(), 10);
        fake_checkpoint(dir.path(), 20);
        std::fs::create_dir_all(dir.path().join("final")).unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), "{}\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        std::fs::create_dir_all(dir.path().join("checkpoint-notes")).unwrap();
        let err = plan_run_folder(dir.path(), &identity(8), StartMode::Fresh)
            .unwrap_err()
            .to_string();
        assert!(err.contains("checkpoint-20") && err.contains("--overwrite-output"));
        let plan = plan_run_folder(dir.path(), &identity(8), StartMode::Overwrite).unwrap();
        assert!(!plan.resume());
        plan.apply().unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["checkpoint-notes", "notes.txt", "run.json"]);
    }

    #[test]
    fn a_changed_dataset_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.json");
        std::fs::write(&data, "[1]").unwrap();
        let out = dir.path().join("out");
        let mut a = identity(8);
        a.dataset = Some(DataFingerprint::of_path(&data).unwrap());
        plan_run_folder(&out, &a, StartMode::Resume)
            .unwrap()
            .apply()
            .unwrap();
        fake_checkpoint(&out, 5);
        std::fs::write(&data, "[2]").unwrap();
        let mut b = a.clone();
        b.dataset = Some(DataFingerprint::of_path(&data).unwrap());
        assert_ne!(a.dataset, b.dataset);
        let plan = plan_run_folder(&out, &b, StartMode::Resume).unwrap();
        assert!(plan.resume());
        assert_eq!(plan.warnings().len(), 1, "{:?}", plan.warnings());
        assert!(plan.warnings()[0].contains("dataset"));
    }

    #[test]
    fn a_folder_without_run_json_resumes_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        fake_checkpoint(dir.path(), 3);
        let plan = plan_run_folder(dir.path(), &identity(8), StartMode::Resume).unwrap();
        assert!(plan.resume());
        assert_eq!(plan.warnings().len(), 1);
    }
}
