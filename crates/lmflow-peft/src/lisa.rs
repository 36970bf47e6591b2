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

use std::collections::BTreeSet;

use burn::module::{Module, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Gradients;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use regex::Regex;

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
