//! A linear layer in the Hugging Face `[out, in]` weight layout that can carry adapters.
//!
//! Every projection of the `lmflow-models` architectures is a [`Linear`], so adapters (LoRA,
//! DoRA) and quantised bases (NF4) attach to any model built from it without wrapping at run
//! time.
//!
//! # Using it in your own Burn model
//!
//! [`Linear`] / [`LinearConfig`] are a drop-in for `burn::nn::Linear` / `burn::nn::LinearConfig`:
//! the same `LinearConfig::new(d_input, d_output)`, `with_bias`, `with_initializer` (Burn's
//! [`Initializer`], default Kaiming-uniform = PyTorch's `U(-1/sqrt(in), 1/sqrt(in))`),
//! `init(&device)` and `forward(Tensor<D>) -> Tensor<D>` over `[..., d_input]`. Differences:
//! the weight is stored `[d_output, d_input]` (PyTorch / Hub layout, Burn's `LinearLayout::Col`
//! on disk) so that adapters save in PEFT's format, and there is no `layout` option. An existing
//! `burn::nn::Linear` converts with `Linear::from` (the weight is transposed once).
//!
//! Then implement [`LinearVisitor`] for the model (by hand or with
//! [`impl_linear_visitor!`](crate::impl_linear_visitor)) to name its layers, and
//! [`get_peft_model`](crate::get_peft_model), [`save_adapter`](crate::save_adapter),
//! [`load_adapter`](crate::load_adapter) and merging work on it as on the bundled architectures:
//!
//! ```
//! use burn::module::Module;
//! use burn::tensor::{Device, Tensor, activation::relu};
//! use lmflow_peft::{Linear, LinearConfig, LoraConfig, TargetModules, get_peft_model};
//!
//! #[derive(Module, Debug)]
//! struct Mlp {
//!     fc1: Linear,
//!     fc2: Linear,
//!     head: Linear,
//! }
//! lmflow_peft::impl_linear_visitor!(Mlp { fc1, fc2, head });
//!
//! impl Mlp {
//!     fn new(device: &Device) -> Self {
//!         Self {
//!             fc1: LinearConfig::new(8, 32).init(device),
//!             fc2: LinearConfig::new(32, 32).init(device),
//!             head: LinearConfig::new(32, 3).with_bias(false).init(device),
//!         }
//!     }
//!     fn forward(&self, x: Tensor<2>) -> Tensor<2> {
//!         self.head.forward(relu(self.fc2.forward(relu(self.fc1.forward(x)))))
//!     }
//! }
//!
//! let device = Device::flex();
//! let config = LoraConfig {
//!     r: 4,
//!     lora_alpha: 8.0,
//!     target_modules: Some(TargetModules::Names(vec!["fc1".into(), "fc2".into()])),
//!     ..LoraConfig::default()
//! };
//! let (model, report) = get_peft_model(Mlp::new(&device), &config, "default").unwrap();
//! assert_eq!(report.adapted, ["fc1", "fc2"]);
//! assert_eq!(model.forward(Tensor::zeros([5, 8], &device)).dims(), [5, 3]);
//! ```

use burn::module::{Initializer, Module, Param};
use burn::tensor::{DType, Device, Tensor};

use crate::error::PeftError;
use crate::lora::LoraAdapter;
use crate::nf4::Nf4Weight;

/// Configuration of a [`Linear`] layer: the fields, defaults and builder methods of
/// `burn::nn::LinearConfig` except `layout` (the weight is always stored `[d_output, d_input]`).
#[derive(burn::config::Config, Debug)]
pub struct LinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the layer adds a bias.
    #[config(default = true)]
    pub bias: bool,
    /// Initialiser of weight and bias (fan-in `d_input`, fan-out `d_output`), as Burn's. The
    /// default, Kaiming-uniform with gain `1/sqrt(3)`, is PyTorch's `nn.Linear` initialisation
    /// `U(-1/sqrt(d_input), 1/sqrt(d_input))`.
    #[config(default = "Initializer::KaimingUniform{gain:1.0/3.0f64.sqrt(), fan_out_only:false}")]
    pub initializer: Initializer,
}

