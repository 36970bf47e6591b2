//! The LLaMA family: `llama` (LLaMA 1/2/3/3.x, TinyLlama, SmolLM), `mistral`, `qwen2` and
//! `qwen3`, one decoder with per-type options.
//!
//! | `model_type` | q/k/v bias            | o bias           | q/k norm | sliding window                         |
//! |--------------|-----------------------|------------------|----------|----------------------------------------|
//! | `llama`      | `attention_bias`      | `attention_bias` | no       | no                                     |
//! | `mistral`    | no                    | no               | no       | `sliding_window` (all layers) when set |
//! | `qwen2`      | yes                   | no               | no       | `layer_types` / `use_sliding_window`   |
//! | `qwen3`      | `attention_bias`      | `attention_bias` | yes      | `layer_types` / `use_sliding_window`   |
//!
//! All use RMSNorm, SwiGLU (`down(silu(gate(x)) * up(x))`), grouped-query attention and
//! `rotate_half` RoPE with `rope_scaling`.

use burn::module::{Module, Param};
use burn::nn::Embedding;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_peft::{Linear, LinearConfig, LinearVisitor};
use serde::{Deserialize, Serialize};

use crate::attention::{MaskSpec, attention_bias, scaled_dot_product_attention};
use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::model::ForwardInput;
use crate::norm::{RmsNorm, RmsNormConfig};
use crate::rope::{Rope, RopeConfig, RopeScaling};
use crate::weights::WeightSource;

/// Which member of the family a [`LlamaConfig`] describes (its `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LlamaFamily {
    /// `llama`.
    Llama,
    /// `mistral`.
    Mistral,
    /// `qwen2`.
    Qwen2,
    /// `qwen3`.
    Qwen3,
}

impl LlamaFamily {
    /// The `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }

    /// The family member of a `model_type`, if it is one.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "llama" => Self::Llama,
            "mistral" => Self::Mistral,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            _ => return None,
        })
    }
}

