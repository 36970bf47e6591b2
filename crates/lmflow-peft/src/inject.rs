//! Attaching, activating, merging and removing adapters on a whole model through
//! [`LinearVisitor`] (Hub module paths), with PEFT's targeting rules.

use burn::module::Module;
use regex::Regex;

use crate::config::{LoraConfig, TargetModules};
use crate::error::PeftError;
use crate::linear::{Linear, LinearVisitor};
use crate::lora::{LoraAdapter, LoraInit};
use crate::trainable::{mark_only_adapters_trainable, set_trainable_by_path};

/// The shorthand for every linear layer except the output head.
pub const ALL_LINEAR: &str = "all-linear";

/// Module names treated as the output head (excluded by `all-linear`).
pub const OUTPUT_HEAD_NAMES: &[&str] = &["lm_head", "embed_out", "output"];

/// Decides which module paths get an adapter, exactly as PEFT's `check_target_module_exists`.
#[derive(Debug)]
pub struct TargetMatcher {
    targets: Matcher,
    exclude: Option<Matcher>,
    modules_to_save: Vec<Regex>,
    layers: Option<crate::config::LayerIndices>,
    layer_re: Vec<Regex>,
}

#[derive(Debug)]
enum Matcher {
    Names(Vec<String>),
    Regex(Regex),
    AllLinear,
}

impl Matcher {
    fn new(t: &TargetModules, field: &str) -> Result<Self, PeftError> {
        Ok(match t {
            TargetModules::Names(v) => Self::Names(v.clone()),
            TargetModules::Pattern(p) if p == ALL_LINEAR => Self::AllLinear,
            TargetModules::Pattern(p) => Self::Regex(full_regex(p, field)?),
        })
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Names(v) => v
                .iter()
                .any(|n| path == n || path.ends_with(&format!(".{n}"))),
            Self::Regex(r) => r.is_match(path),
            Self::AllLinear => {
                let last = path.rsplit('.').next().unwrap_or(path);
                !OUTPUT_HEAD_NAMES.contains(&last)
            }
        }
    }
}

fn full_regex(p: &str, field: &str) -> Result<Regex, PeftError> {
    Regex::new(&format!("^(?:{p})$")).map_err(|e| PeftError::InvalidConfig {
        field: field.into(),
        reason: e.to_string(),
    })
}

