//! Gradient accumulation that weights micro-batches by their token counts.
//!
//! When each micro-batch loss is a mean over its own tokens, averaging the micro-batch
//! gradients equally over-weights short micro-batches. [`TokenWeightedAccumulator`] sums
//! `tokens_i * grad_i` and divides by `sum(tokens_i)` at the end, which equals the gradient of
//! the mean loss over every token of the accumulated batch.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::Error;

/// Accumulates token-weighted gradients of a module over micro-batches.
#[derive(Debug, Default)]
pub struct TokenWeightedAccumulator {
    sum: GradientsParams,
    tokens: u64,
}

impl TokenWeightedAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens accumulated so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Adds the gradients of one micro-batch whose loss was the mean over `tokens` tokens.
    pub fn add<M: Module>(&mut self, module: &M, grads: GradientsParams, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let mut visitor = Add {
            sum: &mut self.sum,
            grads,
            weight: tokens as f64,
        };
        module.visit(&mut visitor);
        self.tokens += tokens;
    }

    /// The token-weighted mean gradient; resets the accumulator. Errors when no token was added.
    pub fn finish<M: Module>(&mut self, module: &M) -> Result<GradientsParams, Error> {
        if self.tokens == 0 {
            return Err(Error::InvalidValue {
                what: "gradient accumulation",
                field: "tokens",
                reason: "no micro-batch with tokens was added".into(),
            });
        }
        let mut sum = std::mem::take(&mut self.sum);
        let scale = 1.0 / self.tokens as f64;
        self.tokens = 0;
        module.visit(&mut Scale {
            grads: &mut sum,
            scale,
        });
        Ok(sum)
    }
}

struct Add<'a> {
    sum: &'a mut GradientsParams,
    grads: GradientsParams,
    weight: f64,
}

impl ModuleVisitor for Add<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let g = g.mul_scalar(self.weight);
            let total = match self.sum.remove::<D>(param.id) {
                Some(acc) => acc + g,
                None => g,
            };
            self.sum.register(param.id, total);
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    scale: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.scale));
        }
    }
}
