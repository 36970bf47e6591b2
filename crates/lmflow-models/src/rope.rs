//! Rotary position embeddings in `transformers`' layout (`rotate_half`: the first and second
//! halves of each head are rotated together, not interleaved pairs), with the `rope_scaling`
//! variants of `modeling_rope_utils.py`: default, linear, dynamic NTK, `llama3` and YaRN.
//!
//! The inverse frequencies are computed in f32 exactly as the `_compute_*_parameters` functions
//! of `transformers` do; cos/sin are computed in f32 and scaled by the attention factor (YaRN).

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData, s};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::ModelError;

/// How rotary frequencies are scaled (`rope_scaling` / `rope_parameters` of `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type: "default"`).
    Default,
    /// Position interpolation: frequencies divided by `factor`.
    Linear {
        /// Scaling factor.
        factor: f64,
    },
    /// Dynamic NTK: the base grows with the sequence length once it exceeds
    /// `max_position_embeddings`.
    Dynamic {
        /// Scaling factor.
        factor: f64,
    },
    /// LLaMA 3.1 frequency-band scaling.
    Llama3 {
        /// Scaling factor (8 in LLaMA 3.1).
        factor: f64,
        /// Low-frequency factor (1).
        low_freq_factor: f64,
        /// High-frequency factor (4).
        high_freq_factor: f64,
        /// Pre-training context length (8192).
        original_max_position_embeddings: usize,
    },
    /// YaRN.
    Yarn {
        /// Scaling factor.
        factor: f64,
        /// Pre-training context length.
        original_max_position_embeddings: usize,
        /// cos/sin multiplier; inferred from `factor` (and `mscale`s) when absent.
        attention_factor: Option<f64>,
        /// Extrapolation boundary (default 32).
        beta_fast: f64,
        /// Interpolation boundary (default 1).
        beta_slow: f64,
        /// `mscale` (DeepSeek style), optional.
        mscale: Option<f64>,
        /// `mscale_all_dim`, optional.
        mscale_all_dim: Option<f64>,
        /// Whether the correction range is rounded to whole dimensions (default true).
        truncate: bool,
    },
}

/// Everything that determines the rotary frequencies of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    /// Base wavelength (`rope_theta`).
    pub theta: f64,
    /// Rotated dimensions per head (the head dimension).
    pub dim: usize,
    /// `max_position_embeddings` (the reference length of dynamic NTK).
    pub max_position_embeddings: usize,
    /// Frequency scaling.
    pub scaling: RopeScaling,
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

