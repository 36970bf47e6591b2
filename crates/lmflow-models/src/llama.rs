//! The LLaMA family: `llama` (LLaMA 1/2/3/3.x, TinyLlama, SmolLM), `mistral`, `ministral`,
//! `qwen2` and `qwen3`, one decoder whose members differ only in configuration
//! ([`LlamaVariant`]).
//!
//! | `model_type` | q/k/v bias            | o bias           | q/k norm | sliding window                         |
//! |--------------|-----------------------|------------------|----------|----------------------------------------|
//! | `llama`      | `attention_bias`      | `attention_bias` | no       | no                                     |
//! | `mistral`    | no                    | no               | no       | `sliding_window` (all layers) when set |
//! | `ministral`  | no                    | no               | no       | `sliding_window` on `layer_types`      |
//! | `qwen2`      | yes                   | no               | no       | `layer_types` / `use_sliding_window`   |
//! | `qwen3`      | `attention_bias`      | `attention_bias` | yes      | `layer_types` / `use_sliding_window`   |
//!
//! All use RMSNorm, SwiGLU (`down(silu(gate(x)) * up(x))`), grouped-query attention and
//! `rotate_half` RoPE with `rope_scaling`.
//!
//! Adding a member whose forward pass is LLaMA's is a [`LlamaVariant`] (its `config.json`
//! defaults and options) plus a row in [`MODEL_TYPES`](crate::model::MODEL_TYPES).

use std::sync::Arc;

use burn::module::Module;
use burn::nn::Embedding;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Distribution, Tensor};
use lmflow_peft::Linear;

use crate::attention::scaled_dot_product_attention;
use crate::attention_tiled::{AttentionImpl, LayerMask, TiledMask, tiled_attention};
use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::hub::{
    HubModule, HubPath, Init, TensorVisitor, WeightLayout, lazy_linear, lazy_param,
    visit_optional_linear,
};
use crate::input::{check_input, mask_bias, positions_or_default};
use crate::model::{CausalDecoder, Family, ForwardInput, LayerContext, Layerwise, model_type_row};
use crate::norm::{RmsNorm, RmsNormConfig};
use crate::rope::{Rope, RopeConfig, RopeScaling};
use crate::weights::WeightSource;

/// Which projections of a [`LlamaVariant`] carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBiases {
    /// q/k/v and o follow the `attention_bias` key (default false).
    FromConfig,
    /// q/k/v always, o never (Qwen2).
    QkvOnly,
    /// None.
    Never,
}

/// How a [`LlamaVariant`] chooses each layer's sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindows {
    /// Full causal attention everywhere.
    Never,
    /// `sliding_window` (default 4096, `null` disables) on every layer (Mistral).
    AllLayers,
    /// `sliding_window` (default 4096) on the layers `layer_types` marks `sliding_attention`;
    /// without `layer_types`, on every layer (Ministral).
    LayerTypes,
    /// As `LayerTypes`, but only with `use_sliding_window: true`, and without `layer_types`
    /// on the layers from `max_window_layers` (default 28) on (Qwen2, Qwen3).
    Qwen,
}

/// What distinguishes a member of the LLaMA family: `transformers`' defaults for absent
/// `config.json` keys and the options of its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaVariant {
    /// Default `num_key_value_heads` (`None`: `num_attention_heads`).
    pub default_kv_heads: Option<usize>,
    /// Default `max_position_embeddings`.
    pub default_max_position_embeddings: usize,
    /// Default `head_dim` (`None`: `hidden_size / num_attention_heads`).
    pub default_head_dim: Option<usize>,
    /// Attention projection biases.
    pub attention_biases: AttentionBiases,
    /// Whether the `mlp_bias` key is read (otherwise the MLP has no bias).
    pub mlp_bias_key: bool,
    /// RMSNorm on each query/key head before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Sliding-window attention.
    pub sliding_windows: SlidingWindows,
}

