//! OPT and Galactica (`model_type: "opt"`), as `transformers`' `OPTForCausalLM`.
//!
//! - Learned positions with an offset of 2 (`embed_positions` has `max_position_embeddings + 2`
//!   rows). Without explicit `position_ids` they are derived from the attention mask exactly as
//!   `OPTDecoder.forward` does: `cumsum(mask) * mask - 1`, cut to the new positions, so
//!   left-padded rows start at position 0 and padding sits at position -1 (row 1 of the table).
//! - `do_layer_norm_before`: pre-LayerNorm blocks (125m, 1.3b and larger, Galactica) or
//!   post-LayerNorm blocks (350m); the decoder-level `final_layer_norm` exists only for
//!   pre-LayerNorm models (and not with `_remove_final_layer_norm`).
//! - `activation_function` (ReLU for OPT, GELU for Galactica; any [`Activation`]).
//! - `word_embed_proj_dim != hidden_size` (350m): token embeddings and the LM head live in the
//!   smaller dimension, with `project_in` / `project_out` (no bias) around the decoder.
//! - `enable_bias` (all attention and MLP projections) and `layer_norm_elementwise_affine`.
//! - The LM head is tied to `embed_tokens` unless `tie_word_embeddings` is `false`: logits are
//!   computed with the embedding itself, so saving writes only `embed_tokens`, as
//!   `transformers` does.
//!
//! Tensor names: `model.decoder.*` and `lm_head.weight` (when untied); checkpoints stored without
//! the `model.` prefix (`decoder.layers.0...`, as some Hub OPT checkpoints are) load too.
//! [`LinearVisitor`](lmflow_peft::LinearVisitor) paths: `model.decoder.layers.N.self_attn.{q,k,v,out}_proj`,
//! `model.decoder.layers.N.{fc1,fc2}`, `model.decoder.project_in`, `model.decoder.project_out`,
//! `lm_head` (untied only).
//!
//! The `hidden_states` output is `transformers`' `last_hidden_state`: after the final LayerNorm
//! and after `project_out`, i.e. `[batch, seq, word_embed_proj_dim]`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Int, Tensor, s};
use lmflow_peft::Linear;

use crate::activation::Activation;
use crate::attention::scaled_dot_product_attention;
use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::hub::{
    HubModule, HubPath, Init, TensorVisitor, WeightLayout, lazy_linear, lazy_param,
    visit_optional_linear,
};
use crate::input::{check_ids, check_input, mask_bias};
use crate::layer_norm::{LayerNorm, LayerNormConfig};
use crate::model::{CausalDecoder, ForwardInput};
use crate::weights::WeightSource;

/// OPT's position offset: position `p` reads row `p + 2` of `embed_positions`.
pub const POSITION_OFFSET: usize = 2;

/// Typed OPT hyper-parameters with `transformers`' `OPTConfig` defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OptConfig {
    /// `vocab_size` (default 50272).
    pub vocab_size: usize,
    /// `hidden_size` (default 768).
    pub hidden_size: usize,
    /// `num_hidden_layers` (default 12).
    pub num_hidden_layers: usize,
    /// `ffn_dim` (default 3072).
    pub ffn_dim: usize,
    /// `num_attention_heads` (default 12).
    pub num_attention_heads: usize,
    /// `max_position_embeddings` (default 2048).
    pub max_position_embeddings: usize,
    /// `do_layer_norm_before` (default true).
    pub do_layer_norm_before: bool,
    /// `_remove_final_layer_norm` (default false).
    pub remove_final_layer_norm: bool,
    /// `word_embed_proj_dim` (default `hidden_size`).
    pub word_embed_proj_dim: usize,
    /// `activation_function` (default `relu`).
    pub activation: Activation,
    /// `enable_bias` (default true).
    pub enable_bias: bool,
    /// `layer_norm_elementwise_affine` (default true).
    pub layer_norm_elementwise_affine: bool,
    /// `tie_word_embeddings` (default true).
    pub tie_word_embeddings: bool,
    /// `init_std`: standard deviation of the random initialisation (default 0.02).
    pub init_std: f64,
    /// `pad_token_id` (default 1): its embedding row is zero in a fresh model.
    pub pad_token_id: Option<usize>,
}

/// LayerNorm epsilon of OPT (`nn.LayerNorm`'s default; OPT's configuration has no key for it).
pub const LAYER_NORM_EPS: f64 = 1e-5;

