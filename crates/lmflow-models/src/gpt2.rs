//! GPT-2 (`model_type: "gpt2"`), as `transformers`' `GPT2LMHeadModel`.
//!
//! Learned absolute positions (`wpe`), pre-LayerNorm blocks, fused `c_attn` query/key/value
//! projection, `gelu_new` MLP (any `activation_function` of [`Activation`]) and an LM head tied
//! to the token embedding (`wte`) unless `tie_word_embeddings` is `false`.
//!
//! # Weight layout
//! GPT-2's projections are `Conv1D` modules whose weights are stored `[in, out]`, the transpose of
//! `nn.Linear`. Every projection here is an [`lmflow_peft::Linear`] in the `[out, in]` layout:
//! Conv1D weights are transposed on load and transposed back on save, so checkpoints keep the
//! Hub layout. Adapters follow the same convention as PEFT's `fan_in_fan_out=True` for GPT-2:
//! a LoRA adapter trained with PEFT on `c_attn` has `lora_A [r, in]`, `lora_B [out, r]`, which
//! applies unchanged to the `[out, in]` weights here.
//!
//! # Tensor names
//! Loading accepts both `transformer.h.0.attn.c_attn.weight` (what `save_pretrained` writes)
//! and the original Hub layout without the `transformer.` prefix (`h.0.attn.c_attn.weight`, as in
//! `openai-community/gpt2`); the non-persistent causal-mask buffers `h.N.attn.bias` and
//! `h.N.attn.masked_bias` of old checkpoints are ignored. Saving always writes the
//! `transformer.` form. [`LinearVisitor`](lmflow_peft::LinearVisitor) paths are the Hub module paths
//! (`transformer.h.0.attn.c_attn`, `transformer.h.0.attn.c_proj`, `transformer.h.0.mlp.c_fc`,
//! `transformer.h.0.mlp.c_proj`, `lm_head` when untied).
//!
//! # Tied LM head
//! With `tie_word_embeddings` (the default) there is no separate `lm_head` parameter: logits are
//! computed with `wte` itself (`logits = hidden · wteᵀ`), exactly as PyTorch's shared parameter,
//! so training updates one tensor and saving writes only `transformer.wte.weight` (as
//! `transformers` does). Untied checkpoints carry `lm_head.weight`, loaded and saved as such.
//!
//! # Position ids
//! As `GPT2Model.forward`: when `position_ids` is not given they are `past_len + arange(seq)`
//! for every row, whatever the attention mask (`generate` in `transformers` passes
//! `cumsum(mask) - 1` explicitly for left-padded batches; callers that want those must pass them,
//! see [`crate::attention::position_ids_from_attention_mask`]).
//!
//! Not supported: cross-attention (`add_cross_attention`), `token_type_ids`, the
//! `GPT2DoubleHeadsModel` heads.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};
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
use crate::input::{check_ids, check_input, mask_bias, positions_or_default};
use crate::layer_norm::{LayerNorm, LayerNormConfig};
use crate::model::{CausalDecoder, ForwardInput};
use crate::weights::WeightSource;

/// Typed GPT-2 hyper-parameters with `transformers`' `GPT2Config` defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// `vocab_size` (default 50257).
    pub vocab_size: usize,
    /// `n_positions`: number of learned positions (default 1024).
    pub n_positions: usize,
    /// `n_embd` / `hidden_size` (default 768).
    pub n_embd: usize,
    /// `n_layer` / `num_hidden_layers` (default 12).
    pub n_layer: usize,
    /// `n_head` / `num_attention_heads` (default 12).
    pub n_head: usize,
    /// `n_inner`: MLP width (default `4 * n_embd`).
    pub n_inner: usize,
    /// `activation_function` (default `gelu_new`).
    pub activation: Activation,
    /// `layer_norm_epsilon` (default 1e-5).
    pub layer_norm_epsilon: f64,
    /// `scale_attn_weights`: divide scores by `sqrt(head_dim)` (default true).
    pub scale_attn_weights: bool,
    /// `scale_attn_by_inverse_layer_idx`: also divide scores by `layer_idx + 1` (default false).
    pub scale_attn_by_inverse_layer_idx: bool,
    /// `tie_word_embeddings`: the LM head is `wte` (default true).
    pub tie_word_embeddings: bool,
    /// `initializer_range`: standard deviation of the random initialisation (default 0.02).
    pub initializer_range: f64,
}