/// Configuration of a [`LlamaModel`].
#[derive(burn::config::Config, Debug)]
pub struct LlamaConfig {
    /// Family member.
    pub family: LlamaFamily,
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
    /// Reads a `config.json` of a family member, with `transformers`' defaults for absent keys.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the key that is missing or unsupported (e.g. `hidden_act`
    /// other than `silu`).
    pub fn from_hf(config: &ModelConfig) -> Result<Self, ModelError> {
        let family = LlamaFamily::from_model_type(&config.model_type).ok_or_else(|| {
            ModelError::config(&config.path, "model_type", "not a LLaMA-family model")
        })?;
        let hidden_size = config.usize_req(&["hidden_size"])?;
        let heads = config.usize_req(&["num_attention_heads"])?;
        let layers = config.usize_req(&["num_hidden_layers"])?;
        let kv_heads = config
            .usize_opt("num_key_value_heads")?
            .unwrap_or(match family {
                LlamaFamily::Mistral => 8,
                LlamaFamily::Qwen2 | LlamaFamily::Qwen3 => 32,
                LlamaFamily::Llama => heads,
            });
        let head_dim = match config.usize_opt("head_dim")? {
            Some(d) => d,
            None if family == LlamaFamily::Qwen3 => 128,
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
            .unwrap_or(match family {
                LlamaFamily::Llama => 2048,
                LlamaFamily::Mistral => 4096 * 32,
                LlamaFamily::Qwen2 | LlamaFamily::Qwen3 => 32768,
            });
        let rope = RopeConfig::from_hf(config, head_dim, max_pos, 10_000.0)?;
        let attention_bias = config.bool_opt("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            LlamaFamily::Llama | LlamaFamily::Qwen3 => (attention_bias, attention_bias),
            LlamaFamily::Mistral => (false, false),
            LlamaFamily::Qwen2 => (true, false),
        };
        let mlp_bias = match family {
            LlamaFamily::Llama => config.bool_opt("mlp_bias")?.unwrap_or(false),
            _ => false,
        };
        let sliding_windows = sliding_windows(config, family, layers)?;
        Ok(Self {
            family,
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
            qk_norm: family == LlamaFamily::Qwen3,
            sliding_windows,
        })
    }

    /// The sliding window of layer `i`, if any.
    pub fn sliding_window(&self, layer: usize) -> Option<usize> {
        self.sliding_windows.get(layer).copied().flatten()
    }

    /// A randomly initialised model (PyTorch-default linear init, unit norms, N(0, 1)
    /// embedding), e.g. for training from scratch or tests.
    pub fn init(&self, device: &Device) -> LlamaModel {
        let h = self.hidden_size;
        let q_out = self.num_attention_heads * self.head_dim;
        let kv_out = self.num_key_value_heads * self.head_dim;
        let norm = |size| {
            RmsNormConfig::new(size)
                .with_eps(self.rms_norm_eps)
                .init(device)
        };
        let lin = |i, o, b| LinearConfig::new(i, o).with_bias(b).init(device);
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
        LlamaModel {
            embed_tokens: burn::nn::EmbeddingConfig::new(self.vocab_size, h).init(device),
            layers,
            norm: norm(h),
            lm_head: (!self.tie_word_embeddings).then(|| lin(h, self.vocab_size, false)),
            rope: Rope::new(self.rope.clone()),
            config: self.clone(),
        }
    }

    /// Loads the weights of a checkpoint with this configuration.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`] / [`ModelError::Shape`] naming the file and tensor.
    pub fn load(&self, weights: &WeightSource) -> Result<LlamaModel, ModelError> {
        let h = self.hidden_size;
        let q_out = self.num_attention_heads * self.head_dim;
        let kv_out = self.num_key_value_heads * self.head_dim;
        let norm = |name: &str, size: usize| -> Result<RmsNorm, ModelError> {
            Ok(RmsNorm::from_weight(
                weights.tensor(&format!("{name}.weight"), [size])?,
                self.rms_norm_eps,
            ))
        };
        let mut layers = Vec::with_capacity(self.num_hidden_layers);
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            layers.push(DecoderLayer {
                input_layernorm: norm(&format!("{p}.input_layernorm"), h)?,
                self_attn: Attention {
                    q_proj: weights.linear(&format!("{a}.q_proj"), h, q_out, self.qkv_bias)?,
                    k_proj: weights.linear(&format!("{a}.k_proj"), h, kv_out, self.qkv_bias)?,
                    v_proj: weights.linear(&format!("{a}.v_proj"), h, kv_out, self.qkv_bias)?,
                    o_proj: weights.linear(&format!("{a}.o_proj"), q_out, h, self.o_bias)?,
                    q_norm: if self.qk_norm {
                        Some(norm(&format!("{a}.q_norm"), self.head_dim)?)
                    } else {
                        None
                    },
                    k_norm: if self.qk_norm {
                        Some(norm(&format!("{a}.k_norm"), self.head_dim)?)
                    } else {
                        None
                    },
                    num_heads: self.num_attention_heads,
                    num_kv_heads: self.num_key_value_heads,
                    head_dim: self.head_dim,
                    sliding_window: self.sliding_window(i),
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm"), h)?,
                mlp: Mlp {
                    gate_proj: weights.linear(
                        &format!("{m}.gate_proj"),
                        h,
                        self.intermediate_size,
                        self.mlp_bias,
                    )?,
                    up_proj: weights.linear(
                        &format!("{m}.up_proj"),
                        h,
                        self.intermediate_size,
                        self.mlp_bias,
                    )?,
                    down_proj: weights.linear(
                        &format!("{m}.down_proj"),
                        self.intermediate_size,
                        h,
                        self.mlp_bias,
                    )?,
                },
            });
        }
        let embed = weights.tensor("model.embed_tokens.weight", [self.vocab_size, h])?;
        let lm_head = if self.tie_word_embeddings {
            None
        } else {
            Some(weights.linear("lm_head", h, self.vocab_size, false)?)
        };
        Ok(LlamaModel {
            embed_tokens: Embedding {
                weight: Param::from_tensor(embed),
            },
            layers,
            norm: norm("model.norm", h)?,
            lm_head,
            rope: Rope::new(self.rope.clone()),
            config: self.clone(),
        })
    }
}

/// Per-layer sliding windows as `transformers` derives them.
fn sliding_windows(
    config: &ModelConfig,
    family: LlamaFamily,
    layers: usize,
) -> Result<Vec<Option<usize>>, ModelError> {
    match family {
        LlamaFamily::Llama => Ok(Vec::new()),
        LlamaFamily::Mistral => {
            // MistralConfig's default window is 4096; `null` in the file disables it.
            let window = match config.raw.get("sliding_window") {
                None => Some(4096),
                Some(serde_json::Value::Null) => None,
                Some(_) => config.usize_opt("sliding_window")?,
            };
            Ok(vec![window; layers])
        }
        LlamaFamily::Qwen2 | LlamaFamily::Qwen3 => {
            let use_sw = config.bool_opt("use_sliding_window")?.unwrap_or(false);
            let window = if use_sw {
                match config.raw.get("sliding_window") {
                    None => Some(4096),
                    Some(serde_json::Value::Null) => None,
                    Some(_) => config.usize_opt("sliding_window")?,
                }
            } else {
                None
            };
            if let Some(types) = config.get("layer_types") {
                let types = types.as_array().ok_or_else(|| {
                    ModelError::config(&config.path, "layer_types", "expected a list")
                })?;
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
                    .collect()
            } else {
                let max_window_layers = config.usize_opt("max_window_layers")?.unwrap_or(28);
                Ok((0..layers)
                    .map(|i| window.filter(|_| i >= max_window_layers))
                    .collect())
            }
        }
    }
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
    /// - cos, sin: `[batch, 1, seq, head_dim]`; bias: `[batch, 1, seq, past + seq]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        bias: Option<&Tensor<4>>,
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
        let out = scaled_dot_product_attention(q, k, v, bias, (d as f64).powf(-0.5));
        Ok(self
            .o_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, h * d])))
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
    /// Typed configuration.
    #[module(skip)]
    pub config: LlamaConfig,
}

