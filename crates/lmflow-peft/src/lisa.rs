//! LISA — Layerwise Importance Sampled AdamW (LMFlow's method).
//!
//! Every `interval_steps` optimizer steps all decoder layers are frozen and `n_layers` of them,
//! drawn uniformly without replacement, are unfrozen; parameters outside the decoder layers
//! (embeddings, final norm, output head) always train.
//!
//! Unlike LMFlow's implementation, the optimizer state of the decoder layers is kept in a
//! separate optimizer that is rebuilt at every switch, so the state of layers switched off is
//! freed and optimizer memory is bounded by the always-trained parameters plus `n_layers`
//! layers. (A layer drawn again starts with fresh moments.)
//!
//! The trainer calls [`Lisa::on_step_begin`] before the forward pass (it returns the model
//! with the new trainable set) and [`Lisa::optimizer_step`] instead of the optimizer's `step`.
//! Checkpoints keep both optimizers' state and the sampler's history
//! ([`Lisa::save_state`], [`Lisa::load_state`]), so a resumed run continues exactly.

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::{Module, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::tensor::Gradients;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::PeftError;
use crate::trainable::{float_params, set_trainable_by_path};

/// LISA settings (LMFlow's `--lisa_activated_layers`, `--lisa_interval_steps`).
#[derive(burn::config::Config, Debug)]
pub struct LisaConfig {
    /// Decoder layers trained at a time.
    pub n_layers: usize,
    /// Optimizer steps between re-sampling.
    #[config(default = 20)]
    pub interval_steps: usize,
    /// Seed of the layer sampling.
    #[config(default = 42)]
    pub seed: u64,
    /// Regex over Burn parameter paths whose first capture group is the decoder-layer index
    /// (matches `layers.3.` of LLaMA/OPT and `blocks.3.` of GPT-2 in `lmflow-models`).
    #[config(default = "r\"(?:^|\\.)(?:layers|h|blocks)\\.(\\d+)(?:\\.|$)\".to_string()")]
    pub layer_pattern: String,
}

/// File of [`Lisa::save_state`]: the always-trained parameters' optimizer state.
pub const LISA_FIXED_FILE: &str = "lisa_fixed.bpk";
/// File of [`Lisa::save_state`]: the active decoder layers' optimizer state.
pub const LISA_LAYERS_FILE: &str = "lisa_layers.bpk";
/// File of [`Lisa::save_state`]: step and sampled layer sets.
pub const LISA_STATE_FILE: &str = "lisa_state.json";

#[derive(Serialize, Deserialize)]
struct LisaState {
    step: usize,
    history: Vec<Vec<usize>>,
}

/// The LISA component: owns the layer sampling and the two optimizers.
pub struct Lisa {
    config: LisaConfig,
    re: Regex,
    num_layers: usize,
    active: BTreeSet<usize>,
    rng: StdRng,
    step: usize,
    make_optimizer: Box<dyn Fn() -> ModuleOptimizer + Send>,
    fixed_optim: ModuleOptimizer,
    layer_optim: ModuleOptimizer,
    layer_ids: Vec<ParamId>,
    history: Vec<Vec<usize>>,
}

impl std::fmt::Debug for Lisa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lisa")
            .field("config", &self.config)
            .field("num_layers", &self.num_layers)
            .field("active", &self.active)
            .field("step", &self.step)
            .finish()
    }
}