impl LinearConfig {
    /// Creates a layer: weight `[d_output, d_input]` and bias `[d_output]` drawn from
    /// `initializer` (by default PyTorch's `U(-1/sqrt(in), 1/sqrt(in))`), no adapters.
    pub fn init(&self, device: &Device) -> Linear {
        let (fan_in, fan_out) = (Some(self.d_input), Some(self.d_output));
        let weight: Tensor<2> = self
            .initializer
            .init_with([self.d_output, self.d_input], fan_in, fan_out, device)
            .val();
        let bias = self.bias.then(|| {
            self.initializer
                .init_with([self.d_output], fan_in, fan_out, device)
                .val()
        });
        Linear::from_tensors(weight, bias)
    }
}

impl From<burn::nn::Linear> for Linear {
    /// Takes over a `burn::nn::Linear` (weight `[d_input, d_output]` in Burn, transposed here to
    /// `[d_output, d_input]`; bias as is; trainability kept), with no adapters.
    fn from(linear: burn::nn::Linear) -> Self {
        let trainable = linear.weight.is_require_grad();
        let weight = linear.weight.val().transpose();
        let mut out = Linear::from_tensors(weight, linear.bias.map(|b| b.val()));
        out.set_base_trainable(trainable);
        out
    }
}

/// `y = x W^T + b` with `W` stored `[d_output, d_input]`, as PyTorch and the Hub store it,
/// plus optional LoRA/DoRA adapters and an optional NF4-quantised base.
///
/// - `adapters`: named adapters; only `active_adapter` is applied, as two low-rank matmuls.
/// - `merged`: adapters folded into `weight` by [`Linear::merge`] (undone by
///   [`Linear::unmerge`]).
/// - `quant`: when set, the frozen base weight lives here as NF4 and `weight` is an empty
///   `[0, d_input]` placeholder; use [`Linear::dense_weight`] to read the weight.
#[derive(Module, Debug)]
pub struct Linear {
    /// Weight `[d_output, d_input]` (a `[0, d_input]` placeholder when `quant` is set).
    pub weight: Param<Tensor<2>>,
    /// Optional bias `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Named LoRA / DoRA adapters.
    pub adapters: Vec<LoraAdapter>,
    /// Name of the adapter applied in `forward` (`None`: base layer only).
    pub active_adapter: Option<String>,
    /// Adapters currently merged into `weight`, in merge order.
    pub merged: Vec<MergedAdapter>,
    /// NF4-quantised base weight (QLoRA).
    pub quant: Option<Nf4Weight>,
}

/// Record of an adapter merged into a [`Linear`] weight (needed to undo a DoRA merge).
#[derive(Module, Debug)]
pub struct MergedAdapter {
    /// Adapter name.
    pub name: String,
    /// DoRA: `m / ||W + s B A||_row` applied at merge time, `[d_output]`.
    pub dora_factor: Option<Tensor<1>>,
}

