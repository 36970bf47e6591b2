//! AdamW with 8-bit optimizer state: both moments are stored as one byte per element with a
//! blockwise scale, in the spirit of bitsandbytes' `AdamW8bit` (Dettmers et al. 2022).
//!
//! Quantisation (not bit-identical to bitsandbytes): each tensor is split into blocks of
//! `block_size` elements; every block keeps its absolute maximum in f32 and each element a code
//! of a *dynamic* (exponent-like) map, a logarithmic grid below the block maximum, so that small
//! values keep their relative precision:
//! - first moment `m`: sign + 7-bit log magnitude spanning `DECADES_M` decades;
//! - second moment: its square root (same dynamic range as `m`) as an 8-bit log magnitude.
//!
//! Tensors smaller than `min_8bit_size` keep f32 moments, as bitsandbytes does. The update
//! rule itself is `torch.optim.AdamW`'s.

use burn::config::Config;
use burn::optim::LearningRate;
use burn::tensor::{Int, IntDType, Tensor};

use crate::registry::registered;

use super::state::{Step, adam_denom, bias_correction, config_optimizer, ema, optimizer_state};

/// Decades of magnitude below the block maximum that the first-moment codes cover.
const DECADES_M: f64 = 5.0;
/// Decades below the block maximum covered by the square root of the second moment.
const DECADES_V: f64 = 5.0;

/// Configuration of [`AdamW8bit`]; defaults are `bitsandbytes.optim.AdamW8bit`'s.
#[derive(Config, Debug, PartialEq)]
pub struct AdamW8bitConfig {
    /// Decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay of the second moment.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the denominator.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Decoupled weight decay.
    #[config(default = 1e-2)]
    pub weight_decay: f64,
    /// Elements per quantisation block.
    #[config(default = 256)]
    pub block_size: usize,
    /// Tensors with fewer elements keep f32 state.
    #[config(default = 4096)]
    pub min_8bit_size: usize,
}

registered!(AdamW8bitConfig => AdamW8bit, lr = 1e-3);

impl AdamW8bitConfig {
    /// Optimizer-state bytes per parameter for a tensor of `numel` elements: 2 codes plus two
    /// f32 block maxima per block when quantised, 8 (two f32 moments) otherwise.
    pub fn state_bytes_per_param(&self, numel: usize) -> f64 {
        if numel < self.min_8bit_size || numel == 0 {
            return 8.0;
        }
        let blocks = numel.div_ceil(self.block_size.max(1));
        2.0 + 8.0 * blocks as f64 / numel as f64
    }
}

config_optimizer! {
    /// AdamW whose moments are kept in 8 bits per element (see the module docs).
    pub struct AdamW8bit(AdamW8bitConfig) -> AdamW8bitState = update;
}

optimizer_state! {
    /// State of [`AdamW8bit`] for one parameter: quantised moments, or f32 moments for small
    /// tensors.
    pub struct AdamW8bitState {
        tensors {}
        optional {
            /// First moment in f32 (small tensors).
            exp_avg: Tensor<D>,
            /// Second moment in f32 (small tensors).
            exp_avg_sq: Tensor<D>,
            /// First-moment codes, one byte per element (padded to whole blocks).
            exp_avg_codes: Tensor<1, Int>,
            /// Per-block maxima of the first moment, `[blocks, 1]`.
            exp_avg_absmax: Tensor<2>,
            /// Codes of the square root of the second moment.
            exp_avg_sq_codes: Tensor<1, Int>,
            /// Per-block maxima of the square root of the second moment.
            exp_avg_sq_absmax: Tensor<2>,
        }
        scalars {
            /// Number of steps taken.
            step: usize,
        }
    }
}

/// One quantised tensor: codes and per-block maxima.
struct Quantized {
    codes: Tensor<1, Int>,
    absmax: Tensor<2>,
}

fn blocks<const D: usize>(x: Tensor<D>, block: usize) -> Tensor<2> {
    let n = x.shape().num_elements();
    let nb = n.div_ceil(block);
    let flat: Tensor<1> = x.reshape([n]);
    let pad = nb * block - n;
    let flat = if pad > 0 {
        let zeros = Tensor::<1>::zeros([pad], &flat.device());
        Tensor::cat(vec![flat, zeros], 0)
    } else {
        flat
    };
    flat.reshape([nb, block])
}

fn unblock<const D: usize>(b: Tensor<2>, dims: [usize; D]) -> Tensor<D> {
    let n: usize = dims.iter().product();
    let [nb, block] = b.dims();
    let flat: Tensor<1> = b.reshape([nb * block]);
    flat.slice(0..n).reshape(dims)
}

/// Signed (`levels` = 127 magnitudes and a sign) or unsigned (`levels` = 255) log codes.
fn quantize<const D: usize>(x: Tensor<D>, block: usize, signed: bool, decades: f64) -> Quantized {
    let b = blocks(x, block);
    let absmax = b.clone().abs().max_dim(1);
    let y = b.clone().div(absmax.clone().clamp_min(f32::MIN_POSITIVE));
    let levels = if signed { 126.0 } else { 254.0 };
    // log10(|y|) mapped to [1, levels + 1]; zero (log = -inf) clamps to code 0.
    let mag = y
        .clone()
        .abs()
        .log()
        .div_scalar(std::f64::consts::LN_10)
        .add_scalar(decades)
        .mul_scalar(levels / decades)
        .add_scalar(1.0)
        .clamp(0.0, levels + 1.0)
        .round();
    let codes = if signed {
        // Negative values use codes 128..=255.
        mag + y.lower_elem(0.0).float().mul_scalar(128.0)
    } else {
        mag
    };
    let [nb, bs] = codes.dims();
    Quantized {
        codes: codes.reshape([nb * bs]).int().cast(IntDType::U8),
        absmax,
    }
}