impl LlamaVariant {
    /// `llama` (`LlamaConfig`).
    pub const LLAMA: Self = Self {
        default_kv_heads: None,
        default_max_position_embeddings: 2048,
        default_head_dim: None,
        attention_biases: AttentionBiases::FromConfig,
        mlp_bias_key: true,
        qk_norm: false,
        sliding_windows: SlidingWindows::Never,
    };
    /// `mistral` (`MistralConfig`).
    pub const MISTRAL: Self = Self {
        default_kv_heads: Some(8),
        default_max_position_embeddings: 4096 * 32,
        default_head_dim: None,
        attention_biases: AttentionBiases::Never,
        mlp_bias_key: false,
        qk_norm: false,
        sliding_windows: SlidingWindows::AllLayers,
    };
    /// `ministral` (`MinistralConfig`: Mistral's defaults, Qwen2's layers without q/k/v
    /// bias, per-layer `layer_types`).
    pub const MINISTRAL: Self = Self {
        sliding_windows: SlidingWindows::LayerTypes,
        ..Self::MISTRAL
    };
    /// `qwen2` (`Qwen2Config`).
    pub const QWEN2: Self = Self {
        default_kv_heads: Some(32),
        default_max_position_embeddings: 32768,
        default_head_dim: None,
        attention_biases: AttentionBiases::QkvOnly,
        mlp_bias_key: false,
        qk_norm: false,
        sliding_windows: SlidingWindows::Qwen,
    };
    /// `qwen3` (`Qwen3Config`).
    pub const QWEN3: Self = Self {
        default_head_dim: Some(128),
        attention_biases: AttentionBiases::FromConfig,
        qk_norm: true,
        ..Self::QWEN2
    };
}

/// Configuration of a [`LlamaModel`].
#[derive(burn::config::Config, Debug)]
pub struct LlamaConfig {
    /// The `model_type` it was read from (`llama`, `mistral`, ...).
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Rotary embedding.
    pub rope: RopeConfig,
    /// Maximum sequence length the model was trained for.
    #[config(default = 2048)]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
    /// Whether `lm_head` shares the token embedding.
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    #[config(default = false)]
    pub qkv_bias: bool,
    /// Bias on the output projection.
    #[config(default = false)]
    pub o_bias: bool,
    /// Bias on MLP projections (`mlp_bias`).
    #[config(default = false)]
    pub mlp_bias: bool,
    /// RMSNorm on each query/key head before RoPE (Qwen3).
    #[config(default = false)]
    pub qk_norm: bool,
    /// Per-layer sliding window (`None`: full causal attention); empty means none anywhere.
    #[config(default = "Vec::new()")]
    pub sliding_windows: Vec<Option<usize>>,
}

fn unsupported_if(
    cond: bool,
    config: &ModelConfig,
    key: &str,
    msg: &str,
) -> Result<(), ModelError> {
    if cond {
        Err(ModelError::config(&config.path, key, msg))
    } else {
        Ok(())
    }
}

