//! Hub tensor names, written once per module.
//!
//! Every module of an architecture implements [`HubModule`]: it names its own tensors relative
//! to the path its parent gives it (`path.pp("self_attn")`, as candle's `vb.pp`), and hands each
//! parameter or linear layer to a [`TensorVisitor`]. Loading ([`Loader`]), saving
//! ([`StateDict`]) and the [`LinearVisitor`](lmflow_peft::LinearVisitor) paths PEFT uses
//! ([`LinearPaths`], [`EmbeddingPaths`]) are visitors over that one description, so a tensor
//! name cannot differ between them.
//!
//! Models are built first (with lazily initialised parameters, so building allocates nothing),
//! then a [`Loader`] replaces every parameter by the checkpoint tensor of the same name and
//! shape before any random value is drawn.

use std::fmt;

use burn::module::{Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};
use lmflow_peft::Linear;

use crate::error::ModelError;
use crate::weights::WeightSource;

/// A dotted Hub module path (`model.layers.0.self_attn`), built from the parent's path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubPath(String);

impl HubPath {
    /// The empty root path.
    pub fn root() -> Self {
        Self::default()
    }

    /// The path of a child module or tensor: `self.name` (or `name` at the root).
    pub fn pp(&self, name: impl fmt::Display) -> Self {
        if self.0.is_empty() {
            Self(name.to_string())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HubPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a linear layer's weight is stored in the checkpoint (in memory it is always
/// `[d_output, d_input]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `nn.Linear`: `[d_output, d_input]`.
    OutIn,
    /// GPT-2's `Conv1D`: `[d_input, d_output]` (transposed on load and save).
    InOut,
}

/// A parameter handed to a [`TensorVisitor`].
#[derive(Debug)]
pub enum ParamSlot<'a> {
    /// A vector (norm weights, biases).
    Vector(&'a mut Param<Tensor<1>>),
    /// A matrix (embedding tables).
    Matrix(&'a mut Param<Tensor<2>>),
    /// A rank-4 tensor (convolution kernels `[out, in, kh, kw]`: CLIP's patch embedding).
    Rank4(&'a mut Param<Tensor<4>>),
}

/// What is done with each named tensor of a [`HubModule`].
pub trait TensorVisitor {
    /// A parameter stored under the tensor name `name`.
    fn param(&mut self, name: &HubPath, param: ParamSlot<'_>) -> Result<(), ModelError>;

    /// A linear layer at module path `path` (`{path}.weight`, and `{path}.bias` when it has
    /// one).
    fn linear(
        &mut self,
        path: &HubPath,
        linear: &mut Linear,
        layout: WeightLayout,
    ) -> Result<(), ModelError>;

    /// An embedding table at module path `path` (`{path}.weight`, `[rows, width]`).
    fn embedding(
        &mut self,
        path: &HubPath,
        table: &mut Param<Tensor<2>>,
    ) -> Result<(), ModelError> {
        self.param(&path.pp("weight"), ParamSlot::Matrix(table))
    }
}

/// A module that names its tensors relative to its parent.
pub trait HubModule {
    /// Hands every tensor of the module, under `path`, to `visitor`.
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        visitor: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError>;
}

impl<M: HubModule> HubModule for Vec<M> {
    /// Element `i` lives at `path.i`.
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        visitor: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        for (i, module) in self.iter_mut().enumerate() {
            module.visit_tensors(&path.pp(i), visitor)?;
        }
        Ok(())
    }
}

impl<M: HubModule> HubModule for Option<M> {
    /// Absent modules have no tensors.
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        visitor: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        match self {
            Some(module) => module.visit_tensors(path, visitor),
            None => Ok(()),
        }
    }
}

/// Visits the linear layer `linear` at `path` if it exists.
pub fn visit_optional_linear(
    visitor: &mut dyn TensorVisitor,
    path: &HubPath,
    linear: &mut Option<Linear>,
    layout: WeightLayout,
) -> Result<(), ModelError> {
    match linear {
        Some(linear) => visitor.linear(path, linear, layout),
        None => Ok(()),
    }
}

/// Reads each parameter from a checkpoint, checking it has the shape of the parameter it
/// replaces.
///
/// Checkpoints that store a base model without its Hub prefix load too: a tensor missing under
/// its name is looked up with the prefixes of [`Loader::LEGACY_PREFIXES`] replaced
/// (`transformer.h.0...` -> `h.0...` for GPT-2, `model.decoder.layers.0...` ->
/// `decoder.layers.0...` for OPT).
pub struct Loader<'a> {
    weights: &'a WeightSource,
    on_linear: Option<LinearHook<'a>>,
}

/// A callback given each linear layer (Hub path, layer) as soon as [`Loader`] reads it.
pub type LinearHook<'a> = &'a mut dyn FnMut(&str, &mut Linear);

impl std::fmt::Debug for Loader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("weights", &self.weights)
            .field("on_linear", &self.on_linear.is_some())
            .finish()
    }
}