impl Gpt2Config {
    /// Reads the GPT-2 keys of a `config.json`, with `GPT2Config`'s defaults for absent keys.
    ///
    /// `reorder_and_upcast_attn` is accepted and needs nothing: attention scores are always
    /// computed in f32 here.
    ///
    /// # Errors
    /// [`ModelError::Config`] for malformed values, an unknown `activation_function`,
    /// `add_cross_attention: true`, or `n_embd` not divisible by `n_head`.
    pub fn from_hf(config: &ModelConfig) -> Result<Self, ModelError> {
        let get = |keys: &[&str], default: usize| -> Result<usize, ModelError> {
            for key in keys {
                if let Some(v) = config.usize_opt(key)? {
                    return Ok(v);
                }
            }
            Ok(default)
        };
        let n_embd = get(&["n_embd", "hidden_size"], 768)?;
        let n_head = get(&["n_head", "num_attention_heads"], 12)?;
        let act_name = config.str_opt("activation_function")?.unwrap_or("gelu_new");
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
        if config.bool_opt("add_cross_attention")?.unwrap_or(false) {
            return Err(ModelError::config(
                &config.path,
                "add_cross_attention",
                "cross-attention (encoder-decoder GPT-2) is not supported",
            ));
        }
        if n_head == 0 || n_embd % n_head != 0 {
            return Err(ModelError::config(
                &config.path,
                "n_head",
                format!("n_embd {n_embd} is not divisible by n_head {n_head}"),
            ));
        }
        Ok(Self {
            vocab_size: get(&["vocab_size"], 50257)?,
            n_positions: get(&["n_positions", "max_position_embeddings"], 1024)?,
            n_embd,
            n_layer: get(&["n_layer", "num_hidden_layers"], 12)?,
            n_head,
            n_inner: get(&["n_inner"], 4 * n_embd)?,
            activation,
            layer_norm_epsilon: config.f64_opt("layer_norm_epsilon")?.unwrap_or(1e-5),
            scale_attn_weights: config.bool_opt("scale_attn_weights")?.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: config
                .bool_opt("scale_attn_by_inverse_layer_idx")?
                .unwrap_or(false),
            tie_word_embeddings: config.bool_opt("tie_word_embeddings")?.unwrap_or(true),
            initializer_range: config.f64_opt("initializer_range")?.unwrap_or(0.02),
        })
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Score scale of block `layer`.
    fn attn_scale(&self, layer: usize) -> f64 {
        let mut scale = if self.scale_attn_weights {
            1.0 / (self.head_dim() as f64).sqrt()
        } else {
            1.0
        };
        if self.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        scale
    }

    fn layer_norm(&self, device: &Device) -> LayerNorm {
        LayerNormConfig::new(self.n_embd)
            .with_eps(self.layer_norm_epsilon)
            .init(device)
    }

    /// A randomly initialised model as `GPT2PreTrainedModel._init_weights` draws it: weights and
    /// embeddings `N(0, initializer_range)`, output projections (`c_proj`)
    /// `N(0, initializer_range / sqrt(2 * n_layer))`, biases 0, LayerNorms 1/0. Weights are
    /// drawn lazily, on first use.
    pub fn init(&self, device: &Device) -> Gpt2Model {
        let d = self.n_embd;
        let normal = |std: f64| Init::Random(Distribution::Normal(0.0, std));
        let std = normal(self.initializer_range);
        let proj_std = normal(self.initializer_range / (2.0 * self.n_layer as f64).sqrt());
        let lin = |d_in: usize, d_out: usize, init: Init| {
            lazy_linear(d_in, d_out, device, init, Some(Init::Zeros))
        };
        let table =
            |shape: [usize; 2]| lazy_param(shape, device, move |dev| std.tensor(shape, dev));
        let blocks = (0..self.n_layer)
            .map(|i| Gpt2Block {
                ln_1: self.layer_norm(device),
                attn: Gpt2Attention {
                    c_attn: lin(d, 3 * d, std),
                    c_proj: lin(d, d, proj_std),
                    n_head: self.n_head,
                    scale: self.attn_scale(i),
                },
                ln_2: self.layer_norm(device),
                mlp: Gpt2Mlp {
                    c_fc: lin(d, self.n_inner, std),
                    c_proj: lin(self.n_inner, d, proj_std),
                    activation: self.activation,
                },
            })
            .collect();
        Gpt2Model {
            wte: table([self.vocab_size, d]),
            wpe: table([self.n_positions, d]),
            blocks,
            ln_f: self.layer_norm(device),
            lm_head: (!self.tie_word_embeddings)
                .then(|| lazy_linear(d, self.vocab_size, device, std, None)),
            config: self.clone(),
        }
    }

    /// Loads a checkpoint with this configuration (tensor names and layout: module docs).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors, naming the file and tensor.
    pub fn load(&self, weights: &WeightSource) -> Result<Gpt2Model, ModelError> {
        crate::hub::load(self.init(weights.device()), weights)
    }
}

/// Self-attention of one block: fused `c_attn` (query, key, value) and output `c_proj`.
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// `attn.c_attn`: `[3 * n_embd, n_embd]`.
    pub c_attn: Linear,
    /// `attn.c_proj`: `[n_embd, n_embd]`.
    pub c_proj: Linear,
    /// Number of heads.
    pub n_head: usize,
    /// Score scale (`1/sqrt(head_dim)`, divided by `layer_idx + 1` when configured).
    pub scale: f64,
}