impl LlamaConfig {
    /// Reads a `config.json` of a family member (its `model_type` picks the
    /// [`LlamaVariant`] from [`MODEL_TYPES`](crate::model::MODEL_TYPES)).
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the key that is missing or unsupported (e.g. `hidden_act`
    /// other than `silu`), or a `model_type` outside the family.
    pub fn from_hf(config: &ModelConfig) -> Result<Self, ModelError> {
        match model_type_row(&config.model_type).map(|row| row.family) {
            Some(Family::Llama(variant)) => Self::from_hf_variant(config, &variant),
            _ => Err(ModelError::config(
                &config.path,
                "model_type",
                "not a LLaMA-family model",
            )),
        }
    }

    /// Reads a `config.json` with the defaults and options of `variant`.
    ///
    /// # Errors
    /// As [`LlamaConfig::from_hf`].
    pub fn from_hf_variant(
        config: &ModelConfig,
        variant: &LlamaVariant,
    ) -> Result<Self, ModelError> {
        let hidden_size = config.usize_req(&["hidden_size"])?;
        let heads = config.usize_req(&["num_attention_heads"])?;
        let layers = config.usize_req(&["num_hidden_layers"])?;
        let kv_heads = config
            .usize_opt("num_key_value_heads")?
            .unwrap_or(variant.default_kv_heads.unwrap_or(heads));
        let head_dim = match config.usize_opt("head_dim")?.or(variant.default_head_dim) {
            Some(d) => d,
            None => {
                unsupported_if(
                    heads == 0 || hidden_size % heads != 0,
                    config,
                    "num_attention_heads",
                    "hidden_size is not a multiple of num_attention_heads",
                )?;
                hidden_size / heads
            }
        };
        unsupported_if(
            kv_heads == 0 || heads % kv_heads != 0,
            config,
            "num_key_value_heads",
            "num_attention_heads must be a multiple of num_key_value_heads",
        )?;
        let act = config.str_opt("hidden_act")?.unwrap_or("silu");
        unsupported_if(
            act != "silu",
            config,
            "hidden_act",
            &format!("unsupported activation `{act}` (supported: silu)"),
        )?;
        if let Some(tp) = config.usize_opt("pretraining_tp")? {
            unsupported_if(
                tp > 1,
                config,
                "pretraining_tp",
                "pretraining_tp > 1 is not supported",
            )?;
        }
        let max_pos = config
            .usize_opt("max_position_embeddings")?
            .unwrap_or(variant.default_max_position_embeddings);
        let rope = RopeConfig::from_hf(config, head_dim, max_pos, 10_000.0)?;
        let attention_bias = config.bool_opt("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match variant.attention_biases {
            AttentionBiases::FromConfig => (attention_bias, attention_bias),
            AttentionBiases::QkvOnly => (true, false),
            AttentionBiases::Never => (false, false),
        };
        let mlp_bias = variant.mlp_bias_key && config.bool_opt("mlp_bias")?.unwrap_or(false);
        Ok(Self {
            model_type: config.model_type.clone(),
            vocab_size: config.usize_req(&["vocab_size"])?,
            hidden_size,
            intermediate_size: config.usize_req(&["intermediate_size"])?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rope,
            max_position_embeddings: max_pos,
            rms_norm_eps: config.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            tie_word_embeddings: config.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm: variant.qk_norm,
            sliding_windows: sliding_windows(config, variant.sliding_windows, layers)?,
        })
    }

    /// The sliding window of layer `i`, if any.
    pub fn sliding_window(&self, layer: usize) -> Option<usize> {
        self.sliding_windows.get(layer).copied().flatten()
    }

    /// A randomly initialised model (PyTorch-default linear init, unit norms, N(0, 1)
    /// embedding), e.g. for training from scratch or tests. Weights are drawn lazily, on first
    /// use.
    pub fn init(&self, device: &Device) -> LlamaModel {
        let h = self.hidden_size;
        let q_out = self.num_attention_heads * self.head_dim;
        let kv_out = self.num_key_value_heads * self.head_dim;
        let norm = |size| {
            RmsNormConfig::new(size)
                .with_eps(self.rms_norm_eps)
                .init(device)
        };
        // PyTorch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
        let lin = |i: usize, o: usize, b: bool| {
            let k = 1.0 / (i as f64).sqrt();
            let init = Init::Random(Distribution::Uniform(-k, k));
            lazy_linear(i, o, device, init, b.then_some(init))
        };
        let layers = (0..self.num_hidden_layers)
            .map(|i| DecoderLayer {
                input_layernorm: norm(h),
                self_attn: Attention {
                    q_proj: lin(h, q_out, self.qkv_bias),
                    k_proj: lin(h, kv_out, self.qkv_bias),
                    v_proj: lin(h, kv_out, self.qkv_bias),
                    o_proj: lin(q_out, h, self.o_bias),
                    q_norm: self.qk_norm.then(|| norm(self.head_dim)),
                    k_norm: self.qk_norm.then(|| norm(self.head_dim)),
                    num_heads: self.num_attention_heads,
                    num_kv_heads: self.num_key_value_heads,
                    head_dim: self.head_dim,
                    sliding_window: self.sliding_window(i),
                },
                post_attention_layernorm: norm(h),
                mlp: Mlp {
                    gate_proj: lin(h, self.intermediate_size, self.mlp_bias),
                    up_proj: lin(h, self.intermediate_size, self.mlp_bias),
                    down_proj: lin(self.intermediate_size, h, self.mlp_bias),
                },
            })
            .collect();
        let embed = [self.vocab_size, h];
        LlamaModel {
            embed_tokens: Embedding {
                weight: lazy_param(embed, device, move |d| {
                    Tensor::random(embed, Distribution::Normal(0.0, 1.0), d)
                }),
            },
            layers,
            norm: norm(h),
            lm_head: (!self.tie_word_embeddings).then(|| lin(h, self.vocab_size, false)),
            rope: Rope::new(self.rope.clone()),
            attention_impl: AttentionImpl::default(),
            config: self.clone(),
        }
    }

    /// Loads the weights of a checkpoint with this configuration.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`] / [`ModelError::Shape`] naming the file and tensor.
    pub fn load(&self, weights: &WeightSource) -> Result<LlamaModel, ModelError> {
        crate::hub::load(self.init(weights.device()), weights)
    }
}

/// Per-layer sliding windows as `transformers` derives them.
fn sliding_windows(
    config: &ModelConfig,
    rule: SlidingWindows,
    layers: usize,
) -> Result<Vec<Option<usize>>, ModelError> {
    // The configs' default window is 4096; `null` in the file disables it.
    let window = || -> Result<Option<usize>, ModelError> {
        match config.raw.get("sliding_window") {
            None => Ok(Some(4096)),
            Some(serde_json::Value::Null) => Ok(None),
            Some(_) => config.usize_opt("sliding_window"),
        }
    };
    match rule {
        SlidingWindows::Never => Ok(Vec::new()),
        SlidingWindows::AllLayers => Ok(vec![window()?; layers]),
        SlidingWindows::LayerTypes => {
            let window = window()?;
            Ok(layer_types(config, layers, window)?.unwrap_or_else(|| vec![window; layers]))
        }
        SlidingWindows::Qwen => {
            let window = if config.bool_opt("use_sliding_window")?.unwrap_or(false) {
                window()?
            } else {
                None
            };
            match layer_types(config, layers, window)? {
                Some(windows) => Ok(windows),
                None => {
                    let max_window_layers = config.usize_opt("max_window_layers")?.unwrap_or(28);
                    Ok((0..layers)
                        .map(|i| window.filter(|_| i >= max_window_layers))
                        .collect())
                }
            }
        }
    }
}

/// `window` on the layers `layer_types` marks `sliding_attention`; `None` without the key.
fn layer_types(
    config: &ModelConfig,
    layers: usize,
    window: Option<usize>,
) -> Result<Option<Vec<Option<usize>>>, ModelError> {
    let Some(types) = config.get("layer_types") else {
        return Ok(None);
    };
    let types = types
        .as_array()
        .ok_or_else(|| ModelError::config(&config.path, "layer_types", "expected a list"))?;
    if types.len() != layers {
        return Err(ModelError::config(
            &config.path,
            "layer_types",
            format!("has {} entries for {layers} layers", types.len()),
        ));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(None),
            Some("sliding_attention") => Ok(window),
            _ => Err(ModelError::config(
                &config.path,
                "layer_types",
                format!("unsupported layer type {t}"),
            )),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// SwiGLU feed-forward block.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `gate_proj`.
    pub gate_proj: Linear,
    /// `up_proj`.
    pub up_proj: Linear,
    /// `down_proj`.
    pub down_proj: Linear,
}

impl Mlp {
    /// `down(silu(gate(x)) * up(x))`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate.mul(self.up_proj.forward(x)))
    }
}

impl HubModule for Mlp {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        for (name, linear) in [
            ("gate_proj", &mut self.gate_proj),
            ("up_proj", &mut self.up_proj),
            ("down_proj", &mut self.down_proj),
        ] {
            v.linear(&path.pp(name), linear, WeightLayout::OutIn)?;
        }
        Ok(())
    }
}