impl<'a> Loader<'a> {
    /// Prefix replacements tried for tensors missing under their own name.
    pub const LEGACY_PREFIXES: &'static [(&'static str, &'static str)] =
        &[("transformer.", ""), ("model.decoder.", "decoder.")];

    /// A loader reading from `weights`.
    pub fn new(weights: &'a WeightSource) -> Self {
        Self {
            weights,
            on_linear: None,
        }
    }

    /// A loader that hands every linear layer to `on_linear` (with its Hub path, e.g.
    /// `model.layers.0.self_attn.q_proj`) as soon as it is read, before the next one is: for
    /// example to quantise it, so that the whole model never exists in full precision.
    pub fn with_linear_hook(weights: &'a WeightSource, on_linear: LinearHook<'a>) -> Self {
        Self {
            weights,
            on_linear: Some(on_linear),
        }
    }

    /// The name the checkpoint stores `name` under.
    fn stored_name(&self, name: &str) -> String {
        if !self.weights.contains(name) {
            for (from, to) in Self::LEGACY_PREFIXES {
                if let Some(rest) = name.strip_prefix(from) {
                    let alias = format!("{to}{rest}");
                    if self.weights.contains(&alias) {
                        return alias;
                    }
                }
            }
        }
        name.to_string()
    }

    fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<D>, ModelError> {
        self.weights.tensor(&self.stored_name(name), shape)
    }

    fn replace<const D: usize>(
        &self,
        name: &HubPath,
        param: &mut Param<Tensor<D>>,
    ) -> Result<(), ModelError> {
        let shape: [usize; D] = param.lazy_shape().dims();
        *param = Param::from_tensor(self.tensor(name.as_str(), shape)?);
        Ok(())
    }
}

impl TensorVisitor for Loader<'_> {
    fn param(&mut self, name: &HubPath, param: ParamSlot<'_>) -> Result<(), ModelError> {
        match param {
            ParamSlot::Vector(p) => self.replace(name, p),
            ParamSlot::Matrix(p) => self.replace(name, p),
            ParamSlot::Rank4(p) => self.replace(name, p),
        }
    }

    fn linear(
        &mut self,
        path: &HubPath,
        linear: &mut Linear,
        layout: WeightLayout,
    ) -> Result<(), ModelError> {
        let [d_out, d_in] = linear.weight.lazy_shape().dims();
        let name = path.pp("weight");
        // A bitsandbytes 4-bit layer (always stored `[d_output, d_input]`) goes straight into
        // NF4: its dense weight never exists.
        let stored = self.stored_name(name.as_str());
        if let Some(q) = crate::bnb::read_linear(self.weights, &stored, d_out, d_in)? {
            let bias = match &linear.bias {
                Some(_) => Some(self.tensor(path.pp("bias").as_str(), [d_out])?),
                None => None,
            };
            let placeholder = Tensor::zeros([0, d_in], self.weights.device());
            *linear = Linear::from_tensors(placeholder, bias);
            linear.weight = linear.weight.clone().set_require_grad(false);
            linear.quant = Some(q);
            if let Some(hook) = self.on_linear.as_mut() {
                hook(path.as_str(), linear);
            }
            return Ok(());
        }
        let weight = match layout {
            WeightLayout::OutIn => self.tensor(name.as_str(), [d_out, d_in])?,
            WeightLayout::InOut => self.tensor::<2>(name.as_str(), [d_in, d_out])?.transpose(),
        };
        let bias = match &linear.bias {
            Some(_) => Some(self.tensor(path.pp("bias").as_str(), [d_out])?),
            None => None,
        };
        *linear = Linear::from_tensors(weight, bias);
        if let Some(hook) = self.on_linear.as_mut() {
            hook(path.as_str(), linear);
        }
        Ok(())
    }
}

/// Collects every tensor under its Hub name, in its current dtype (linear weights in their
/// checkpoint layout, NF4 bases dequantised; adapters are not included).
#[derive(Debug, Default)]
pub struct StateDict {
    /// `(name, values)` in visiting order.
    pub tensors: Vec<(String, TensorData)>,
}

impl TensorVisitor for StateDict {
    fn param(&mut self, name: &HubPath, param: ParamSlot<'_>) -> Result<(), ModelError> {
        let data = match param {
            ParamSlot::Vector(p) => p.val().into_data(),
            ParamSlot::Matrix(p) => p.val().into_data(),
            ParamSlot::Rank4(p) => p.val().into_data(),
        };
        self.tensors.push((name.to_string(), data));
        Ok(())
    }

    fn linear(
        &mut self,
        path: &HubPath,
        linear: &mut Linear,
        layout: WeightLayout,
    ) -> Result<(), ModelError> {
        let weight = match layout {
            WeightLayout::OutIn => linear.dense_weight(),
            WeightLayout::InOut => linear.dense_weight().transpose(),
        };
        self.tensors
            .push((path.pp("weight").to_string(), weight.into_data()));
        if let Some(bias) = &linear.bias {
            self.tensors
                .push((path.pp("bias").to_string(), bias.val().into_data()));
        }
        Ok(())
    }
}