impl Gpt2Attention {
    /// # Shapes
    /// - x: `[batch, seq, n_embd]`, bias: `[batch, 1, seq, past + seq]`
    /// - output: `[batch, seq, n_embd]`
    fn forward(
        &self,
        x: Tensor<3>,
        bias: Option<&Tensor<4>>,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let [b, s, d] = x.dims();
        let hd = d / self.n_head;
        let qkv = self.c_attn.forward(x);
        let heads = |t: Tensor<3>| t.reshape([b, s, self.n_head, hd]).swap_dims(1, 2);
        let q = heads(qkv.clone().narrow(2, 0, d));
        let mut k = heads(qkv.clone().narrow(2, d, d));
        let mut v = heads(qkv.narrow(2, 2 * d, d));
        if let Some(cache) = cache {
            (k, v) = cache.update(layer, k, v)?;
        }
        let out = scaled_dot_product_attention(q, k, v, bias, self.scale);
        Ok(self.c_proj.forward(out.swap_dims(1, 2).reshape([b, s, d])))
    }
}

impl HubModule for Gpt2Attention {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        v.linear(&path.pp("c_attn"), &mut self.c_attn, WeightLayout::InOut)?;
        v.linear(&path.pp("c_proj"), &mut self.c_proj, WeightLayout::InOut)
    }
}

/// Feed-forward of one block: `c_proj(act(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    /// `mlp.c_fc`: `[n_inner, n_embd]`.
    pub c_fc: Linear,
    /// `mlp.c_proj`: `[n_embd, n_inner]`.
    pub c_proj: Linear,
    /// The activation.
    #[module(skip)]
    pub activation: Activation,
}

impl Gpt2Mlp {
    /// # Shapes
    /// - input and output: `[batch, seq, n_embd]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.c_proj
            .forward(self.activation.forward(self.c_fc.forward(x)))
    }
}

impl HubModule for Gpt2Mlp {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        v.linear(&path.pp("c_fc"), &mut self.c_fc, WeightLayout::InOut)?;
        v.linear(&path.pp("c_proj"), &mut self.c_proj, WeightLayout::InOut)
    }
}

/// One pre-LayerNorm transformer block.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// `ln_1`, before attention.
    pub ln_1: LayerNorm,
    /// `attn`.
    pub attn: Gpt2Attention,
    /// `ln_2`, before the MLP.
    pub ln_2: LayerNorm,
    /// `mlp`.
    pub mlp: Gpt2Mlp,
}