/// Grouped-query self-attention with RoPE.
#[derive(Module, Debug)]
pub struct Attention {
    /// `q_proj` `[heads * head_dim, hidden]`.
    pub q_proj: Linear,
    /// `k_proj` `[kv_heads * head_dim, hidden]`.
    pub k_proj: Linear,
    /// `v_proj` `[kv_heads * head_dim, hidden]`.
    pub v_proj: Linear,
    /// `o_proj` `[hidden, heads * head_dim]`.
    pub o_proj: Linear,
    /// Per-head query norm (Qwen3).
    pub q_norm: Option<RmsNorm>,
    /// Per-head key norm (Qwen3).
    pub k_norm: Option<RmsNorm>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Sliding window of this layer.
    pub sliding_window: Option<usize>,
}

impl Attention {
    /// Attention over the current tokens and any cached ones.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    /// - cos, sin: `[batch, 1, seq, head_dim]`; a dense mask: `[batch, 1, seq, past + seq]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: LayerMask<'_>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor<3>, ModelError> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let mut q = self.q_proj.forward(x.clone()).reshape([b, s, h, d]);
        let mut k = self.k_proj.forward(x.clone()).reshape([b, s, kvh, d]);
        let v = self
            .v_proj
            .forward(x)
            .reshape([b, s, kvh, d])
            .swap_dims(1, 2);
        if let Some(norm) = &self.q_norm {
            q = norm.forward(q);
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(k);
        }
        let q = Rope::apply(q.swap_dims(1, 2), cos, sin);
        let k = Rope::apply(k.swap_dims(1, 2), cos, sin);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.update(layer, k, v)?,
            None => (k, v),
        };
        let scale = (d as f64).powf(-0.5);
        let out = match mask {
            LayerMask::Dense(bias) => scaled_dot_product_attention(q, k, v, bias, scale),
            LayerMask::Tiled(tiled) => tiled_attention(q, k, v, tiled, self.sliding_window, scale)?,
        };
        Ok(self
            .o_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, h * d])))
    }
}