impl RopeConfig {
    /// Reads `rope_theta` and `rope_parameters` (transformers >= 5) or `rope_scaling` (older
    /// files) from a configuration, with `default_theta` when no theta is given.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an unknown `rope_type`, a missing required field, or
    /// `partial_rotary_factor` other than 1.
    pub fn from_hf(
        config: &ModelConfig,
        head_dim: usize,
        max_position_embeddings: usize,
        default_theta: f64,
    ) -> Result<Self, ModelError> {
        let path = &config.path;
        let params = config
            .get("rope_parameters")
            .or_else(|| config.get("rope_scaling"))
            .cloned()
            .unwrap_or(Value::Null);
        let key = if config.get("rope_parameters").is_some() {
            "rope_parameters"
        } else {
            "rope_scaling"
        };
        if !(params.is_null() || params.is_object()) {
            return Err(ModelError::config(
                path,
                key,
                "expected an object (or null)",
            ));
        }
        let field = |name: &str| params.get(name).filter(|v| !v.is_null());
        let err = |name: &str, msg: &str| ModelError::config(path, &format!("{key}.{name}"), msg);
        let theta = match field("rope_theta") {
            Some(v) => num(v).ok_or_else(|| err("rope_theta", "expected a number"))?,
            None => config.f64_opt("rope_theta")?.unwrap_or(default_theta),
        };
        if !(theta.is_finite() && theta > 0.0) {
            return Err(err("rope_theta", "must be a positive, finite number"));
        }
        let partial = match field("partial_rotary_factor") {
            Some(v) => num(v),
            None => config.f64_opt("partial_rotary_factor")?,
        };
        if let Some(p) = partial
            && (p - 1.0).abs() > f64::EPSILON
        {
            return Err(err(
                "partial_rotary_factor",
                "partial rotary embeddings are not supported",
            ));
        }
        let rope_type = field("rope_type")
            .or_else(|| field("type"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let factor = |required: bool| -> Result<Option<f64>, ModelError> {
            match field("factor") {
                Some(v) => match num(v) {
                    Some(f) if f.is_finite() && f > 0.0 => Ok(Some(f)),
                    Some(f) => Err(err(
                        "factor",
                        &format!("{f} is not a positive, finite number"),
                    )),
                    None => Err(err("factor", "expected a number")),
                },
                None if required => Err(err("factor", "missing")),
                None => Ok(None),
            }
        };
        let original_max = || -> Result<usize, ModelError> {
            if let Some(v) = config.usize_opt("original_max_position_embeddings")? {
                return Ok(v);
            }
            match field("original_max_position_embeddings") {
                Some(v) => v
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| err("original_max_position_embeddings", "expected an integer")),
                None => Ok(max_position_embeddings),
            }
        };
        let scaling = match rope_type.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: factor(true)?.unwrap_or(1.0),
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: factor(true)?.unwrap_or(1.0),
            },
            "llama3" => {
                let get = |name: &str| -> Result<f64, ModelError> {
                    field(name)
                        .and_then(num)
                        .ok_or_else(|| err(name, "missing or not a number"))
                };
                RopeScaling::Llama3 {
                    factor: factor(true)?.unwrap_or(1.0),
                    low_freq_factor: get("low_freq_factor")?,
                    high_freq_factor: get("high_freq_factor")?,
                    original_max_position_embeddings: original_max()?,
                }
            }
            "yarn" => {
                let original = original_max()?;
                if original == 0 {
                    return Err(err(
                        "original_max_position_embeddings",
                        "must be at least 1",
                    ));
                }
                let factor = match factor(false)? {
                    Some(f) => f,
                    None => max_position_embeddings as f64 / original as f64,
                };
                let opt = |name: &str| field(name).and_then(num);
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    attention_factor: opt("attention_factor"),
                    beta_fast: opt("beta_fast").filter(|b| *b != 0.0).unwrap_or(32.0),
                    beta_slow: opt("beta_slow").filter(|b| *b != 0.0).unwrap_or(1.0),
                    mscale: opt("mscale"),
                    mscale_all_dim: opt("mscale_all_dim"),
                    truncate: field("truncate").and_then(Value::as_bool).unwrap_or(true),
                }
            }
            other => {
                return Err(err(
                    "rope_type",
                    &format!(
                        "unsupported rope_type `{other}` (supported: default, linear, dynamic, \
                         llama3, yarn)"
                    ),
                ));
            }
        };
        Ok(Self {
            theta,
            dim: head_dim,
            max_position_embeddings,
            scaling,
        })
    }

    /// Plain RoPE with base `theta` over `dim` dimensions.
    pub fn plain(theta: f64, dim: usize, max_position_embeddings: usize) -> Self {
        Self {
            theta,
            dim,
            max_position_embeddings,
            scaling: RopeScaling::Default,
        }
    }

    /// `base ** (arange(0, dim, 2) / dim)` inverted, in f32 as torch computes it.
    fn base_inv_freq(base: f64, dim: usize) -> Vec<f32> {
        (0..dim)
            .step_by(2)
            .map(|i| {
                let exponent = i as f32 / dim as f32;
                1.0f32 / (base as f32).powf(exponent)
            })
            .collect()
    }

    /// Inverse frequencies (`dim / 2` values) and the cos/sin attention factor for a forward
    /// pass whose largest position is `seq_len - 1` (only dynamic NTK depends on it).
    pub fn inv_freq(&self, seq_len: usize) -> (Vec<f32>, f32) {
        let dim = self.dim;
        match &self.scaling {
            RopeScaling::Default => (Self::base_inv_freq(self.theta, dim), 1.0),
            RopeScaling::Linear { factor } => {
                let inv = Self::base_inv_freq(self.theta, dim)
                    .into_iter()
                    .map(|f| f / *factor as f32)
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Dynamic { factor } => {
                let max = self.max_position_embeddings as f64;
                let seq = (seq_len as f64).max(max);
                let d = dim as f64;
                let base = self.theta * ((factor * seq / max) - (factor - 1.0)).powf(d / (d - 2.0));
                (Self::base_inv_freq(base, dim), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let inv = Self::base_inv_freq(self.theta, dim)
                    .into_iter()
                    .map(|f| {
                        // torch: wavelen = 2 * pi / inv_freq in f32.
                        let wavelen = (2.0 * std::f64::consts::PI) as f32 / f;
                        // torch compares the f32 tensor with Python floats in f32.
                        let (low_w, high_w) = (low_wavelen as f32, high_wavelen as f32);
                        let scaled = if wavelen > low_w {
                            f / *factor as f32
                        } else {
                            f
                        };
                        let medium = wavelen >= high_w && wavelen <= low_w;
                        if medium {
                            let smooth = ((old as f32 / wavelen) - *low_freq_factor as f32)
                                / (*high_freq_factor as f32 - *low_freq_factor as f32);
                            (1.0 - smooth) * scaled / *factor as f32 + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention = match attention_factor {
                    Some(a) => *a,
                    None => match (mscale, mscale_all_dim) {
                        (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => {
                            get_mscale(*factor, *m) / get_mscale(*factor, *a)
                        }
                        _ => get_mscale(*factor, 1.0),
                    },
                };
                let d = dim as f64;
                let base = self.theta;
                let orig = *original_max_position_embeddings as f64;
                let correction_dim = |rot: f64| {
                    (d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(d - 1.0);
                let (min, max) = if low == high {
                    (low, high + 0.001)
                } else {
                    (low, high)
                };
                let inv = (0..dim / 2)
                    .map(|i| {
                        let exponent = (2 * i) as f32 / dim as f32;
                        let pos_freq = (base as f32).powf(exponent);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (*factor as f32 * pos_freq);
                        let ramp =
                            ((i as f32 - min as f32) / (max as f32 - min as f32)).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        interpolation * (1.0 - extrapolation_factor)
                            + extrapolation * extrapolation_factor
                    })
                    .collect();
                (inv, attention as f32)
            }
        }
    }
}

/// Rotary embedding applied to queries and keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    /// The frequency configuration.
    pub config: RopeConfig,
}

impl Rope {
    /// Wraps a configuration.
    pub fn new(config: RopeConfig) -> Self {
        Self { config }
    }

    /// cos and sin for the given positions, in f32, scaled by the attention factor.
    ///
    /// # Shapes
    /// - position_ids: `[batch, seq]`
    /// - output: two `[batch, 1, seq, dim]` tensors
    pub fn cos_sin(
        &self,
        position_ids: &Tensor<2, Int>,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let [batch, seq] = position_ids.dims();
        let max_pos: i64 = if matches!(self.config.scaling, RopeScaling::Dynamic { .. }) {
            position_ids.clone().max().into_scalar::<i64>()
        } else {
            0
        };
        let (inv_freq, attention) = self.config.inv_freq((max_pos.max(0) as usize) + 1);
        let half = inv_freq.len();
        let inv = Tensor::<3>::from_data(
            TensorData::new(inv_freq, [1, 1, half]),
            (device, DType::F32),
        );
        let pos = position_ids
            .clone()
            .cast(FloatDType::F32)
            .reshape([batch, seq, 1]);
        let freqs = pos
            .expand([batch, seq, half])
            .mul(inv.expand([batch, seq, half]));
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2);
        let mut cos = emb.clone().cos();
        let mut sin = emb.sin();
        if attention != 1.0 {
            cos = cos.mul_scalar(attention);
            sin = sin.mul_scalar(attention);
        }
        (cos.unsqueeze_dim(1), sin.unsqueeze_dim(1))
    }

    /// Applies the rotation `x * cos + rotate_half(x) * sin`, computing in the dtype of `x`.
    ///
    /// # Shapes
    /// - x: `[batch, heads, seq, dim]`
    /// - cos, sin: `[batch, 1, seq, dim]` (from [`Rope::cos_sin`])
    /// - output: like x
    pub fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let [b, h, s, d] = x.dims();
        let dtype = x.dtype();
        let cos = cos.clone().cast(dtype).expand([b, h, s, d]);
        let sin = sin.clone().cast(dtype).expand([b, h, s, d]);
        let x1 = x.clone().slice(s![.., .., .., 0..d / 2]);
        let x2 = x.clone().slice(s![.., .., .., d / 2..d]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x.mul(cos).add(rotated.mul(sin))
    }
}
