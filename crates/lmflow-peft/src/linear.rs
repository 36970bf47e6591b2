//! A linear layer in the Hugging Face `[out, in]` weight layout that can carry adapters.
//!
//! Every projection of the `lmflow-models` architectures is a [`Linear`], so adapters (LoRA,
//! DoRA) and quantised bases (NF4) attach to any model built from it without wrapping at run
//! time.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::error::PeftError;
use crate::lora::LoraAdapter;
use crate::nf4::Nf4Weight;

/// Configuration of a [`Linear`] layer.
#[derive(burn::config::Config, Debug)]
pub struct LinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the layer adds a bias.
    #[config(default = true)]
    pub bias: bool,
}

impl LinearConfig {
    /// Creates a layer with PyTorch's default initialisation
    /// (`U(-1/sqrt(in), 1/sqrt(in))` for weight and bias).
    pub fn init(&self, device: &Device) -> Linear {
        let k = 1.0 / (self.d_input as f64).sqrt();
        let dist = burn::tensor::Distribution::Uniform(-k, k);
        let weight = Tensor::random([self.d_output, self.d_input], dist, device);
        let bias = self
            .bias
            .then(|| Tensor::random([self.d_output], dist, device));
        Linear::from_tensors(weight, bias)
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
                adapter.apply(input, base, w, bias)
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
        let w = self.dense_weight();
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
            let delta = adapter.delta_weight();
            let mut w = self.weight.val();
            if let Some(f) = &rec.dora_factor {
                w = w / f.clone().unsqueeze_dim::<2>(1);
            }
            let trainable = self.weight.is_require_grad();
            self.weight = Param::from_tensor((w - delta).detach()).set_require_grad(trainable);
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
    let mut y = x.matmul(weight.transpose());
    if let Some(b) = bias {
        y = y + b.unsqueeze::<2>();
    }
    let mut out_dims = dims;
    out_dims[D - 1] = d_out;
    y.reshape(out_dims)
}

/// Gives access to a model's linear layers by their Hub module path
/// (e.g. `model.layers.0.self_attn.q_proj`), in a fixed order.
///
/// Adapter injection, merging and quantisation walk a model through this trait.
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

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
}