impl HubModule for Attention {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        for (name, linear) in [
            ("q_proj", &mut self.q_proj),
            ("k_proj", &mut self.k_proj),
            ("v_proj", &mut self.v_proj),
            ("o_proj", &mut self.o_proj),
        ] {
            v.linear(&path.pp(name), linear, WeightLayout::OutIn)?;
        }
        self.q_norm.visit_tensors(&path.pp("q_norm"), v)?;
        self.k_norm.visit_tensors(&path.pp("k_norm"), v)
    }
}

/// Pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward block.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// One layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    fn forward(
        &self,
        x: Tensor<3>,
        (cos, sin): (&Tensor<4>, &Tensor<4>),
        mask: LayerMask<'_>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor<3>, ModelError> {
        let h = self.input_layernorm.forward(x.clone());
        let x = x.add(self.self_attn.forward(h, cos, sin, mask, cache)?);
        let h = self
            .mlp
            .forward(self.post_attention_layernorm.forward(x.clone()));
        Ok(x.add(h))
    }
}

impl HubModule for DecoderLayer {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        self.input_layernorm
            .visit_tensors(&path.pp("input_layernorm"), v)?;
        self.self_attn.visit_tensors(&path.pp("self_attn"), v)?;
        self.post_attention_layernorm
            .visit_tensors(&path.pp("post_attention_layernorm"), v)?;
        self.mlp.visit_tensors(&path.pp("mlp"), v)
    }
}

/// A LLaMA-family causal language model.
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embedding `[vocab, hidden]` (Hub `model.embed_tokens`).
    pub embed_tokens: Embedding,
    /// Decoder layers (Hub `model.layers.{i}`).
    pub layers: Vec<DecoderLayer>,
    /// Final norm (Hub `model.norm`).
    pub norm: RmsNorm,
    /// Output projection; `None` when tied to `embed_tokens` (the logits then use the embedding
    /// weight, and saving writes no `lm_head.weight`, as `transformers` does).
    pub lm_head: Option<Linear>,
    /// Rotary embedding.
    #[module(skip)]
    pub rope: Rope,
    /// Attention implementation (see [`LlamaModel::set_attention_impl`]).
    #[module(skip)]
    pub attention_impl: AttentionImpl,
    /// Typed configuration.
    #[module(skip)]
    pub config: LlamaConfig,
}

impl HubModule for LlamaModel {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        let model = path.pp("model");
        v.embedding(&model.pp("embed_tokens"), &mut self.embed_tokens.weight)?;
        self.layers.visit_tensors(&model.pp("layers"), v)?;
        self.norm.visit_tensors(&model.pp("norm"), v)?;
        visit_optional_linear(
            v,
            &path.pp("lm_head"),
            &mut self.lm_head,
            WeightLayout::OutIn,
        )
    }
}

impl LlamaModel {
    /// Chooses the attention implementation: [`AttentionImpl::Tiled`] keeps memory linear in
    /// the sequence (for long-sequence training), [`AttentionImpl::Eager`] materialises the
    /// scores, [`AttentionImpl::Auto`] (the default) tiles passes of at least
    /// [`crate::attention_tiled::AUTO_TILED_MIN_SEQ`] tokens.
    pub fn set_attention_impl(&mut self, attention: AttentionImpl) {
        self.attention_impl = attention;
    }

    /// Replaces the rope scaling (e.g. to extend the context of a loaded model).
    pub fn set_rope_scaling(&mut self, scaling: RopeScaling) {
        self.rope.config.scaling = scaling.clone();
        self.config.rope.scaling = scaling;
    }
}