impl OptConfig {
    /// Reads the OPT keys of a `config.json`, with `OPTConfig`'s defaults for absent keys.
    ///
    /// # Errors
    /// [`ModelError::Config`] for malformed values, an unknown `activation_function` or
    /// `hidden_size` not divisible by `num_attention_heads`.
    pub fn from_hf(config: &ModelConfig) -> Result<Self, ModelError> {
        let get = |key: &str, default: usize| -> Result<usize, ModelError> {
            Ok(config.usize_opt(key)?.unwrap_or(default))
        };
        let flag = |key: &str, default: bool| -> Result<bool, ModelError> {
            Ok(config.bool_opt(key)?.unwrap_or(default))
        };
        let hidden_size = get("hidden_size", 768)?;
        let heads = get("num_attention_heads", 12)?;
        if heads == 0 || hidden_size % heads != 0 {
            return Err(ModelError::config(
                &config.path,
                "num_attention_heads",
                format!("hidden_size {hidden_size} is not divisible by {heads} heads"),
            ));
        }
        let act_name = config.str_opt("activation_function")?.unwrap_or("relu");
        let activation = Activation::from_hf_name(act_name).ok_or_else(|| {
            ModelError::config(
                &config.path,
                "activation_function",
                format!(
                    "`{act_name}` is not supported (supported: {})",
                    Activation::SUPPORTED
                ),
            )
        })?;
        Ok(Self {
            vocab_size: get("vocab_size", 50272)?,
            hidden_size,
            num_hidden_layers: get("num_hidden_layers", 12)?,
            ffn_dim: get("ffn_dim", 3072)?,
            num_attention_heads: heads,
            max_position_embeddings: get("max_position_embeddings", 2048)?,
            do_layer_norm_before: flag("do_layer_norm_before", true)?,
            remove_final_layer_norm: flag("_remove_final_layer_norm", false)?,
            word_embed_proj_dim: get("word_embed_proj_dim", hidden_size)?,
            activation,
            enable_bias: flag("enable_bias", true)?,
            layer_norm_elementwise_affine: flag("layer_norm_elementwise_affine", true)?,
            tie_word_embeddings: flag("tie_word_embeddings", true)?,
            init_std: config.f64_opt("init_std")?.unwrap_or(0.02),
            pad_token_id: match config.get("pad_token_id") {
                None => None,
                Some(_) => config.usize_opt("pad_token_id")?,
            },
        })
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether the decoder has a final LayerNorm.
    pub fn has_final_layer_norm(&self) -> bool {
        self.do_layer_norm_before && !self.remove_final_layer_norm
    }

    fn layer_norm(&self, device: &Device) -> LayerNorm {
        LayerNormConfig::new(self.hidden_size)
            .with_eps(LAYER_NORM_EPS)
            .with_elementwise_affine(self.layer_norm_elementwise_affine)
            .init(device)
    }

    /// A randomly initialised model as `OPTPreTrainedModel._init_weights` draws it: weights and
    /// embeddings `N(0, init_std)` (the `pad_token_id` row of `embed_tokens` zero), biases 0,
    /// LayerNorms 1/0.
    pub fn init(&self, device: &Device) -> OptModel {
        let d = self.hidden_size;
        let p = self.word_embed_proj_dim;
        let std = Init::Random(Distribution::Normal(0.0, self.init_std));
        let lin = |d_in: usize, d_out: usize, bias: bool| {
            lazy_linear(d_in, d_out, device, std, bias.then_some(Init::Zeros))
        };
        let b = self.enable_bias;
        let layers = (0..self.num_hidden_layers)
            .map(|_| OptDecoderLayer {
                self_attn: OptAttention {
                    q_proj: lin(d, d, b),
                    k_proj: lin(d, d, b),
                    v_proj: lin(d, d, b),
                    out_proj: lin(d, d, b),
                    num_heads: self.num_attention_heads,
                },
                self_attn_layer_norm: self.layer_norm(device),
                fc1: lin(d, self.ffn_dim, b),
                fc2: lin(self.ffn_dim, d, b),
                final_layer_norm: self.layer_norm(device),
                do_layer_norm_before: self.do_layer_norm_before,
                activation: self.activation,
            })
            .collect();
        let vocab = self.vocab_size;
        let pad = self.pad_token_id.filter(|&t| t < vocab);
        let embed_tokens = lazy_param([vocab, p], device, move |dev| {
            let table = std.tensor([vocab, p], dev);
            match pad {
                Some(pad) => table.slice_assign(s![pad..pad + 1, ..], Tensor::zeros([1, p], dev)),
                None => table,
            }
        });
        let positions = [self.max_position_embeddings + POSITION_OFFSET, d];
        OptModel {
            embed_tokens,
            embed_positions: lazy_param(positions, device, move |dev| std.tensor(positions, dev)),
            project_in: (p != d).then(|| lin(p, d, false)),
            project_out: (p != d).then(|| lin(d, p, false)),
            layers,
            final_layer_norm: self.has_final_layer_norm().then(|| self.layer_norm(device)),
            lm_head: (!self.tie_word_embeddings).then(|| lin(p, self.vocab_size, false)),
            config: self.clone(),
        }
    }

    /// Loads a checkpoint with this configuration (tensor names: module docs).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors, naming the file and tensor.
    pub fn load(&self, weights: &WeightSource) -> Result<OptModel, ModelError> {
        crate::hub::load(self.init(weights.device()), weights)
    }
}

/// Multi-head self-attention with separate projections.
#[derive(Module, Debug)]
pub struct OptAttention {
    /// `self_attn.q_proj`.
    pub q_proj: Linear,
    /// `self_attn.k_proj`.
    pub k_proj: Linear,
    /// `self_attn.v_proj`.
    pub v_proj: Linear,
    /// `self_attn.out_proj`.
    pub out_proj: Linear,
    /// Number of heads.
    pub num_heads: usize,
}

impl OptAttention {
    /// # Shapes
    /// - x: `[batch, seq, hidden]`, bias: `[batch, 1, seq, past + seq]`
    /// - output: `[batch, seq, hidden]`
    fn forward(
        &self,
        x: Tensor<3>,
        bias: Option<&Tensor<4>>,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let [b, s, d] = x.dims();
        let hd = d / self.num_heads;
        let heads = |t: Tensor<3>| t.reshape([b, s, self.num_heads, hd]).swap_dims(1, 2);
        // transformers scales the queries before the product (`q_proj(x) * scaling`).
        let q = heads(self.q_proj.forward(x.clone()) * (hd as f64).powf(-0.5));
        let mut k = heads(self.k_proj.forward(x.clone()));
        let mut v = heads(self.v_proj.forward(x));
        if let Some(cache) = cache {
            (k, v) = cache.update(layer, k, v)?;
        }
        let out = scaled_dot_product_attention(q, k, v, bias, 1.0);
        Ok(self
            .out_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, d])))
    }
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct OptDecoderLayer {
    /// `self_attn`.
    pub self_attn: OptAttention,
    /// `self_attn_layer_norm`.
    pub self_attn_layer_norm: LayerNorm,
    /// `fc1`: `[ffn_dim, hidden]`.
    pub fc1: Linear,
    /// `fc2`: `[hidden, ffn_dim]`.
    pub fc2: Linear,
    /// `final_layer_norm` (of the layer).
    pub final_layer_norm: LayerNorm,
    /// Pre-LayerNorm (true) or post-LayerNorm (false).
    pub do_layer_norm_before: bool,
    /// The MLP activation.
    #[module(skip)]
    pub activation: Activation,
}