impl LlamaModel {
    /// Final hidden states (after the last norm).
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]` -> `[batch, seq, hidden]`
    pub fn forward_hidden(
        &self,
        input: &ForwardInput,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let device = input.input_ids.device();
        let [b, s] = input.input_ids.dims();
        if s == 0 {
            return Err(ModelError::Input("empty input_ids".into()));
        }
        let past = cache.as_ref().map_or(0, |c| c.len());
        let positions = match &input.position_ids {
            Some(p) => {
                if p.dims() != [b, s] {
                    return Err(ModelError::Input(format!(
                        "position_ids has shape {:?}, expected [{b}, {s}]",
                        p.dims()
                    )));
                }
                p.clone()
            }
            None => Tensor::<1, Int>::arange(past as i64..(past + s) as i64, &device)
                .reshape([1, s])
                .expand([b, s]),
        };
        let (cos, sin) = self.rope.cos_sin(&positions, &device);
        // One bias per distinct window; none at all when nothing can be masked.
        let mut biases: Vec<(Option<usize>, Option<Tensor<4>>)> = Vec::new();
        for layer in &self.layers {
            let w = layer.self_attn.sliding_window;
            if biases.iter().any(|(bw, _)| *bw == w) {
                continue;
            }
            let needs_mask = s > 1
                || input.attention_mask.is_some()
                || input.segment_ids.is_some()
                || w.is_some_and(|w| w < past + s);
            let bias = if needs_mask {
                let spec = MaskSpec {
                    attention_mask: input.attention_mask.as_ref(),
                    segment_ids: input.segment_ids.as_ref(),
                    sliding_window: w,
                };
                Some(attention_bias(b, s, past, &spec, &device)?)
            } else {
                None
            };
            biases.push((w, bias));
        }
        let mut x = self.embed_tokens.forward(input.input_ids.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            let w = layer.self_attn.sliding_window;
            let bias = biases
                .iter()
                .find(|(bw, _)| *bw == w)
                .and_then(|(_, bias)| bias.as_ref());
            let residual = x.clone();
            let h = layer.input_layernorm.forward(x);
            let h = layer.self_attn.forward(
                h,
                &cos,
                &sin,
                bias,
                cache.as_deref_mut().map(|c| (c, i)),
            )?;
            let x1 = residual.add(h);
            let h = layer
                .mlp
                .forward(layer.post_attention_layernorm.forward(x1.clone()));
            x = x1.add(h);
        }
        if let Some(cache) = cache {
            cache.advance(s);
        }
        Ok(self.norm.forward(x))
    }

    /// Logits from final hidden states.
    ///
    /// # Shapes
    /// - hidden `[batch, seq, hidden]` -> `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => lmflow_peft::linear::matmul_t(hidden, self.embed_tokens.weight.val(), None),
        }
    }

    /// An empty cache for this model.
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        KvCache::new(self.layers.len(), max_len)
    }

    /// Every parameter under its Hub name, in the stored dtype (tied heads omit
    /// `lm_head.weight`).
    pub fn state_dict(&self) -> Vec<(String, TensorData)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.weight.val().into_data(),
        )];
        let lin = |out: &mut Vec<(String, TensorData)>, name: String, l: &Linear| {
            out.push((format!("{name}.weight"), l.dense_weight().into_data()));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), b.val().into_data()));
            }
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.weight.val().into_data(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.val().into_data(),
            ));
            let a = &layer.self_attn;
            lin(&mut out, format!("{p}.self_attn.q_proj"), &a.q_proj);
            lin(&mut out, format!("{p}.self_attn.k_proj"), &a.k_proj);
            lin(&mut out, format!("{p}.self_attn.v_proj"), &a.v_proj);
            lin(&mut out, format!("{p}.self_attn.o_proj"), &a.o_proj);
            if let Some(n) = &a.q_norm {
                out.push((
                    format!("{p}.self_attn.q_norm.weight"),
                    n.weight.val().into_data(),
                ));
            }
            if let Some(n) = &a.k_norm {
                out.push((
                    format!("{p}.self_attn.k_norm.weight"),
                    n.weight.val().into_data(),
                ));
            }
            lin(&mut out, format!("{p}.mlp.gate_proj"), &layer.mlp.gate_proj);
            lin(&mut out, format!("{p}.mlp.up_proj"), &layer.mlp.up_proj);
            lin(&mut out, format!("{p}.mlp.down_proj"), &layer.mlp.down_proj);
        }
        out.push((
            "model.norm.weight".to_string(),
            self.norm.weight.val().into_data(),
        ));
        if let Some(head) = &self.lm_head {
            lin(&mut out, "lm_head".to_string(), head);
        }
        out
    }

    /// Replaces the rope scaling (e.g. to extend the context of a loaded model).
    pub fn set_rope_scaling(&mut self, scaling: RopeScaling) {
        self.rope.config.scaling = scaling.clone();
        self.config.rope.scaling = scaling;
    }
}

