//! PyTorch's `nn.LayerNorm` over the last dimension, with optional affine parameters
//! (`elementwise_affine=False` in OPT configurations has neither weight nor bias).

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};

/// Configuration of a [`LayerNorm`].
#[derive(burn::config::Config, Debug)]
pub struct LayerNormConfig {
    /// Size of the normalised (last) dimension.
    pub d_model: usize,
    /// Added to the variance before the square root.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Whether the layer has a learned weight (initialised to 1) and bias (initialised to 0).
    #[config(default = true)]
    pub elementwise_affine: bool,
}

impl LayerNormConfig {
    /// Creates the layer with PyTorch's initialisation (weight 1, bias 0).
    pub fn init(&self, device: &Device) -> LayerNorm {
        let (weight, bias) = if self.elementwise_affine {
            (
                Some(Tensor::ones([self.d_model], device)),
                Some(Tensor::zeros([self.d_model], device)),
            )
        } else {
            (None, None)
        };
        LayerNorm::from_tensors(weight, bias, self.eps)
    }
}

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` over the last dimension (biased variance).
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale `[d_model]` (absent without elementwise affine).
    pub weight: Option<Param<Tensor<1>>>,
    /// Shift `[d_model]` (absent without elementwise affine).
    pub bias: Option<Param<Tensor<1>>>,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Wraps existing tensors (each `[d_model]`).
    pub fn from_tensors(weight: Option<Tensor<1>>, bias: Option<Tensor<1>>, eps: f64) -> Self {
        Self {
            weight: weight.map(Param::from_tensor),
            bias: bias.map(Param::from_tensor),
            eps,
        }
    }

    /// Normalises over the last dimension.
    ///
    /// # Shapes
    /// - input and output: `[..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // Computed in f32 and cast back, as PyTorch's half-precision layer_norm accumulates.
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let mut y = (x - mean) / (var + self.eps).sqrt();
        if let Some(w) = &self.weight {
            y = y * broadcast(w.val().cast(DType::F32));
        }
        if let Some(b) = &self.bias {
            y = y + broadcast(b.val().cast(DType::F32));
        }
        y.cast(dtype)
    }
}

impl crate::hub::HubModule for LayerNorm {
    /// `{path}.weight` and `{path}.bias` (those present).
    fn visit_tensors(
        &mut self,
        path: &crate::hub::HubPath,
        v: &mut dyn crate::hub::TensorVisitor,
    ) -> Result<(), crate::error::ModelError> {
        use crate::hub::ParamSlot;
        if let Some(w) = &mut self.weight {
            v.param(&path.pp("weight"), ParamSlot::Vector(w))?;
        }
        if let Some(b) = &mut self.bias {
            v.param(&path.pp("bias"), ParamSlot::Vector(b))?;
        }
        Ok(())
    }
}

/// Reshapes `[d]` to `[1, ..., 1, d]` for broadcasting against a rank-`D` tensor.
fn broadcast<const D: usize>(t: Tensor<1>) -> Tensor<D> {
    let [d] = t.dims();
    let mut shape = [1usize; D];
    shape[D - 1] = d;
    t.reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn matches_torch_layer_norm() {
        // torch.nn.functional.layer_norm(torch.tensor([[1., 2., 4.]]), (3,),
        //     weight=torch.tensor([1., 2., .5]), bias=torch.tensor([0., 1., -1.]))
        //   = [[-1.0690414, 0.4654794, -0.3318491]]  (eps 1e-5)
        let device = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 4.0], [1, 3]), &device);
        let w = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0, 0.5], [3]), &device);
        let b = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 1.0, -1.0], [3]), &device);
        let ln = LayerNorm::from_tensors(Some(w), Some(b), 1e-5);
        let y: Vec<f32> = ln.forward(x).into_data().try_to_vec().unwrap();
        let expected = [-1.069_041_4f32, 0.465_479_4, -0.331_849_1];
        for (a, e) in y.iter().zip(expected) {
            assert!((a - e).abs() < 1e-5, "{y:?}");
        }
    }
}