impl Linear {
    /// Wraps existing tensors (weight `[d_output, d_input]`, bias `[d_output]`).
    pub fn from_tensors(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            adapters: Vec::new(),
            active_adapter: None,
            merged: Vec::new(),
            quant: None,
        }
    }

    /// `(d_input, d_output)`.
    pub fn dims(&self) -> (usize, usize) {
        if let Some(q) = &self.quant {
            return (q.cols, q.rows);
        }
        let [out, inp] = self.weight.dims();
        (inp, out)
    }

    /// The base weight `[d_output, d_input]` (dequantised when stored as NF4). Merged adapters
    /// are included; the active unmerged adapter is not.
    pub fn dense_weight(&self) -> Tensor<2> {
        match &self.quant {
            Some(q) => q.dequantize(),
            None => self.weight.val(),
        }
    }

    /// The active, unmerged adapter, if any.
    pub fn active(&self) -> Option<&LoraAdapter> {
        let name = self.active_adapter.as_deref()?;
        if self.merged.iter().any(|m| m.name == name) {
            return None;
        }
        self.adapters.iter().find(|a| a.name == name)
    }

    /// The adapter called `name`.
    pub fn adapter(&self, name: &str) -> Option<&LoraAdapter> {
        self.adapters.iter().find(|a| a.name == name)
    }

    /// The adapter called `name`, mutably.
    pub fn adapter_mut(&mut self, name: &str) -> Option<&mut LoraAdapter> {
        self.adapters.iter_mut().find(|a| a.name == name)
    }

    /// Applies the layer: `x W^T + b`, plus the active adapter's low-rank update.
    ///
    /// The leading dimensions are folded into rows and the product runs as one 2-D matmul
    /// against a transposed *view* of the stored `[d_output, d_input]` weight: the CPU kernel
    /// reads the view through its strides, so no weight-sized copy is made per call (see
    /// [`matmul_t`]).
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let mut w = self.dense_weight();
        if self.quant.is_some() && w.dtype() != input.dtype() {
            w = w.cast(input.dtype());
        }
        let bias = self.bias.as_ref().map(|b| b.val());
        match self.active() {
            None => matmul_t(input, w, bias),
            Some(adapter) => {
                let base = matmul_t(input.clone(), w.clone(), bias.clone());
                let dtype = adapter.lora_a.val().dtype();
                if dtype == input.dtype() {
                    return adapter.apply(input, base, w, bias);
                }
                // Adapter weights in another dtype than the model (an f32 adapter on a bf16
                // model): as PEFT, the adapter path runs in the adapter's dtype and the sum is
                // cast back to the base output's dtype.
                // Only DoRA reads the base weight: plain LoRA never makes its f32 copy.
                let out_dtype = base.dtype();
                let w = if adapter.magnitude.is_some() {
                    w.cast(dtype)
                } else {
                    w
                };
                adapter
                    .apply(
                        input.cast(dtype),
                        base.cast(dtype),
                        w,
                        bias.map(|b| b.cast(dtype)),
                    )
                    .cast(out_dtype)
            }
        }
    }

    /// Freezes (`false`) or unfreezes the base weight and bias.
    pub fn set_base_trainable(&mut self, trainable: bool) {
        self.weight = self.weight.clone().set_require_grad(trainable);
        if let Some(b) = self.bias.take() {
            self.bias = Some(b.set_require_grad(trainable));
        }
    }

    /// Folds adapter `name` into the base weight (`W += s B A`; DoRA:
    /// `W = m / ||W + s B A||_row * (W + s B A)`). An NF4 base is dequantised first and stays
    /// dense. Merging an already merged adapter is a no-op.
    pub fn merge(&mut self, name: &str) -> Result<(), PeftError> {
        if self.merged.iter().any(|m| m.name == name) {
            return Ok(());
        }
        let adapter = self.adapter(name).ok_or_else(|| PeftError::Adapter {
            name: name.into(),
            reason: "not attached to this layer".into(),
        })?;
        // As PEFT (`weight.data += delta` promotes to f32): the merge is computed in the
        // adapter's dtype (f32 adapters on a bf16 model) and rounded once to the weight's.
        let w = self.dense_weight();
        let w_dtype = w.dtype();
        let w = same_dtype(w, adapter.lora_a.val().dtype());
        let delta = adapter.delta_weight();
        let (new_w, dora_factor) = match &adapter.magnitude {
            None => (w + delta, None),
            Some(m) => {
                let norm = adapter.dora_weight_norm(w.clone());
                let factor = m.val() / norm;
                (
                    (w + delta) * factor.clone().unsqueeze_dim::<2>(1),
                    Some(factor.detach()),
                )
            }
        };
        let new_w = same_dtype(new_w, w_dtype);
        let trainable = self.weight.is_require_grad();
        self.quant = None;
        self.weight = Param::from_tensor(new_w.detach()).set_require_grad(trainable);
        self.merged.push(MergedAdapter {
            name: name.into(),
            dora_factor,
        });
        Ok(())
    }

    /// Undoes [`Linear::merge`] for the most recently merged adapters, down to and including
    /// `name` (merges are undone in reverse order). A no-op if `name` is not merged.
    pub fn unmerge(&mut self, name: &str) -> Result<(), PeftError> {
        if !self.merged.iter().any(|m| m.name == name) {
            return Ok(());
        }
        while let Some(rec) = self.merged.pop() {
            let adapter = self.adapter(&rec.name).ok_or_else(|| PeftError::Adapter {
                name: rec.name.clone(),
                reason: "merged adapter was removed before unmerge".into(),
            })?;
            let w_dtype = self.weight.val().dtype();
            let mut w = same_dtype(self.weight.val(), adapter.lora_a.val().dtype());
            let delta = adapter.delta_weight();
            if let Some(f) = &rec.dora_factor {
                w = w / f.clone().unsqueeze_dim::<2>(1);
            }
            let trainable = self.weight.is_require_grad();
            let w = same_dtype(w - delta, w_dtype);
            self.weight = Param::from_tensor(w.detach()).set_require_grad(trainable);
            if rec.name == name {
                break;
            }
        }
        Ok(())
    }

    /// Removes adapter `name` (unmerging it first if merged).
    pub fn remove_adapter(&mut self, name: &str) -> Result<(), PeftError> {
        self.unmerge(name)?;
        self.adapters.retain(|a| a.name != name);
        if self.active_adapter.as_deref() == Some(name) {
            self.active_adapter = None;
        }
        Ok(())
    }

    /// Stores the frozen base weight as NF4 (QLoRA). The dense weight is dropped.
    pub fn quantize_nf4(&mut self, config: &crate::nf4::Nf4Config) {
        if self.quant.is_some() {
            return;
        }
        let w = self.weight.val().detach();
        let [_, d_in] = w.dims();
        let device = w.device();
        self.quant = Some(Nf4Weight::quantize(w, config));
        self.weight = Param::from_tensor(Tensor::zeros([0, d_in], &device)).set_require_grad(false);
    }
}