impl OptDecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        bias: Option<&Tensor<4>>,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let pre = self.do_layer_norm_before;
        let residual = x.clone();
        let h = if pre {
            self.self_attn_layer_norm.forward(x)
        } else {
            x
        };
        let mut h = residual + self.self_attn.forward(h, bias, layer, cache)?;
        if !pre {
            h = self.self_attn_layer_norm.forward(h);
        }
        let residual = h.clone();
        let m = if pre {
            self.final_layer_norm.forward(h)
        } else {
            h
        };
        let m = self
            .fc2
            .forward(self.activation.forward(self.fc1.forward(m)));
        let mut h = residual + m;
        if !pre {
            h = self.final_layer_norm.forward(h);
        }
        Ok(h)
    }
}

/// OPT with its language-modelling head.
#[derive(Module, Debug)]
pub struct OptModel {
    /// `model.decoder.embed_tokens`: `[vocab, word_embed_proj_dim]` (also the LM head when tied).
    pub embed_tokens: Param<Tensor<2>>,
    /// `model.decoder.embed_positions`: `[max_position_embeddings + 2, hidden]`.
    pub embed_positions: Param<Tensor<2>>,
    /// `model.decoder.project_in`: `[hidden, word_embed_proj_dim]` (when the sizes differ).
    pub project_in: Option<Linear>,
    /// `model.decoder.project_out`: `[word_embed_proj_dim, hidden]` (when the sizes differ).
    pub project_out: Option<Linear>,
    /// `model.decoder.layers`.
    pub layers: Vec<OptDecoderLayer>,
    /// `model.decoder.final_layer_norm` (pre-LayerNorm models only).
    pub final_layer_norm: Option<LayerNorm>,
    /// `lm_head` `[vocab, word_embed_proj_dim]`; `None` when tied to `embed_tokens` (the logits
    /// then use `embed_tokens`, and saving writes no `lm_head.weight`, as `transformers` does).
    pub lm_head: Option<Linear>,
    /// Typed configuration.
    #[module(skip)]
    pub config: OptConfig,
}