impl LlamaModel {
    /// The input's `inputs_embeds` when given (checked to be `[batch, seq, hidden]`), else the
    /// token embeddings of its `input_ids`.
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]` -> `[batch, seq, hidden]`
    ///
    /// # Errors
    /// [`ModelError::Input`] for `inputs_embeds` of another shape.
    pub fn input_embeddings(&self, input: &ForwardInput) -> Result<Tensor<3>, ModelError> {
        match &input.inputs_embeds {
            Some(embeds) => {
                let [b, s] = input.input_ids.dims();
                let want = [b, s, self.config.hidden_size];
                if embeds.dims() != want {
                    return Err(ModelError::Input(format!(
                        "inputs_embeds has shape {:?}, expected {want:?} ([batch, seq, hidden])",
                        embeds.dims()
                    )));
                }
                Ok(embeds.clone())
            }
            None => Ok(self.embed_tokens.forward(input.input_ids.clone())),
        }
    }
}

/// One attention bias per distinct sliding window.
type WindowBiases = Vec<(Option<usize>, Option<Tensor<4>>)>;

/// Rotary `cos` and `sin`, the attention biases, and the tiled mask of one pass.
type PassConstants = (Tensor<4>, Tensor<4>, WindowBiases, Option<Arc<TiledMask>>);

impl LlamaModel {
    /// Rotary tables and the attention bias of each distinct window (none at all when nothing
    /// can be masked) for one pass, or, when the pass uses tiled attention, its tiled mask (and
    /// no bias).
    fn pass_constants(
        &self,
        input: &ForwardInput,
        past: usize,
    ) -> Result<PassConstants, ModelError> {
        let device = input.input_ids.device();
        let positions = positions_or_default(input, past);
        let (cos, sin) = self.rope.cos_sin(&positions, &device);
        let [batch, seq] = input.input_ids.dims();
        if self.attention_impl.use_tiled(seq) {
            let tiled = TiledMask::new(
                batch,
                seq,
                past,
                input.attention_mask.as_ref(),
                input.segment_ids.as_ref(),
            )?;
            return Ok((cos, sin, Vec::new(), Some(Arc::new(tiled))));
        }
        let mut biases: WindowBiases = Vec::new();
        for layer in &self.layers {
            let w = layer.self_attn.sliding_window;
            if !biases.iter().any(|(bw, _)| *bw == w) {
                biases.push((w, mask_bias(input, past, w)?));
            }
        }
        Ok((cos, sin, biases, None))
    }
}

impl Layerwise for LlamaModel {
    fn embed(&self, input: &ForwardInput) -> Result<(Tensor<3>, LayerContext), ModelError> {
        check_input(input, self.config.vocab_size, 0)?;
        let (cos, sin, windows, tiled) = self.pass_constants(input, 0)?;
        let biases = self
            .layers
            .iter()
            .map(|layer| {
                let w = layer.self_attn.sliding_window;
                windows
                    .iter()
                    .find(|(bw, _)| *bw == w)
                    .and_then(|(_, bias)| bias.clone())
            })
            .collect();
        let x = self.input_embeddings(input)?;
        Ok((
            x,
            LayerContext {
                cos,
                sin,
                biases,
                tiled,
            },
        ))
    }

    fn layer(
        &self,
        index: usize,
        x: Tensor<3>,
        context: &LayerContext,
    ) -> Result<Tensor<3>, ModelError> {
        let layer = self.layers.get(index).ok_or_else(|| {
            ModelError::Input(format!(
                "layer {index} does not exist ({} layers)",
                self.layers.len()
            ))
        })?;
        let mask = match &context.tiled {
            Some(tiled) => LayerMask::Tiled(tiled),
            None => LayerMask::Dense(context.biases.get(index).and_then(|b| b.as_ref())),
        };
        layer.forward(x, (&context.cos, &context.sin), mask, None)
    }

    fn final_norm(&self, x: Tensor<3>) -> Tensor<3> {
        self.norm.forward(x)
    }
}

impl CausalDecoder for LlamaModel {
    fn forward_hidden(
        &self,
        input: &ForwardInput,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        check_input(input, self.config.vocab_size, past)?;
        let (cos, sin, biases, tiled) = self.pass_constants(input, past)?;
        let mut x = self.input_embeddings(input)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let w = layer.self_attn.sliding_window;
            let mask = match &tiled {
                Some(tiled) => LayerMask::Tiled(tiled),
                None => LayerMask::Dense(
                    biases
                        .iter()
                        .find(|(bw, _)| *bw == w)
                        .and_then(|(_, bias)| bias.as_ref()),
                ),
            };
            x = layer.forward(x, (&cos, &sin), mask, cache.as_deref_mut().map(|c| (c, i)))?;
        }
        if let Some(cache) = cache {
            cache.advance(input.input_ids.dims()[1]);
        }
        Ok(self.norm.forward(x))
    }

    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => lmflow_peft::linear::matmul_t(hidden, self.embed_tokens.weight.val(), None),
        }
    }

    fn model_type(&self) -> &str {
        &self.config.model_type
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn max_position_embeddings(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn tied_embeddings(&self) -> bool {
        self.lm_head.is_none()
    }
}
