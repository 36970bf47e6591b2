//! Root-mean-square layer normalisation as `LlamaRMSNorm` computes it.

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};

/// Configuration of an [`RmsNorm`].
#[derive(burn::config::Config, Debug)]
pub struct RmsNormConfig {
    /// Normalised size (last dimension).
    pub size: usize,
    /// Added to the mean square before the square root.
    #[config(default = 1e-6)]
    pub eps: f64,
}

impl RmsNormConfig {
    /// A norm with unit weight.
    pub fn init(&self, device: &Device) -> RmsNorm {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([self.size], device)),
            eps: self.eps,
        }
    }
}

/// `weight * (x / sqrt(mean(x^2) + eps))`, with the normalisation computed in f32 and cast back
/// to the input dtype before the weight is applied (as `transformers` does).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Scale `[size]` (Hub name `weight`).
    pub weight: Param<Tensor<1>>,
    /// Epsilon.
    pub eps: f64,
}

impl RmsNorm {
    /// Wraps an existing weight.
    pub fn from_weight(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// Normalises over the last dimension.
    ///
    /// # Shapes
    /// - input: `[..., size]`
    /// - output: `[..., size]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let variance = x32.clone().square().mean_dim(D - 1);
        let normed = x32.div(variance.add_scalar(self.eps).sqrt()).cast(dtype);
        let weight = self.weight.val();
        let mut shape = [1usize; D];
        shape[D - 1] = weight.dims()[0];
        normed.mul(weight.reshape(shape))
    }
}

impl crate::hub::HubModule for RmsNorm {
    /// `{path}.weight`.
    fn visit_tensors(
        &mut self,
        path: &crate::hub::HubPath,
        v: &mut dyn crate::hub::TensorVisitor,
    ) -> Result<(), crate::error::ModelError> {
        v.param(
            &path.pp("weight"),
            crate::hub::ParamSlot::Vector(&mut self.weight),
        )
    }
}