/// Rows of a frozen bf16/f16 weight that [`matmul_t`] multiplies at a time.
const LOW_PRECISION_SLICE_ROWS: usize = 16_384;

/// `t` in `dtype` (no copy when it already is).
fn same_dtype<const D: usize>(t: Tensor<D>, dtype: burn::tensor::DType) -> Tensor<D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// `x W^T (+ b)` for a weight stored `[d_output, d_input]`, as one 2-D matmul.
///
/// `burn::tensor::module::linear` broadcasts a weight to the input's rank with a reshape,
/// which on the CPU backend turns a transposed view into a weight-sized copy on every call
/// (about 90 ms for a 512 x 32000 weight). Folding the input to `[rows, d_input]` first keeps
/// the weight a strided view that the matmul kernel reads in place.
///
/// # Shapes
/// - input: `[..., d_input]`, weight: `[d_output, d_input]`, bias: `[d_output]`
/// - output: `[..., d_output]`
pub fn matmul_t<const D: usize>(
    input: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let dims = input.dims();
    let d_in = dims[D - 1];
    let [d_out, _] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let x: Tensor<2> = input.reshape([rows, d_in]);
    let low_precision = !matches!(weight.dtype(), DType::F32 | DType::F64);
    let mut y = if low_precision && d_out > LOW_PRECISION_SLICE_ROWS && !weight.is_require_grad() {
        // The CPU backend multiplies bf16/f16 by converting both operands to f32: for a large
        // frozen weight (a vocabulary head: 151,936 x 896 is 545 MB in f32) convert a slice of
        // rows at a time, in the forward and the backward pass. Same values.
        let parts: Vec<Tensor<2>> = (0..d_out)
            .step_by(LOW_PRECISION_SLICE_ROWS)
            .map(|start| {
                let end = (start + LOW_PRECISION_SLICE_ROWS).min(d_out);
                let w = weight.clone().slice([start..end, 0..d_in]);
                x.clone().matmul(w.transpose())
            })
            .collect();
        Tensor::cat(parts, 1)
    } else {
        x.matmul(weight.transpose())
    };
    if let Some(b) = bias {
        y = y + b.unsqueeze::<2>();
    }
    let mut out_dims = dims;
    out_dims[D - 1] = d_out;
    y.reshape(out_dims)
}