impl Lisa {
    /// Creates the component for `model`; `make_optimizer` builds a fresh optimizer
    /// (e.g. `|| AdamWConfig::new().init()`).
    pub fn new<M: Module>(
        config: LisaConfig,
        model: &M,
        make_optimizer: impl Fn() -> ModuleOptimizer + Send + 'static,
    ) -> Result<Self, PeftError> {
        let re = Regex::new(&config.layer_pattern).map_err(|e| PeftError::InvalidConfig {
            field: "layer_pattern".into(),
            reason: e.to_string(),
        })?;
        let num_layers = float_params(model)
            .iter()
            .filter_map(|(p, ..)| layer_of(&re, p))
            .max()
            .map_or(0, |m| m + 1);
        if config.n_layers == 0 || config.n_layers > num_layers {
            return Err(PeftError::InvalidConfig {
                field: "n_layers".into(),
                reason: format!(
                    "{} is not in 1..={num_layers} (decoder layers found)",
                    config.n_layers
                ),
            });
        }
        if config.interval_steps == 0 {
            return Err(PeftError::InvalidConfig {
                field: "interval_steps".into(),
                reason: "must be positive".into(),
            });
        }
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self {
            fixed_optim: make_optimizer(),
            layer_optim: make_optimizer(),
            make_optimizer: Box::new(make_optimizer),
            config,
            re,
            num_layers,
            active: BTreeSet::new(),
            rng,
            step: 0,
            layer_ids: Vec::new(),
            history: Vec::new(),
        })
    }

    /// Number of decoder layers found in the model.
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// The currently trained decoder layers.
    pub fn active_layers(&self) -> Vec<usize> {
        self.active.iter().copied().collect()
    }

    /// Every sampled set so far, in order.
    pub fn history(&self) -> &[Vec<usize>] {
        &self.history
    }

    /// Re-samples the trained layers when `step % interval_steps == 0` (so on the first
    /// call), freezing all other decoder layers and dropping their optimizer state.
    /// Call before the forward pass.
    pub fn on_step_begin<M: Module>(&mut self, model: M) -> M {
        if !self.active.is_empty() && !self.step.is_multiple_of(self.config.interval_steps) {
            return model;
        }
        let picked = sample(&mut self.rng, self.num_layers, self.config.n_layers);
        self.active = picked.into_iter().collect();
        self.history.push(self.active_layers());
        tracing::debug!(step = self.step, layers = ?self.active, "LISA switch");
        let model = self.apply_active(model);
        // Free the state of the layers switched off.
        self.layer_optim = (self.make_optimizer)();
        model
    }

    /// Applies one optimizer step: decoder-layer gradients go to the layer optimizer, the rest
    /// (embeddings, head, norms outside layers) to the persistent one.
    pub fn optimizer_step<M: Module>(&mut self, lr: f64, model: M, grads: Gradients) -> M {
        let mut grads = grads;
        let layer_grads = GradientsParams::from_params(&mut grads, &model, &self.layer_ids);
        let other = GradientsParams::from_module(&mut grads, &model);
        let model = self.fixed_optim.step(lr, model, other);
        let model = self.layer_optim.step(lr, model, layer_grads);
        self.step += 1;
        model
    }

    /// Like [`Lisa::optimizer_step`], with gradients already gathered per parameter (for
    /// example accumulated over micro-batches and clipped by a trainer).
    pub fn optimizer_step_params<M: Module>(
        &mut self,
        lr: f64,
        model: M,
        grads: GradientsParams,
    ) -> M {
        let mut rest = grads;
        let mut layer = GradientsParams::new();
        model.visit(&mut SplitGrads {
            ids: &self.layer_ids,
            from: &mut rest,
            to: &mut layer,
        });
        let model = self.fixed_optim.step(lr, model, rest);
        let model = self.layer_optim.step(lr, model, layer);
        self.step += 1;
        model
    }

    /// Continues a run at optimizer step `step` (after a resume): the next
    /// [`Lisa::on_step_begin`] samples a fresh set of layers, later switches keep the cadence of
    /// `interval_steps` counted from the start of the run.
    pub fn resume_at(&mut self, step: usize) {
        self.step = step;
    }

    /// Writes everything a resumed run needs into folder `dir` (which exists): both
    /// optimizers' state (`lisa_fixed.bpk`: embeddings, head and other always-trained
    /// parameters; `lisa_layers.bpk`: the active decoder layers) and `lisa_state.json` (the
    /// step and every sampled layer set, from which the sampler's state is replayed).
    ///
    /// Optimizer state is keyed by parameter id: give the model stable ids (as
    /// `lmflow-train` does) so that a new process finds it again.
    pub fn save_state(&self, dir: &Path) -> Result<(), PeftError> {
        for (name, optim) in [
            (LISA_FIXED_FILE, &self.fixed_optim),
            (LISA_LAYERS_FILE, &self.layer_optim),
        ] {
            let path = dir.join(name);
            optim.save(&path).map_err(|e| PeftError::Io {
                source: std::io::Error::other(e.to_string()),
                path,
            })?;
        }
        let path = dir.join(LISA_STATE_FILE);
        let state = LisaState {
            step: self.step,
            history: self.history.clone(),
        };
        let text = serde_json::to_string_pretty(&state).map_err(|e| PeftError::ConfigJson {
            path: path.clone(),
            source: e,
        })?;
        std::fs::write(&path, text).map_err(|source| PeftError::Io { path, source })
    }

    /// Whether `dir` holds a state written by [`Lisa::save_state`].
    pub fn has_state(dir: &Path) -> bool {
        dir.join(LISA_STATE_FILE).is_file()
    }

    /// Restores a state written by [`Lisa::save_state`] in `dir`: the step, the sampled layer
    /// sets (the sampler continues as the interrupted run would have), the active layers
    /// (`model`'s trainable set is made to match) and both optimizers' state. The run then
    /// continues exactly as if it had not stopped.
    ///
    /// # Errors
    /// [`PeftError::Io`] for unreadable files, [`PeftError::InvalidConfig`] when the saved
    /// layer sets do not come from this configuration's seed and layer count.
    pub fn load_state<M: Module>(&mut self, model: M, dir: &Path) -> Result<M, PeftError> {
        let path = dir.join(LISA_STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| PeftError::Io {
            path: path.clone(),
            source,
        })?;
        let state: LisaState = serde_json::from_str(&text).map_err(|e| PeftError::ConfigJson {
            path: path.clone(),
            source: e,
        })?;
        // Replay the sampler: same seed, same draws.
        let mut rng = StdRng::seed_from_u64(self.config.seed);
        for (i, saved) in state.history.iter().enumerate() {
            let mut drawn: Vec<usize> =
                sample(&mut rng, self.num_layers, self.config.n_layers).into_vec();
            drawn.sort_unstable();
            if &drawn != saved {
                return Err(PeftError::InvalidConfig {
                    field: "lisa".into(),
                    reason: format!(
                        "{}: layer set {i} {saved:?} was not drawn by seed {} over {} layers                          ({} at a time); the run's LISA settings changed",
                        path.display(),
                        self.config.seed,
                        self.num_layers,
                        self.config.n_layers
                    ),
                });
            }
        }
        self.rng = rng;
        self.step = state.step;
        self.history = state.history;
        self.active = self
            .history
            .last()
            .map(|l| l.iter().copied().collect())
            .unwrap_or_default();
        let model = if self.active.is_empty() {
            model
        } else {
            self.apply_active(model)
        };
        let load = |name: &str| -> Result<ModuleOptimizer, PeftError> {
            let path = dir.join(name);
            let record = OptimizerRecord::load(&path).map_err(|e| PeftError::Io {
                source: std::io::Error::other(e.to_string()),
                path: path.clone(),
            })?;
            Ok((self.make_optimizer)().load_record(record))
        };
        let (fixed, layers) = (load(LISA_FIXED_FILE)?, load(LISA_LAYERS_FILE)?);
        self.fixed_optim = fixed;
        self.layer_optim = layers;
        Ok(model)
    }

    /// Makes exactly the active decoder layers trainable (other parameters untouched) and
    /// records their parameter ids.
    fn apply_active<M: Module>(&mut self, model: M) -> M {
        let re = self.re.clone();
        let active = self.active.clone();
        let model = set_trainable_by_path(model, |path| {
            layer_of(&re, path).map(|i| active.contains(&i))
        });
        self.layer_ids = float_params(&model)
            .into_iter()
            .filter(|(p, ..)| layer_of(&self.re, p).is_some_and(|i| self.active.contains(&i)))
            .map(|(_, id, ..)| id)
            .collect();
        model
    }

    /// Tensors held by the optimizers: `(persistent part, decoder-layer part)`.
    pub fn optimizer_state_len(&self) -> (usize, usize) {
        (
            self.fixed_optim.to_record().len(),
            self.layer_optim.to_record().len(),
        )
    }
}

/// Moves the gradients of the parameters in `ids` from `from` to `to`.
struct SplitGrads<'a> {
    ids: &'a [ParamId],
    from: &'a mut GradientsParams,
    to: &'a mut GradientsParams,
}

impl burn::module::ModuleVisitor for SplitGrads<'_> {
    fn visit_float<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<D>>,
    ) {
        if self.ids.contains(&param.id)
            && let Some(g) = self.from.remove::<D>(param.id)
        {
            self.to.register(param.id, g);
        }
    }
}

fn layer_of(re: &Regex, path: &str) -> Option<usize> {
    re.captures(path)?.get(1)?.as_str().parse().ok()
}
