//! Feed-forward activations named as in transformers' `ACT2FN` (`activation_function` in
//! `config.json` of GPT-2 and OPT).

use burn::tensor::Tensor;
use burn::tensor::activation;

/// An activation function selected by its transformers name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `relu`.
    Relu,
    /// `gelu` / `gelu_python`: exact GELU `x * Φ(x)` (erf form).
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation of GELU
    /// (`0.5 x (1 + tanh(sqrt(2/π)(x + 0.044715 x³)))`).
    GeluTanh,
    /// `silu` / `swish`: `x * sigmoid(x)`.
    Silu,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
}

impl Activation {
    /// Parses a transformers `ACT2FN` name; `None` for names this crate does not implement.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        Some(match name {
            "relu" => Self::Relu,
            "gelu" | "gelu_python" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_python_tanh" => Self::GeluTanh,
            "silu" | "swish" => Self::Silu,
            "quick_gelu" => Self::QuickGelu,
            _ => return None,
        })
    }

    /// The names [`Activation::from_hf_name`] accepts, comma separated (for error messages).
    pub const SUPPORTED: &'static str = "relu, gelu, gelu_python, gelu_new, gelu_pytorch_tanh, \
                                         gelu_fast, gelu_python_tanh, silu, swish, quick_gelu";

    /// Applies the activation element-wise.
    ///
    /// # Shapes
    /// - input and output: any shape
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Relu => activation::relu(x),
            Self::Gelu => activation::gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
            Self::Silu => activation::silu(x),
            Self::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn apply(act: Activation, x: f32) -> f32 {
        let device = Device::flex();
        let t = Tensor::<1>::from_data(TensorData::new(vec![x], [1]), &device);
        act.forward(t).into_data().try_to_vec::<f32>().unwrap()[0]
    }

    #[test]
    fn matches_reference_values() {
        // torch: F.gelu(1.0) = 0.8413447, gelu tanh(1.0) = 0.8411920, silu(1.0) = 0.7310586,
        // quick_gelu(1.0) = 0.8457958
        assert!((apply(Activation::Gelu, 1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((apply(Activation::GeluTanh, 1.0) - 0.841_192).abs() < 1e-6);
        assert!((apply(Activation::Silu, 1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((apply(Activation::QuickGelu, 1.0) - 0.845_795_8).abs() < 1e-6);
        assert_eq!(apply(Activation::Relu, -2.0), 0.0);
        assert_eq!(
            Activation::from_hf_name("gelu_new"),
            Some(Activation::GeluTanh)
        );
        assert_eq!(Activation::from_hf_name("tanh"), None);
    }
}