/// Gives access to a model's linear layers by their module path
/// (e.g. `model.layers.0.self_attn.q_proj`), in a fixed order.
///
/// Adapter injection ([`get_peft_model`](crate::get_peft_model),
/// [`inject_adapter`](crate::inject_adapter)), saving and loading in PEFT's format
/// ([`save_adapter`](crate::save_adapter), [`load_adapter`](crate::load_adapter)), merging and
/// quantisation walk a model through this trait; `target_modules` match these paths as PEFT
/// matches `named_modules()` names, and saved tensors are named
/// `base_model.model.<path>.lora_A.weight`, so use the names the model has in PyTorch when the
/// adapter is to be loaded there.
///
/// Every architecture of `lmflow-models` implements it. For your own Burn module, build its
/// projections from [`Linear`] and either list its fields with
/// [`impl_linear_visitor!`](crate::impl_linear_visitor) (fields that are a [`Linear`], a
/// `Vec` or `Option` of visitable modules, or any module implementing this trait; paths are the
/// field names joined with `.`, `Vec` items numbered from 0), or implement the two methods by
/// hand, calling `f` once per layer with its path:
///
/// ```
/// use burn::module::Module;
/// use lmflow_peft::{Linear, LinearVisitor, linear::join_path};
///
/// #[derive(Module, Debug)]
/// struct Block {
///     attn: Linear,
///     ffn: Linear,
/// }
/// #[derive(Module, Debug)]
/// struct Net {
///     blocks: Vec<Block>,
///     out: Linear,
/// }
///
/// impl LinearVisitor for Block {
///     fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
///         f("attn", &self.attn);
///         f("ffn", &self.ffn);
///     }
///     fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
///         f("attn", &mut self.attn);
///         f("ffn", &mut self.ffn);
///     }
/// }
/// // Vec<Block> is visitable because Block is: paths "blocks.0.attn", ...
/// lmflow_peft::impl_linear_visitor!(Net { blocks, out });
///
/// let device = burn::tensor::Device::flex();
/// let lin = |i, o| lmflow_peft::LinearConfig::new(i, o).init(&device);
/// let net = Net {
///     blocks: (0..2).map(|_| Block { attn: lin(4, 4), ffn: lin(4, 4) }).collect(),
///     out: lin(4, 2),
/// };
/// let mut paths = Vec::new();
/// net.visit_linears(&mut |path, _| paths.push(path.to_string()));
/// assert_eq!(paths, ["blocks.0.attn", "blocks.0.ffn", "blocks.1.attn", "blocks.1.ffn", "out"]);
/// assert_eq!(join_path("blocks", ""), "blocks");
/// ```
pub trait LinearVisitor {
    /// Calls `f` on every linear layer with its Hub module path.
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear));
    /// Calls `f` on every linear layer with its Hub module path, mutably.
    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear));

    /// Calls `f` on every embedding table (`[vocab, d_model]`) with its Hub module path
    /// (e.g. `model.embed_tokens`, GPT-2 `transformer.wte`), so that `modules_to_save` can
    /// train and save them. Default: the model has none to offer.
    fn visit_embeddings_mut(&mut self, f: &mut dyn FnMut(&str, &mut Param<Tensor<2>>)) {
        let _ = f;
    }
}

/// `prefix.path`, or `prefix` alone when `path` is empty (a [`Linear`] visits itself as `""`).
pub fn join_path(prefix: &str, path: &str) -> String {
    if path.is_empty() {
        prefix.to_string()
    } else if prefix.is_empty() {
        path.to_string()
    } else {
        format!("{prefix}.{path}")
    }
}