impl HubModule for OptAttention {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        for (name, linear) in [
            ("q_proj", &mut self.q_proj),
            ("k_proj", &mut self.k_proj),
            ("v_proj", &mut self.v_proj),
            ("out_proj", &mut self.out_proj),
        ] {
            v.linear(&path.pp(name), linear, WeightLayout::OutIn)?;
        }
        Ok(())
    }
}

impl HubModule for OptDecoderLayer {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        self.self_attn.visit_tensors(&path.pp("self_attn"), v)?;
        self.self_attn_layer_norm
            .visit_tensors(&path.pp("self_attn_layer_norm"), v)?;
        v.linear(&path.pp("fc1"), &mut self.fc1, WeightLayout::OutIn)?;
        v.linear(&path.pp("fc2"), &mut self.fc2, WeightLayout::OutIn)?;
        self.final_layer_norm
            .visit_tensors(&path.pp("final_layer_norm"), v)
    }
}

impl HubModule for OptModel {
    /// `model.decoder.*` and `lm_head` (untied only).
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        let decoder = path.pp("model").pp("decoder");
        v.embedding(&decoder.pp("embed_tokens"), &mut self.embed_tokens)?;
        v.embedding(&decoder.pp("embed_positions"), &mut self.embed_positions)?;
        let out_in = WeightLayout::OutIn;
        // Forward order.
        visit_optional_linear(v, &decoder.pp("project_in"), &mut self.project_in, out_in)?;
        self.layers.visit_tensors(&decoder.pp("layers"), v)?;
        self.final_layer_norm
            .visit_tensors(&decoder.pp("final_layer_norm"), v)?;
        visit_optional_linear(v, &decoder.pp("project_out"), &mut self.project_out, out_in)?;
        visit_optional_linear(v, &path.pp("lm_head"), &mut self.lm_head, out_in)
    }
}

impl CausalDecoder for OptModel {
    /// `transformers`' `last_hidden_state`: after the final LayerNorm (pre-LayerNorm models)
    /// and `project_out` (when present), `[batch, seq, word_embed_proj_dim]`.
    ///
    /// `attention_mask` covers cached and new positions (`[batch, past + seq]`); without
    /// `position_ids`, positions come from the mask (all ones when absent) as described in the
    /// module docs; `segment_ids` restrict attention to packed samples (no cache). With a
    /// cache, new keys/values are appended and the cache advances by `seq`.
    ///
    /// # Errors
    /// [`ModelError::Input`] as [`check_input`], and for positions outside
    /// `-2..max_position_embeddings`.
    fn forward_hidden(
        &self,
        input: &ForwardInput,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        let [b, s] = check_input(input, self.config.vocab_size, past)?;
        let device = input.input_ids.device();
        let positions = match &input.position_ids {
            Some(p) => {
                check_ids(
                    &p.clone().add_scalar(POSITION_OFFSET as i64),
                    self.config.max_position_embeddings + POSITION_OFFSET,
                    "position_ids + 2 (OPT offset)",
                )?;
                p.clone()
            }
            None => {
                if past + s > self.config.max_position_embeddings {
                    return Err(ModelError::Input(format!(
                        "{} positions exceed OPT's max_position_embeddings {}",
                        past + s,
                        self.config.max_position_embeddings
                    )));
                }
                let mask = match &input.attention_mask {
                    Some(m) => m.clone(),
                    None => Tensor::<2, Int>::ones([b, past + s], &device),
                };
                let pos = mask.clone().cumsum(1).mul(mask).sub_scalar(1);
                pos.narrow(1, past, s)
            }
        };
        let positions = positions.add_scalar(POSITION_OFFSET as i64);
        let bias = mask_bias(input, past, None)?;
        let mut tokens =
            burn::tensor::module::embedding(self.embed_tokens.val(), input.input_ids.clone());
        if let Some(proj) = &self.project_in {
            tokens = proj.forward(tokens);
        }
        let pos = burn::tensor::module::embedding(self.embed_positions.val(), positions);
        let mut h = tokens + pos;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h, bias.as_ref(), i, cache.as_deref_mut())?;
        }
        if let Some(cache) = cache {
            cache.advance(s);
        }
        if let Some(ln) = &self.final_layer_norm {
            h = ln.forward(h);
        }
        if let Some(proj) = &self.project_out {
            h = proj.forward(h);
        }
        Ok(h)
    }

    /// Logits from final hidden states (`lm_head`, or `embed_tokens` when tied).
    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => lmflow_peft::linear::matmul_t(hidden, self.embed_tokens.val(), None),
        }
    }

    fn model_type(&self) -> &str {
        "opt"
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// OPT's final hidden states are projected to `word_embed_proj_dim`.
    #[allow(clippy::misnamed_getters)] // the width of the output, not `config.hidden_size`
    fn hidden_size(&self) -> usize {
        self.config.word_embed_proj_dim
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