impl TargetMatcher {
    /// Builds the matcher of a config.
    pub fn new(cfg: &LoraConfig) -> Result<Self, PeftError> {
        let targets = cfg
            .target_modules
            .as_ref()
            .ok_or_else(|| PeftError::InvalidConfig {
                field: "target_modules".into(),
                reason: "must be set (a list of names, a regex or \"all-linear\")".into(),
            })?;
        let targets = Matcher::new(targets, "target_modules")?;
        let exclude = cfg
            .exclude_modules
            .as_ref()
            .map(|e| Matcher::new(e, "exclude_modules"))
            .transpose()?;
        let modules_to_save = cfg
            .modules_to_save
            .iter()
            .flatten()
            .map(|m| {
                Regex::new(&format!(r"^(?:|.*\.)(?:{m})(?:$|\..*)")).map_err(|e| {
                    PeftError::InvalidConfig {
                        field: "modules_to_save".into(),
                        reason: e.to_string(),
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        let layer_re = match &cfg.layers_pattern {
            None => vec![Regex::new(r"^.*?\.[^.]*\.(\d+)\.").expect("static regex")],
            Some(p) => p
                .as_vec()
                .iter()
                .map(|p| {
                    Regex::new(&format!(r"^(?:|.*?\.){p}\.(\d+)\.")).map_err(|e| {
                        PeftError::InvalidConfig {
                            field: "layers_pattern".into(),
                            reason: e.to_string(),
                        }
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            targets,
            exclude,
            modules_to_save,
            layers: cfg.layers_to_transform.clone(),
            layer_re,
        })
    }

    /// Whether `path` is one of `modules_to_save` (or inside one).
    pub fn is_module_to_save(&self, path: &str) -> bool {
        self.modules_to_save.iter().any(|r| r.is_match(path))
    }

    /// Whether `path` gets an adapter.
    pub fn is_target(&self, path: &str) -> bool {
        if self.exclude.as_ref().is_some_and(|e| match e {
            Matcher::Regex(_) => e.matches(path),
            Matcher::Names(v) => v
                .iter()
                .any(|n| path == n || path.ends_with(&format!(".{n}"))),
            Matcher::AllLinear => false,
        }) {
            return false;
        }
        if self.is_module_to_save(path) {
            return false;
        }
        let found = self.targets.matches(path);
        // PEFT applies layers_to_transform to list (and all-linear, expanded to a list) targets.
        if found
            && !matches!(self.targets, Matcher::Regex(_))
            && let Some(layers) = &self.layers
        {
            return layer_index(&self.layer_re, path).is_some_and(|i| layers.contains(i));
        }
        found
    }
}

/// The decoder-layer index in a module path (`model.layers.3.mlp.up_proj` -> 3).
pub fn layer_index_of(path: &str) -> Option<usize> {
    let re = Regex::new(r"^.*?\.[^.]*\.(\d+)\.").expect("static regex");
    layer_index(&[re], path)
}

fn layer_index(res: &[Regex], path: &str) -> Option<usize> {
    res.iter()
        .find_map(|r| r.captures(path))
        .and_then(|c| c.get(1))
        .and_then(|m| m.as_str().parse().ok())
}

/// What [`inject_adapter`] did.
#[derive(Clone, Debug, Default)]
pub struct InjectReport {
    /// Paths that received an adapter.
    pub adapted: Vec<String>,
    /// Linear paths listed in `modules_to_save`.
    pub saved_linears: Vec<String>,
    /// Embedding paths listed in `modules_to_save`.
    pub saved_embeddings: Vec<String>,
}

/// Attaches a new adapter `name` to every targeted linear layer (initialised per
/// `init_lora_weights`) and makes it active on the layers that have no active adapter.
/// Does not change which parameters are trainable; see [`get_peft_model`].
pub fn inject_adapter<M: LinearVisitor>(
    model: &mut M,
    cfg: &LoraConfig,
    name: &str,
) -> Result<InjectReport, PeftError> {
    cfg.validate()?;
    let matcher = TargetMatcher::new(cfg)?;
    let init = LoraInit::from_config(&cfg.init_lora_weights)?;
    let mut report = InjectReport::default();
    let mut err = None;
    model.visit_linears_mut(&mut |path, lin| {
        if err.is_some() {
            return;
        }
        if matcher.is_module_to_save(path) {
            report.saved_linears.push(path.to_string());
            return;
        }
        if !matcher.is_target(path) {
            return;
        }
        if let Err(e) = attach(lin, path, cfg, name, &init) {
            err = Some(e);
            return;
        }
        report.adapted.push(path.to_string());
    });
    if let Some(e) = err {
        return Err(e);
    }
    model.visit_embeddings_mut(&mut |path, _| {
        if matcher.is_module_to_save(path) {
            report.saved_embeddings.push(path.to_string());
        }
    });
    if report.adapted.is_empty() {
        return Err(PeftError::NoTargetMatched {
            targets: serde_json::to_string(&cfg.target_modules).unwrap_or_default(),
        });
    }
    tracing::info!(
        adapter = name,
        layers = report.adapted.len(),
        "LoRA adapter injected"
    );
    Ok(report)
}

fn attach(
    lin: &mut Linear,
    path: &str,
    cfg: &LoraConfig,
    name: &str,
    init: &LoraInit,
) -> Result<(), PeftError> {
    if lin.adapter(name).is_some() {
        return Err(PeftError::Adapter {
            name: name.into(),
            reason: format!("already attached to `{path}`"),
        });
    }
    let (r, alpha) = cfg.rank_and_alpha(path)?;
    // The update `B A` has rank at most min(d_in, d_out): a rank above the layer's larger side
    // only wastes memory, and an absurd one (1e12) would abort in allocation.
    let (d_in, d_out) = lin.dims();
    if r > d_in.max(d_out) {
        return Err(PeftError::InvalidConfig {
            field: "r".into(),
            reason: format!(
                "rank {r} exceeds both dimensions of `{path}` ({d_in} -> {d_out}); \
                 use a rank of at most {}",
                d_in.min(d_out)
            ),
        });
    }
    let scale = cfg.scale(r, alpha);
    if *init == LoraInit::Pissa && lin.quant.is_some() {
        return Err(PeftError::Unsupported {
            field: "init_lora_weights".into(),
            value: "\"pissa\"".into(),
            reason: format!("`{path}` is NF4-quantised; initialise PiSSA before quantising"),
        });
    }
    let weight = lin.dense_weight();
    let (adapter, new_weight) =
        LoraAdapter::init(name, weight, r, scale, cfg.lora_dropout, init, cfg.use_dora)?;
    if *init == LoraInit::Pissa {
        let trainable = lin.weight.is_require_grad();
        lin.weight = burn::module::Param::from_tensor(new_weight).set_require_grad(trainable);
    }
    lin.adapters.push(adapter);
    if lin.active_adapter.is_none() {
        lin.active_adapter = Some(name.into());
    }
    Ok(())
}

/// PEFT's `get_peft_model`: injects adapter `name`, freezes every parameter but the adapters,
/// and unfreezes `modules_to_save` (trained fully, saved with the adapter).
pub fn get_peft_model<M: Module + LinearVisitor>(
    mut model: M,
    cfg: &LoraConfig,
    name: &str,
) -> Result<(M, InjectReport), PeftError> {
    let report = inject_adapter(&mut model, cfg, name)?;
    let mut model = mark_only_adapters_trainable(model);
    unfreeze_modules_to_save(&mut model, cfg)?;
    Ok((model, report))
}

/// Makes `modules_to_save` (linear layers and embeddings) trainable.
pub fn unfreeze_modules_to_save<M: LinearVisitor>(
    model: &mut M,
    cfg: &LoraConfig,
) -> Result<(), PeftError> {
    let matcher = TargetMatcher::new(cfg)?;
    model.visit_linears_mut(&mut |path, lin| {
        if matcher.is_module_to_save(path) {
            lin.set_base_trainable(true);
        }
    });
    model.visit_embeddings_mut(&mut |path, p| {
        if matcher.is_module_to_save(path) {
            *p = p.clone().set_require_grad(true);
        }
    });
    Ok(())
}

/// Freezes every parameter of the model (e.g. for inference with adapters).
pub fn freeze_all<M: Module>(model: M) -> M {
    set_trainable_by_path(model, |_| Some(false))
}

/// Makes `name` the active adapter on every layer that has it (and no adapter active on
/// layers that do not). Errors if no layer has it.
pub fn set_active_adapter<M: LinearVisitor>(model: &mut M, name: &str) -> Result<(), PeftError> {
    let mut found = false;
    model.visit_linears_mut(&mut |_, lin| {
        if lin.adapter(name).is_some() {
            found = true;
            lin.active_adapter = Some(name.into());
        } else {
            lin.active_adapter = None;
        }
    });
    if found { Ok(()) } else { Err(unknown(name)) }
}

/// Disables adapters (forward is the base model) until [`set_active_adapter`].
pub fn disable_adapters<M: LinearVisitor>(model: &mut M) {
    model.visit_linears_mut(&mut |_, lin| lin.active_adapter = None);
}

/// Names of the adapters attached anywhere in the model, in first-seen order.
pub fn adapter_names<M: LinearVisitor>(model: &M) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    model.visit_linears(&mut |_, lin| {
        for a in &lin.adapters {
            if !names.contains(&a.name) {
                names.push(a.name.clone());
            }
        }
    });
    names
}

fn unknown(name: &str) -> PeftError {
    PeftError::Adapter {
        name: name.into(),
        reason: "no layer of the model has it".into(),
    }
}

fn for_each_with<M: LinearVisitor>(
    model: &mut M,
    name: &str,
    mut f: impl FnMut(&mut Linear) -> Result<(), PeftError>,
) -> Result<(), PeftError> {
    let mut found = false;
    let mut err = None;
    model.visit_linears_mut(&mut |_, lin| {
        if err.is_none() && lin.adapter(name).is_some() {
            found = true;
            if let Err(e) = f(lin) {
                err = Some(e);
            }
        }
    });
    match (err, found) {
        (Some(e), _) => Err(e),
        (None, false) => Err(unknown(name)),
        (None, true) => Ok(()),
    }
}

/// Folds adapter `name` into the base weights of every layer that has it (reversible with
/// [`unmerge_adapter`]).
pub fn merge_adapter<M: LinearVisitor>(model: &mut M, name: &str) -> Result<(), PeftError> {
    for_each_with(model, name, |lin| lin.merge(name))
}

/// Undoes [`merge_adapter`].
pub fn unmerge_adapter<M: LinearVisitor>(model: &mut M, name: &str) -> Result<(), PeftError> {
    for_each_with(model, name, |lin| lin.unmerge(name))
}

/// Removes adapter `name` from every layer (unmerging it first where merged).
pub fn delete_adapter<M: LinearVisitor>(model: &mut M, name: &str) -> Result<(), PeftError> {
    for_each_with(model, name, |lin| lin.remove_adapter(name))
}

/// PEFT's `unload`: removes every adapter (unmerging merged ones), leaving the base model.
pub fn unload<M: LinearVisitor>(model: &mut M) -> Result<(), PeftError> {
    for name in adapter_names(model) {
        delete_adapter(model, &name)?;
    }
    Ok(())
}

/// PEFT's `merge_and_unload`: merges adapter `name` for good and removes all adapters,
/// leaving plain linear layers with the merged weights.
pub fn merge_and_unload<M: LinearVisitor>(model: &mut M, name: &str) -> Result<(), PeftError> {
    merge_adapter(model, name)?;
    model.visit_linears_mut(&mut |_, lin| {
        lin.adapters.clear();
        lin.merged.clear();
        lin.active_adapter = None;
    });
    Ok(())
}
