//! A LoRA / rsLoRA / DoRA adapter on one [`Linear`](crate::Linear) layer.
//!
//! The update is applied as two low-rank matmuls, `scale * (dropout(x) A^T) B^T`; the
//! `[out, in]` product `B A` is never formed in the forward or backward pass (it is formed only
//! by [`LoraAdapter::delta_weight`], used when merging). DoRA's row norm
//! `||W + s B A||_row` is computed without forming `B A` either (see
//! [`LoraAdapter::dora_weight_norm`]) and, as in PEFT, detached from the graph.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{DType, Device, Distribution, Tensor};

use crate::error::PeftError;
use crate::svd::top_singular_tensor;

/// How new adapter factors are initialised (PEFT's `init_lora_weights`).
#[derive(Clone, Debug, PartialEq)]
pub enum LoraInit {
    /// PEFT's default (`true`): A kaiming-uniform (`U(-1/sqrt(in), 1/sqrt(in))`), B zero, so
    /// the adapted layer starts equal to the base layer.
    Default,
    /// `false`: A and B both kaiming-uniform (B with bound `1/sqrt(r)`); not an identity start.
    Random,
    /// `"gaussian"`: A ~ N(0, 1/r), B zero.
    Gaussian,
    /// `"pissa"`: A, B from the top-`r` singular triplets of W (scaled by `1/scale`); the base
    /// weight becomes the residual `W - scale * B A`.
    Pissa,
}

impl LoraInit {
    /// Parses PEFT's `init_lora_weights` value.
    pub fn from_config(v: &crate::config::InitLoraWeights) -> Result<Self, PeftError> {
        use crate::config::InitLoraWeights as I;
        match v {
            I::Bool(true) => Ok(Self::Default),
            I::Bool(false) => Ok(Self::Random),
            I::Method(m) if m == "gaussian" => Ok(Self::Gaussian),
            I::Method(m) if m == "pissa" => Ok(Self::Pissa),
            I::Method(m) => Err(PeftError::Unsupported {
                field: "init_lora_weights".into(),
                value: format!("{m:?}"),
                reason: "supported: true, false, \"gaussian\", \"pissa\"".into(),
            }),
        }
    }
}

/// One adapter: `lora_A` `[r, in]`, `lora_B` `[out, r]`, optional DoRA magnitude `[out]`.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// Adapter name (PEFT's default is `"default"`).
    pub name: String,
    /// Down projection `A`, `[r, d_input]` (PEFT's `lora_A.weight`).
    pub lora_a: Param<Tensor<2>>,
    /// Up projection `B`, `[d_output, r]` (PEFT's `lora_B.weight`).
    pub lora_b: Param<Tensor<2>>,
    /// DoRA magnitude `m`, `[d_output]` (PEFT's `lora_magnitude_vector`).
    pub magnitude: Option<Param<Tensor<1>>>,
    /// Dropout on the adapter input (active only when training under autodiff).
    pub dropout: Dropout,
    /// Dropout probability (kept for display and DoRA's base-path choice).
    pub dropout_prob: f64,
    /// `alpha / r` or `alpha / sqrt(r)`.
    pub scale: f64,
}

impl LoraAdapter {
    /// Wraps existing factors.
    ///
    /// # Shapes
    /// - `lora_a`: `[r, d_input]`, `lora_b`: `[d_output, r]`, `magnitude`: `[d_output]`
    pub fn from_tensors(
        name: impl Into<String>,
        lora_a: Tensor<2>,
        lora_b: Tensor<2>,
        magnitude: Option<Tensor<1>>,
        scale: f64,
        dropout: f64,
    ) -> Self {
        Self {
            name: name.into(),
            lora_a: Param::from_tensor(lora_a),
            lora_b: Param::from_tensor(lora_b),
            magnitude: magnitude.map(Param::from_tensor),
            dropout: DropoutConfig::new(dropout.clamp(0.0, 0.999)).init(),
            dropout_prob: dropout,
            scale,
        }
    }

