//! Gradient clipping by the global norm over all trainable tensors, like
//! `torch.nn.utils.clip_grad_norm_`.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::Error;

/// Which norm [`clip_grad_norm`] measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormType {
    /// The p-norm, `p > 0` (2.0 is the usual choice).
    P(f64),
    /// The maximum absolute value.
    Inf,
}

/// Clips the gradients of `module` in place so that their global norm is at most `max_norm`,
/// returning the norm measured before clipping (for logging).
///
/// As in PyTorch, the norm is taken over the per-tensor norms of every parameter that has a
/// gradient; gradients are scaled by `min(1, max_norm / (total_norm + 1e-6))`. A non-finite
/// total norm is returned as it is and the gradients are scaled by the resulting (NaN) factor,
/// like `clip_grad_norm_(error_if_nonfinite=False)`.
pub fn clip_grad_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
    norm_type: NormType,
) -> Result<f64, Error> {
    if let NormType::P(p) = norm_type
        && p <= 0.0
    {
        return Err(Error::InvalidValue {
            what: "gradient clipping",
            field: "norm_type",
            reason: format!("{p} is not a positive norm order"),
        });
    }
    let total = grad_norm(module, grads, norm_type);
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    if coef < 1.0 || coef.is_nan() {
        module.visit(&mut Scale { grads, coef });
    }
    Ok(total)
}

/// The global norm of the gradients of `module` without changing them.
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams, norm_type: NormType) -> f64 {
    let mut acc = NormAccumulator {
        grads,
        norm_type,
        parts: Vec::new(),
    };
    module.visit(&mut acc);
    if acc.parts.is_empty() {
        return 0.0;
    }
    let parts = Tensor::cat(acc.parts, 0);
    let total = match norm_type {
        NormType::Inf => parts.max(),
        NormType::P(p) => parts.powf_scalar(p).sum().powf_scalar(1.0 / p),
    };
    total.into_scalar::<f32>() as f64
}

struct NormAccumulator<'a> {
    grads: &'a GradientsParams,
    norm_type: NormType,
    parts: Vec<Tensor<1>>,
}

impl ModuleVisitor for NormAccumulator<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let n = g.shape().num_elements();
            let flat: Tensor<1> = g.reshape([n]);
            let norm = match self.norm_type {
                NormType::Inf => flat.abs().max(),
                NormType::P(2.0) => flat.square().sum().sqrt(),
                NormType::P(p) => flat.abs().powf_scalar(p).sum().powf_scalar(1.0 / p),
            };
            self.parts.push(norm);
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    coef: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.coef));
        }
    }
}