impl HubModule for Gpt2Block {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        self.ln_1.visit_tensors(&path.pp("ln_1"), v)?;
        self.attn.visit_tensors(&path.pp("attn"), v)?;
        self.ln_2.visit_tensors(&path.pp("ln_2"), v)?;
        self.mlp.visit_tensors(&path.pp("mlp"), v)
    }
}

/// GPT-2 with its language-modelling head.
#[derive(Module, Debug)]
pub struct Gpt2Model {
    /// `transformer.wte`: token embedding `[vocab, n_embd]` (also the LM head when tied).
    pub wte: Param<Tensor<2>>,
    /// `transformer.wpe`: position embedding `[n_positions, n_embd]`.
    pub wpe: Param<Tensor<2>>,
    /// `transformer.h`.
    pub blocks: Vec<Gpt2Block>,
    /// `transformer.ln_f`.
    pub ln_f: LayerNorm,
    /// `lm_head` `[vocab, n_embd]`; `None` when tied to `wte` (the logits then use `wte`, and
    /// saving writes no `lm_head.weight`, as `transformers` does).
    pub lm_head: Option<Linear>,
    /// Typed configuration.
    #[module(skip)]
    pub config: Gpt2Config,
}

impl HubModule for Gpt2Model {
    /// `transformer.*` and `lm_head` (untied only).
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        let base = path.pp("transformer");
        v.embedding(&base.pp("wte"), &mut self.wte)?;
        v.embedding(&base.pp("wpe"), &mut self.wpe)?;
        self.blocks.visit_tensors(&base.pp("h"), v)?;
        self.ln_f.visit_tensors(&base.pp("ln_f"), v)?;
        visit_optional_linear(
            v,
            &path.pp("lm_head"),
            &mut self.lm_head,
            WeightLayout::OutIn,
        )
    }
}

impl CausalDecoder for Gpt2Model {
    /// Final hidden states (after `ln_f`).
    ///
    /// `attention_mask` covers cached and new positions (`[batch, past + seq]`);
    /// `position_ids` default to `past + arange(seq)` (see the module docs); `segment_ids`
    /// restrict attention to packed samples (no cache). With a cache, new keys/values are
    /// appended and the cache advances by `seq`.
    ///
    /// # Errors
    /// [`ModelError::Input`] as [`check_input`], and for position ids outside
    /// `0..n_positions`.
    fn forward_hidden(
        &self,
        input: &ForwardInput,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        let [_, s] = check_input(input, self.config.vocab_size, past)?;
        match &input.position_ids {
            Some(p) => check_ids(p, self.config.n_positions, "position_ids")?,
            None if past + s > self.config.n_positions => {
                return Err(ModelError::Input(format!(
                    "{} positions exceed GPT-2's n_positions {}",
                    past + s,
                    self.config.n_positions
                )));
            }
            None => {}
        }
        let positions = positions_or_default(input, past);
        let bias = mask_bias(input, past, None)?;
        let tokens = burn::tensor::module::embedding(self.wte.val(), input.input_ids.clone());
        let pos = burn::tensor::module::embedding(self.wpe.val(), positions);
        let mut h = tokens + pos;
        for (i, block) in self.blocks.iter().enumerate() {
            let a = block.attn.forward(
                block.ln_1.forward(h.clone()),
                bias.as_ref(),
                i,
                cache.as_deref_mut(),
            )?;
            h = h + a;
            h = h.clone() + block.mlp.forward(block.ln_2.forward(h));
        }
        if let Some(cache) = cache {
            cache.advance(s);
        }
        Ok(self.ln_f.forward(h))
    }

    /// Logits from final hidden states (`lm_head`, or `wte` when tied).
    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => lmflow_peft::linear::matmul_t(hidden, self.wte.val(), None),
        }
    }

    fn model_type(&self) -> &str {
        "gpt2"
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.config.n_embd
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    fn max_position_embeddings(&self) -> usize {
        self.config.n_positions
    }

    fn tied_embeddings(&self) -> bool {
        self.lm_head.is_none()
    }
}