    /// Creates factors for a `[d_output, d_input]` base weight. For [`LoraInit::Pissa`] the
    /// base weight is returned modified (the residual); otherwise it is returned unchanged.
    pub fn init(
        name: impl Into<String>,
        weight: Tensor<2>,
        rank: usize,
        scale: f64,
        dropout: f64,
        init: &LoraInit,
        use_dora: bool,
    ) -> Result<(Self, Tensor<2>), PeftError> {
        let [d_out, d_in] = weight.dims();
        let device = weight.device();
        let kaiming = |fan_in: usize, shape: [usize; 2], device: &Device| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Tensor::<2>::random(shape, Distribution::Uniform(-bound, bound), device)
        };
        let (a, b, weight) = match init {
            LoraInit::Default => (
                kaiming(d_in, [rank, d_in], &device),
                Tensor::zeros([d_out, rank], &device),
                weight,
            ),
            LoraInit::Random => (
                kaiming(d_in, [rank, d_in], &device),
                kaiming(rank, [d_out, rank], &device),
                weight,
            ),
            LoraInit::Gaussian => (
                Tensor::random(
                    [rank, d_in],
                    Distribution::Normal(0.0, 1.0 / rank as f64),
                    &device,
                ),
                Tensor::zeros([d_out, rank], &device),
                weight,
            ),
            LoraInit::Pissa => pissa(weight, rank, scale)?,
        };
        // Adapters (and so their gradients and optimizer state) are f32 whatever the base
        // weight's dtype, as PEFT keeps them under autocast; the forward pass casts around them.
        let f32 = |t: Tensor<2>| {
            if t.dtype() == DType::F32 {
                t
            } else {
                t.cast(DType::F32)
            }
        };
        let mut adapter = Self::from_tensors(name, f32(a), f32(b), None, scale, dropout);
        if use_dora {
            adapter.magnitude = Some(Param::from_tensor(
                adapter.dora_weight_norm(f32(weight.clone())).detach(),
            ));
        }
        Ok((adapter, weight))
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// `scale * (x A^T) B^T` — the low-rank update, without dropout.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let h = crate::linear::matmul_t(x, self.lora_a.val(), None);
        let y = crate::linear::matmul_t(h, self.lora_b.val(), None);
        y.mul_scalar(self.scale)
    }

    /// Adds this adapter's contribution to the base output `base_out = x W^T + b`.
    ///
    /// LoRA: `base_out + scale * dropout(x) A^T B^T`.
    /// DoRA (PEFT's `DoraLinearLayer`): with `c = m / ||W + s B A||_row` (detached) and
    /// `x' = dropout(x)`, `base_out + (c - 1) * x' W^T + c * s * x' A^T B^T`.
    ///
    /// # Shapes
    /// - `x`: `[..., d_input]`, `base_out`: `[..., d_output]`, `weight`: `[d_output, d_input]`
    pub fn apply<const D: usize>(
        &self,
        x: Tensor<D>,
        base_out: Tensor<D>,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Tensor<D> {
        let x = self.dropout.forward(x);
        let Some(m) = &self.magnitude else {
            return base_out + self.delta(x);
        };
        let norm = self.dora_weight_norm(weight.clone());
        let c: Tensor<D> = (m.val() / norm).unsqueeze();
        let base_result = if self.dropout_prob > 0.0 {
            crate::linear::matmul_t(x.clone(), weight, None)
        } else {
            match bias {
                Some(b) => base_out.clone() - b.unsqueeze(),
                None => base_out.clone(),
            }
        };
        let lora = self.delta(x);
        base_out + (c.clone() - 1.0) * base_result + c * lora
    }

    /// `scale * B A`, `[d_output, d_input]` (used by merge; never in forward/backward).
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_b
            .val()
            .matmul(self.lora_a.val())
            .mul_scalar(self.scale)
    }

    /// `||W + s B A||` per output row, detached, computed from `[out, r]` and `[r, r]`
    /// products only:
    /// `||W_i||^2 + 2 s <B_i, (W A^T)_i> + s^2 <B_i, (B A A^T)_i>`.
    ///
    /// # Shapes
    /// - weight: `[d_output, d_input]`; output `[d_output]`
    pub fn dora_weight_norm(&self, weight: Tensor<2>) -> Tensor<1> {
        let [d_out, _] = weight.dims();
        let w = weight.detach();
        let a = self.lora_a.val().detach();
        let b = self.lora_b.val().detach();
        let s = self.scale;
        let wa = w.clone().matmul(a.clone().transpose());
        let baat = b.clone().matmul(a.clone().matmul(a.transpose()));
        let sq = w.square().sum_dim(1)
            + (b.clone() * wa).sum_dim(1).mul_scalar(2.0 * s)
            + (baat * b).sum_dim(1).mul_scalar(s * s);
        sq.clamp_min(0.0).sqrt().reshape([d_out])
    }

    /// Freezes or unfreezes the adapter's tensors.
    pub fn set_trainable(&mut self, trainable: bool) {
        self.lora_a = self.lora_a.clone().set_require_grad(trainable);
        self.lora_b = self.lora_b.clone().set_require_grad(trainable);
        if let Some(m) = self.magnitude.take() {
            self.magnitude = Some(m.set_require_grad(trainable));
        }
    }
}

/// PiSSA: `W = U S V^T`; `A = sqrt(S_r / s) V_r^T`, `B = U_r sqrt(S_r / s)`,
/// residual `W - s B A`.
fn pissa(
    weight: Tensor<2>,
    rank: usize,
    scale: f64,
) -> Result<(Tensor<2>, Tensor<2>, Tensor<2>), PeftError> {
    let [d_out, d_in] = weight.dims();
    let device = weight.device();
    if rank > d_out.min(d_in) {
        return Err(PeftError::InvalidConfig {
            field: "r".into(),
            reason: format!("PiSSA rank {rank} exceeds min({d_out}, {d_in})"),
        });
    }
    let (u, s, vt) = top_singular_tensor(weight.clone(), rank);
    let mut a = vec![0f32; rank * d_in];
    let mut b = vec![0f32; d_out * rank];
    for k in 0..rank {
        let sr = (s[k] / scale).max(0.0).sqrt();
        for j in 0..d_in {
            a[k * d_in + j] = (sr * vt[k * d_in + j]) as f32;
        }
        for i in 0..d_out {
            b[i * rank + k] = (u[i * rank + k] * sr) as f32;
        }
    }
    let a = Tensor::<2>::from_data(burn::tensor::TensorData::new(a, [rank, d_in]), &device);
    let b = Tensor::<2>::from_data(burn::tensor::TensorData::new(b, [d_out, rank]), &device);
    let w_dtype = weight.dtype();
    let residual = weight - b.clone().matmul(a.clone()).mul_scalar(scale).cast(w_dtype);
    Ok((a, b, residual.detach()))
}