impl LinearVisitor for LlamaModel {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &layer.self_attn;
            f(&format!("{p}.self_attn.q_proj"), &a.q_proj);
            f(&format!("{p}.self_attn.k_proj"), &a.k_proj);
            f(&format!("{p}.self_attn.v_proj"), &a.v_proj);
            f(&format!("{p}.self_attn.o_proj"), &a.o_proj);
            f(&format!("{p}.mlp.gate_proj"), &layer.mlp.gate_proj);
            f(&format!("{p}.mlp.up_proj"), &layer.mlp.up_proj);
            f(&format!("{p}.mlp.down_proj"), &layer.mlp.down_proj);
        }
        if let Some(head) = &self.lm_head {
            f("lm_head", head);
        }
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut layer.self_attn;
            f(&format!("{p}.self_attn.q_proj"), &mut a.q_proj);
            f(&format!("{p}.self_attn.k_proj"), &mut a.k_proj);
            f(&format!("{p}.self_attn.v_proj"), &mut a.v_proj);
            f(&format!("{p}.self_attn.o_proj"), &mut a.o_proj);
            f(&format!("{p}.mlp.gate_proj"), &mut layer.mlp.gate_proj);
            f(&format!("{p}.mlp.up_proj"), &mut layer.mlp.up_proj);
            f(&format!("{p}.mlp.down_proj"), &mut layer.mlp.down_proj);
        }
        if let Some(head) = &mut self.lm_head {
            f("lm_head", head);
        }
    }

    fn visit_embeddings_mut(
        &mut self,
        f: &mut dyn FnMut(&str, &mut burn::module::Param<Tensor<2>>),
    ) {
        f("model.embed_tokens", &mut self.embed_tokens.weight);
    }
}