/// Calls a function on every linear layer with its module path.
pub struct LinearPaths<'f>(pub &'f mut dyn FnMut(&str, &mut Linear));

impl TensorVisitor for LinearPaths<'_> {
    fn param(&mut self, _: &HubPath, _: ParamSlot<'_>) -> Result<(), ModelError> {
        Ok(())
    }

    fn linear(
        &mut self,
        path: &HubPath,
        linear: &mut Linear,
        _: WeightLayout,
    ) -> Result<(), ModelError> {
        (self.0)(path.as_str(), linear);
        Ok(())
    }
}

/// Calls a function on every embedding table with its module path.
pub struct EmbeddingPaths<'f>(pub &'f mut dyn FnMut(&str, &mut Param<Tensor<2>>));

impl TensorVisitor for EmbeddingPaths<'_> {
    fn param(&mut self, _: &HubPath, _: ParamSlot<'_>) -> Result<(), ModelError> {
        Ok(())
    }

    fn linear(&mut self, _: &HubPath, _: &mut Linear, _: WeightLayout) -> Result<(), ModelError> {
        Ok(())
    }

    fn embedding(
        &mut self,
        path: &HubPath,
        table: &mut Param<Tensor<2>>,
    ) -> Result<(), ModelError> {
        (self.0)(path.as_str(), table);
        Ok(())
    }
}

/// Runs a visitor that cannot fail (the path visitors above).
pub(crate) fn visit_infallible(module: &mut dyn HubModule, visitor: &mut dyn TensorVisitor) {
    let result = module.visit_tensors(&HubPath::root(), visitor);
    debug_assert!(result.is_ok(), "path visitors do not fail: {result:?}");
}

/// The state dict of a module (see [`StateDict`]).
///
/// Visiting needs `&mut`; the module is cloned first, which shares every tensor (a clone of a
/// Burn module copies handles, not values).
pub fn state_dict<M: HubModule + Clone>(module: &M) -> Vec<(String, TensorData)> {
    let mut visitor = StateDict::default();
    visit_infallible(&mut module.clone(), &mut visitor);
    visitor.tensors
}

/// Builds a module with `init` and fills it from a checkpoint (see [`Loader`]).
pub fn load<M: HubModule>(mut module: M, weights: &WeightSource) -> Result<M, ModelError> {
    module.visit_tensors(&HubPath::root(), &mut Loader::new(weights))?;
    Ok(module)
}

/// Like [`load`], handing each linear layer to `on_linear` as soon as it is read
/// ([`Loader::with_linear_hook`]).
pub fn load_with_linear_hook<M: HubModule>(
    mut module: M,
    weights: &WeightSource,
    on_linear: &mut dyn FnMut(&str, &mut Linear),
) -> Result<M, ModelError> {
    module.visit_tensors(
        &HubPath::root(),
        &mut Loader::with_linear_hook(weights, on_linear),
    )?;
    Ok(module)
}

/// A parameter whose values are created by `init` on first use (never, when a [`Loader`]
/// replaces it first).
pub fn lazy_param<const D: usize>(
    shape: [usize; D],
    device: &Device,
    init: impl FnOnce(&Device) -> Tensor<D> + Send + Sync + 'static,
) -> Param<Tensor<D>> {
    Param::uninitialized(
        ParamId::new(),
        move |device, require_grad| init(device).set_require_grad(require_grad),
        device.clone(),
        true,
        shape.into(),
    )
}

/// How a lazily created parameter is filled when it is first used.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Drawn from a distribution.
    Random(burn::tensor::Distribution),
    /// All zeros.
    Zeros,
}

impl Init {
    /// A tensor of `shape` on `device`.
    pub fn tensor<const D: usize>(self, shape: [usize; D], device: &Device) -> Tensor<D> {
        match self {
            Self::Random(dist) => Tensor::random(shape, dist, device),
            Self::Zeros => Tensor::zeros(shape, device),
        }
    }
}

/// A linear layer `[d_output, d_input]` whose weight (and bias, when `bias` is given) are
/// created lazily (see [`lazy_param`]).
pub fn lazy_linear(
    d_input: usize,
    d_output: usize,
    device: &Device,
    weight: Init,
    bias: Option<Init>,
) -> Linear {
    let mut linear = Linear::from_tensors(Tensor::zeros([0, d_input], device), None);
    let shape = [d_output, d_input];
    linear.weight = lazy_param(shape, device, move |d| weight.tensor(shape, d));
    linear.bias =
        bias.map(|init| lazy_param([d_output], device, move |d| init.tensor([d_output], d)));
    linear
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_with_dots() {
        let p = HubPath::root().pp("model").pp("layers").pp(3);
        assert_eq!(p.as_str(), "model.layers.3");
        assert_eq!(HubPath::root().pp("lm_head").to_string(), "lm_head");
    }
}
