//! A linear layer in the Hugging Face `[out, in]` weight layout that can carry adapters.
//!
//! Every projection of the `lmflow-models` architectures is a [`Linear`], so adapters (LoRA,
//! DoRA) and quantised bases (NF4) attach to any model built from it without wrapping at run
//! time.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

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

/// `y = x W^T + b` with `W` stored `[d_output, d_input]`, as PyTorch and the Hub store it.
#[derive(Module, Debug)]
pub struct Linear {
    /// Weight `[d_output, d_input]`.
    pub weight: Param<Tensor<2>>,
    /// Optional bias `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// Wraps existing tensors (weight `[d_output, d_input]`, bias `[d_output]`).
    pub fn from_tensors(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
        }
    }

    /// `(d_input, d_output)`.
    pub fn dims(&self) -> (usize, usize) {
        let [out, inp] = self.weight.dims();
        (inp, out)
    }

    /// Applies the layer.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let w = self.weight.val();
        burn::tensor::module::linear(input, w.transpose(), self.bias.as_ref().map(|b| b.val()))
    }
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
        let y: Vec<f32> = lin.forward(x).into_data().to_vec().unwrap();
        assert_eq!(y, vec![3.5, 7.0, 10.0]);
    }
}