fn dequantize<const D: usize>(
    q: &Quantized,
    dims: [usize; D],
    block: usize,
    signed: bool,
    decades: f64,
) -> Tensor<D> {
    let n = q.codes.shape().num_elements();
    let codes: Tensor<2> = q.codes.clone().float().reshape([n / block, block]);
    let levels = if signed { 126.0 } else { 254.0 };
    let (mag_code, sign) = if signed {
        let negative = codes.clone().greater_equal_elem(128.0).float();
        (
            codes - negative.clone().mul_scalar(128.0),
            negative.mul_scalar(-2.0).add_scalar(1.0),
        )
    } else {
        let ones = codes.ones_like();
        (codes, ones)
    };
    let zero = mag_code.clone().equal_elem(0.0);
    let mag = mag_code
        .sub_scalar(1.0)
        .mul_scalar(decades / levels)
        .sub_scalar(decades)
        .mul_scalar(std::f64::consts::LN_10)
        .exp()
        .mask_fill(zero, 0.0);
    unblock(mag.mul(sign).mul(q.absmax.clone()), dims)
}

fn update<const D: usize>(
    c: &AdamW8bitConfig,
    lr: LearningRate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamW8bitState<D>>,
) -> Step<D, AdamW8bitState<D>> {
    let dims = tensor.dims();
    let block = c.block_size.max(1);
    let quantized = tensor.shape().num_elements() >= c.min_8bit_size;
    let (m, v, step) = match state {
        None => (tensor.zeros_like(), tensor.zeros_like(), 0),
        Some(s) => {
            let m = match (s.exp_avg, s.exp_avg_codes, s.exp_avg_absmax) {
                (Some(m), _, _) => m,
                (None, Some(codes), Some(absmax)) => {
                    dequantize(&Quantized { codes, absmax }, dims, block, true, DECADES_M)
                }
                _ => tensor.zeros_like(),
            };
            let v = match (s.exp_avg_sq, s.exp_avg_sq_codes, s.exp_avg_sq_absmax) {
                (Some(v), _, _) => v,
                (None, Some(codes), Some(absmax)) => {
                    dequantize(&Quantized { codes, absmax }, dims, block, false, DECADES_V).square()
                }
                _ => tensor.zeros_like(),
            };
            (m, v, s.step)
        }
    };
    let step = step + 1;
    let tensor = tensor.mul_scalar(1.0 - lr * c.weight_decay);
    let m = ema(m, grad.clone(), c.beta_1);
    let v = ema(v, grad.square(), c.beta_2);
    let denom = adam_denom(v.clone(), bias_correction(c.beta_2, step), c.epsilon);
    let step_size = lr / bias_correction(c.beta_1, step);
    let tensor = tensor - m.clone().div(denom).mul_scalar(step_size);
    let state = if quantized {
        let qm = quantize(m, block, true, DECADES_M);
        let qv = quantize(v.sqrt(), block, false, DECADES_V);
        AdamW8bitState {
            exp_avg: None,
            exp_avg_sq: None,
            exp_avg_codes: Some(qm.codes),
            exp_avg_absmax: Some(qm.absmax),
            exp_avg_sq_codes: Some(qv.codes),
            exp_avg_sq_absmax: Some(qv.absmax),
            step,
        }
    } else {
        AdamW8bitState {
            exp_avg: Some(m),
            exp_avg_sq: Some(v),
            exp_avg_codes: None,
            exp_avg_absmax: None,
            exp_avg_sq_codes: None,
            exp_avg_sq_absmax: None,
            step,
        }
    };
    (tensor, Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData};

    #[test]
    fn codes_round_trip_within_the_grid_precision() {
        let device = Device::flex();
        let x = Tensor::<2>::random([7, 50], Distribution::Normal(0.0, 1.0), &device);
        let x = x.clone() * x.clone().abs().powf_scalar(2.0); // wide dynamic range
        let q = quantize(x.clone(), 64, true, DECADES_M);
        assert_eq!(q.codes.shape().num_elements(), 6 * 64);
        let back = dequantize(&q, [7, 50], 64, true, DECADES_M);
        let (xs, bs) = (
            x.into_data().try_to_vec::<f32>().expect("f32"),
            back.into_data().try_to_vec::<f32>().expect("f32"),
        );
        // Half a grid step is 10^(decades / levels / 2) - 1 relative (about 4.7%).
        let half_step = 10f64.powf(DECADES_M / 126.0 / 2.0) as f32 - 1.0;
        let max_abs = xs.iter().fold(0f32, |m, a| m.max(a.abs()));
        for (a, b) in xs.iter().zip(&bs) {
            assert!(a.signum() == b.signum() || *b == 0.0, "{a} vs {b}");
            // Values within 4 decades of the maximum are inside every block's 5-decade grid.
            if a.abs() > max_abs * 1e-4 {
                assert!((a - b).abs() <= half_step * a.abs() * 1.01, "{a} vs {b}");
            }
        }
        let zeros = Tensor::<1>::from_data(TensorData::new(vec![0.0f32; 10], [10]), &device);
        let q = quantize(zeros, 4, false, DECADES_V);
        let back = dequantize(&q, [10], 4, false, DECADES_V);
        assert_eq!(
            back.into_data().try_to_vec::<f32>().expect("f32"),
            vec![0.0; 10]
        );
    }

    #[test]
    fn memory_per_parameter() {
        let c = AdamW8bitConfig::new();
        assert_eq!(c.state_bytes_per_param(100), 8.0);
        assert!((c.state_bytes_per_param(1 << 20) - (2.0 + 8.0 / 256.0)).abs() < 1e-12);
    }
}