/// A single layer is its own only linear, with the empty path.
impl LinearVisitor for Linear {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
        f("", self);
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
        f("", self);
    }
}

/// Items are numbered from 0: `<index>.<item path>` (as PyTorch's `nn.ModuleList`).
impl<T: LinearVisitor> LinearVisitor for Vec<T> {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
        for (i, item) in self.iter().enumerate() {
            let prefix = i.to_string();
            item.visit_linears(&mut |p, l| f(&join_path(&prefix, p), l));
        }
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
        for (i, item) in self.iter_mut().enumerate() {
            let prefix = i.to_string();
            item.visit_linears_mut(&mut |p, l| f(&join_path(&prefix, p), l));
        }
    }

    fn visit_embeddings_mut(&mut self, f: &mut dyn FnMut(&str, &mut Param<Tensor<2>>)) {
        for (i, item) in self.iter_mut().enumerate() {
            let prefix = i.to_string();
            item.visit_embeddings_mut(&mut |p, e| f(&join_path(&prefix, p), e));
        }
    }
}

/// An absent module has no layers; a present one is visited with the same paths.
impl<T: LinearVisitor> LinearVisitor for Option<T> {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
        if let Some(m) = self {
            m.visit_linears(f);
        }
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
        if let Some(m) = self {
            m.visit_linears_mut(f);
        }
    }

    fn visit_embeddings_mut(&mut self, f: &mut dyn FnMut(&str, &mut Param<Tensor<2>>)) {
        if let Some(m) = self {
            m.visit_embeddings_mut(f);
        }
    }
}

/// Implements [`LinearVisitor`] for a struct by listing its fields: each must be a [`Linear`],
/// a `Vec` / `Option` of visitable modules, or any type implementing [`LinearVisitor`]. A
/// field's layers get the field name as path prefix (`fc1`, `blocks.0.attn`, ...), in the order
/// listed. Fields not listed are not visited (embeddings, norms, ...).
///
/// ```
/// use burn::module::Module;
/// use lmflow_peft::{Linear, LinearConfig, LinearVisitor};
///
/// #[derive(Module, Debug)]
/// struct TwoLayers {
///     fc1: Linear,
///     fc2: Linear,
/// }
/// lmflow_peft::impl_linear_visitor!(TwoLayers { fc1, fc2 });
///
/// let device = burn::tensor::Device::flex();
/// let m = TwoLayers {
///     fc1: LinearConfig::new(4, 8).init(&device),
///     fc2: LinearConfig::new(8, 2).init(&device),
/// };
/// let mut names = Vec::new();
/// m.visit_linears(&mut |path, layer| names.push((path.to_string(), layer.dims())));
/// assert_eq!(names, [("fc1".to_string(), (4, 8)), ("fc2".to_string(), (8, 2))]);
/// ```
#[macro_export]
macro_rules! impl_linear_visitor {
    ($ty:ty { $($field:ident),+ $(,)? }) => {
        impl $crate::LinearVisitor for $ty {
            fn visit_linears(&self, f: &mut dyn FnMut(&str, &$crate::Linear)) {
                $(
                    $crate::LinearVisitor::visit_linears(&self.$field, &mut |p: &str, l: &$crate::Linear| {
                        f(&$crate::linear::join_path(stringify!($field), p), l)
                    });
                )+
            }

            fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut $crate::Linear)) {
                $(
                    $crate::LinearVisitor::visit_linears_mut(&mut self.$field, &mut |p: &str, l: &mut $crate::Linear| {
                        f(&$crate::linear::join_path(stringify!($field), p), l)
                    });
                )+
            }

            fn visit_embeddings_mut(
                &mut self,
                f: &mut dyn FnMut(&str, &mut ::burn::module::Param<::burn::tensor::Tensor<2>>),
            ) {
                $(
                    $crate::LinearVisitor::visit_embeddings_mut(
                        &mut self.$field,
                        &mut |p: &str, e: &mut ::burn::module::Param<::burn::tensor::Tensor<2>>| {
                            f(&$crate::linear::join_path(stringify!($field), p), e)
                        },
                    );
                )+
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn a_large_frozen_bf16_weight_is_multiplied_in_row_slices_with_the_same_values() {
        let device = Device::flex();
        let d_out = LOW_PRECISION_SLICE_ROWS + 1_000;
        let w = Tensor::<2>::random([d_out, 8], burn::tensor::Distribution::Default, &device)
            .cast(DType::BF16);
        let x = Tensor::<3>::random([2, 3, 8], burn::tensor::Distribution::Default, &device)
            .cast(DType::BF16);
        let sliced = matmul_t(x.clone(), w.clone(), None);
        assert_eq!(sliced.dims(), [2, 3, d_out]);
        let whole = x
            .reshape([6, 8])
            .matmul(w.transpose())
            .reshape([2, 3, d_out]);
        let (a, b) = (sliced.into_data(), whole.into_data());
        assert_eq!(a.dtype(), burn::tensor::DType::BF16);
        let (a, b) = (
            a.convert::<f32>().try_into_vec::<f32>().unwrap(),
            b.convert::<f32>().try_into_vec::<f32>().unwrap(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn forward_uses_hub_layout() {
        let device = Device::flex();
        // W = [[1, 2], [3, 4], [5, 6]]  (out=3, in=2)
        let w = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2., 3., 4., 5., 6.], [3, 2]),
            &device,
        );
        let b = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, 0., -1.], [3]), &device);
        let lin = Linear::from_tensors(w, Some(b));
        assert_eq!(lin.dims(), (2, 3));
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 1.0], [1, 2]), &device);
        let y: Vec<f32> = lin.forward(x).into_data().try_to_vec().unwrap();
        assert_eq!(y, vec![3.5, 7.0, 10.0]);
    }

    #[test]
    fn drop_in_for_burn_linear() {
        let device = Device::flex();
        // Same config surface as burn::nn::LinearConfig, PyTorch's bound 1/sqrt(d_input).
        let lin = LinearConfig::new(16, 5).with_bias(true).init(&device);
        assert_eq!(lin.dims(), (16, 5));
        let w: Vec<f32> = lin.weight.val().into_data().try_to_vec().unwrap();
        assert!(w.iter().all(|v| v.abs() <= 0.25) && w.iter().any(|v| v.abs() > 0.1));
        let lin = LinearConfig::new(3, 2)
            .with_bias(false)
            .with_initializer(Initializer::Constant { value: 0.5 })
            .init(&device);
        assert!(lin.bias.is_none());
        let y: Vec<f32> = lin
            .forward(Tensor::<2>::ones([1, 3], &device))
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(y, vec![1.5, 1.5]);

        // From a burn::nn::Linear: same outputs for inputs of any rank.
        let burn_lin = burn::nn::LinearConfig::new(6, 4).init(&device);
        let x = Tensor::<3>::random([2, 3, 6], burn::tensor::Distribution::Default, &device);
        let want: Vec<f32> = burn_lin
            .forward(x.clone())
            .into_data()
            .try_to_vec()
            .unwrap();
        let ours = Linear::from(burn_lin);
        assert_eq!(ours.dims(), (6, 4));
        let got: Vec<f32> = ours.forward(x).into_data().try_to_vec().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn vec_and_option_paths() {
        let device = Device::flex();
        let layers = vec![
            LinearConfig::new(2, 2).init(&device),
            LinearConfig::new(2, 2).init(&device),
        ];
        let mut paths = Vec::new();
        layers.visit_linears(&mut |p, _| paths.push(p.to_string()));
        assert_eq!(paths, ["0", "1"]);
        let mut none: Option<Linear> = None;
        none.visit_linears_mut(&mut |_, _| panic!("nothing to visit"));
        assert_eq!(join_path("a", "b.c"), "a.b.c");
        assert_eq!(join_path("", "b"), "b");
    }
}
