//! The architecture-independent model API: [`CausalLm`], [`ForwardInput`] / [`ForwardOutput`],
//! and loading ([`load_pretrained`]) and saving of Hub-layout folders.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use lmflow_peft::{Linear, LinearVisitor};

use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::gpt2::{Gpt2Config, Gpt2Model};
use crate::hub::{
    EmbeddingPaths, HubModule, HubPath, LinearPaths, TensorVisitor, visit_infallible,
};
use crate::llama::{LlamaConfig, LlamaModel, LlamaVariant};
use crate::opt::{OptConfig, OptModel};
use crate::rope::RopeScaling;
use crate::tokenizer::Tokenizer;
use crate::weights::{SINGLE_FILE, WeightSource, save_safetensors};

/// The architecture a `model_type` is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// [`LlamaModel`] with a member's configuration mapping.
    Llama(LlamaVariant),
    /// [`Gpt2Model`].
    Gpt2,
    /// [`OptModel`].
    Opt,
}

/// One supported `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelTypeRow {
    /// The `model_type` of `config.json`.
    pub model_type: &'static str,
    /// How it is built.
    pub family: Family,
}

/// Every `model_type` [`load_pretrained`] and [`CausalLm::from_config`] accept: the one list
/// of supported architectures.
pub const MODEL_TYPES: &[ModelTypeRow] = &[
    ModelTypeRow {
        model_type: "llama",
        family: Family::Llama(LlamaVariant::LLAMA),
    },
    ModelTypeRow {
        model_type: "mistral",
        family: Family::Llama(LlamaVariant::MISTRAL),
    },
    ModelTypeRow {
        model_type: "ministral",
        family: Family::Llama(LlamaVariant::MINISTRAL),
    },
    ModelTypeRow {
        model_type: "qwen2",
        family: Family::Llama(LlamaVariant::QWEN2),
    },
    ModelTypeRow {
        model_type: "qwen3",
        family: Family::Llama(LlamaVariant::QWEN3),
    },
    ModelTypeRow {
        model_type: "gpt2",
        family: Family::Gpt2,
    },
    ModelTypeRow {
        model_type: "opt",
        family: Family::Opt,
    },
];

/// The row of `model_type` in [`MODEL_TYPES`].
pub fn model_type_row(model_type: &str) -> Option<&'static ModelTypeRow> {
    MODEL_TYPES.iter().find(|row| row.model_type == model_type)
}

/// The supported `model_type` values, in [`MODEL_TYPES`] order.
pub fn supported_model_types() -> impl Iterator<Item = &'static str> {
    MODEL_TYPES.iter().map(|row| row.model_type)
}

/// What every architecture provides to [`CausalLm`]: the forward pass, the head and its sizes.
/// Its tensors are described once by [`HubModule`].
pub trait CausalDecoder: HubModule {
    /// Final hidden states (after the last norm; see each architecture).
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]` -> `[batch, seq, hidden]`
    ///
    /// # Errors
    /// [`ModelError::Input`] for inputs that do not fit the model or the cache
    /// ([`check_input`](crate::input::check_input)).
    fn forward_hidden(
        &self,
        input: &ForwardInput,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError>;

    /// Projects final hidden states to the vocabulary (through the embedding when tied).
    ///
    /// # Shapes
    /// - hidden `[batch, seq, hidden]` -> `[batch, seq, vocab]`
    fn logits(&self, hidden: Tensor<3>) -> Tensor<3>;

    /// `model_type` of the architecture.
    fn model_type(&self) -> &str;

    /// Vocabulary size (rows of the logits).
    fn vocab_size(&self) -> usize;

    /// Width of the final hidden states.
    fn hidden_size(&self) -> usize;

    /// Number of decoder layers.
    fn num_layers(&self) -> usize;

    /// The model's maximum sequence length (`max_position_embeddings`).
    fn max_position_embeddings(&self) -> usize;

    /// Whether the output projection shares the token embedding.
    fn tied_embeddings(&self) -> bool;

    /// An empty KV cache holding up to `max_len` positions.
    fn new_cache(&self, max_len: usize) -> KvCache {
        KvCache::new(self.num_layers(), max_len)
    }

    /// Every parameter under its Hub tensor name, in its current dtype (see
    /// [`hub::StateDict`](crate::hub::StateDict)).
    fn state_dict(&self) -> Vec<(String, TensorData)>
    where
        Self: Clone + Sized,
    {
        crate::hub::state_dict(self)
    }
}

/// Constants shared by every decoder layer of one forward pass (rotary tables, attention
/// biases), computed once by [`Layerwise::embed`].
#[derive(Debug, Clone)]
pub struct LayerContext {
    /// Rotary `cos`, `[batch, 1, seq, head_dim]`.
    pub cos: Tensor<4>,
    /// Rotary `sin`, `[batch, 1, seq, head_dim]`.
    pub sin: Tensor<4>,
    /// Additive attention bias of each layer (`None`: nothing masked); empty when the pass
    /// uses tiled attention.
    pub biases: Vec<Option<Tensor<4>>>,
    /// The mask of tiled attention (`None`: the pass materialises attention with `biases`).
    pub tiled: Option<std::sync::Arc<crate::attention_tiled::TiledMask>>,
}

impl LayerContext {
    /// The same constants outside autodiff (no graph reference).
    pub fn inner(self) -> Self {
        Self {
            cos: self.cos.inner(),
            sin: self.sin.inner(),
            biases: self
                .biases
                .into_iter()
                .map(|b| b.map(Tensor::inner))
                .collect(),
            tiled: self.tiled,
        }
    }
}

/// A decoder run one layer at a time (for activation checkpointing): `embed`, then every
/// `layer` in order, then `final_norm` give [`CausalDecoder::forward_hidden`] (without cache).
pub trait Layerwise {
    /// Token embeddings `[batch, seq, hidden]` and the per-pass constants.
    ///
    /// # Errors
    /// As [`CausalDecoder::forward_hidden`].
    fn embed(&self, input: &ForwardInput) -> Result<(Tensor<3>, LayerContext), ModelError>;
    /// Decoder layer `index` on its input `[batch, seq, hidden]`.
    ///
    /// # Errors
    /// As [`CausalDecoder::forward_hidden`].
    fn layer(
        &self,
        index: usize,
        x: Tensor<3>,
        context: &LayerContext,
    ) -> Result<Tensor<3>, ModelError>;
    /// The norm after the last layer.
    fn final_norm(&self, x: Tensor<3>) -> Tensor<3>;
}

/// Files copied from the source folder when a [`Pretrained`] is saved (those present).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
];

/// Inputs of one forward pass.
#[derive(Debug, Clone)]
pub struct ForwardInput {
    /// Token ids `[batch, seq]`.
    pub input_ids: Tensor<2, Int>,
    /// `[batch, past + seq]`: `1` attend, `0` padding (`transformers` semantics; covers the
    /// cached positions too).
    pub attention_mask: Option<Tensor<2, Int>>,
    /// `[batch, seq]` positions; default `past + 0..seq` for every row, as `transformers`'
    /// forward (for left-padded generation pass
    /// [`position_ids_from_attention_mask`](crate::attention::position_ids_from_attention_mask)).
    pub position_ids: Option<Tensor<2, Int>>,
    /// `[batch, seq]` packed sample ids: tokens attend only to earlier tokens with the same id
    /// (no cache). Combine with `position_ids` restarting at each sample.
    pub segment_ids: Option<Tensor<2, Int>>,
    /// `[batch, seq, hidden]` input embeddings used instead of looking `input_ids` up in the
    /// token embedding (multimodal models: image features in place of image tokens). `input_ids`
    /// are still required (they give the shapes and are checked against the vocabulary).
    /// LLaMA family only; the other architectures refuse it.
    pub inputs_embeds: Option<Tensor<3>>,
}

impl ForwardInput {
    /// The same input outside autodiff (for a forward pass of a [`Module::valid`] model).
    pub fn inner(&self) -> Self {
        Self {
            input_ids: self.input_ids.clone().inner(),
            attention_mask: self.attention_mask.clone().map(Tensor::inner),
            position_ids: self.position_ids.clone().map(Tensor::inner),
            segment_ids: self.segment_ids.clone().map(Tensor::inner),
            inputs_embeds: self.inputs_embeds.clone().map(Tensor::inner),
        }
    }

    /// Token ids only.
    pub fn new(input_ids: Tensor<2, Int>) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            position_ids: None,
            segment_ids: None,
            inputs_embeds: None,
        }
    }

    /// Adds a padding mask `[batch, past + seq]`.
    pub fn with_attention_mask(mut self, mask: Tensor<2, Int>) -> Self {
        self.attention_mask = Some(mask);
        self
    }

    /// Adds explicit positions `[batch, seq]`.
    pub fn with_position_ids(mut self, positions: Tensor<2, Int>) -> Self {
        self.position_ids = Some(positions);
        self
    }

    /// Adds packed segment ids `[batch, seq]`.
    pub fn with_segment_ids(mut self, segments: Tensor<2, Int>) -> Self {
        self.segment_ids = Some(segments);
        self
    }

    /// Uses `embeds` `[batch, seq, hidden]` instead of the token embedding of `input_ids`.
    pub fn with_inputs_embeds(mut self, embeds: Tensor<3>) -> Self {
        self.inputs_embeds = Some(embeds);
        self
    }
}

/// Outputs of one forward pass.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `[batch, seq, vocab]`.
    pub logits: Tensor<3>,
    /// Final hidden states after the last norm, `[batch, seq, hidden]`.
    pub hidden_states: Tensor<3>,
}

/// A causal language model of any supported architecture.
// Models are built once and moved rarely; boxing the LLaMA variant would only complicate
// matching.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum CausalLm {
    /// The LLaMA family ([`Family::Llama`] rows of [`MODEL_TYPES`]).
    Llama(LlamaModel),
    /// `gpt2`.
    Gpt2(Gpt2Model),
    /// `opt` (OPT, Galactica).
    Opt(OptModel),
}

impl CausalLm {
    /// Builds a randomly initialised model from a configuration (e.g. for training from
    /// scratch or tests), on `device` in its default float dtype. Weights are drawn lazily, on
    /// first use.
    ///
    /// # Errors
    /// [`ModelError::UnsupportedModelType`] for a `model_type` outside [`MODEL_TYPES`], or the
    /// architecture's configuration errors.
    pub fn from_config(config: &ModelConfig, device: &Device) -> Result<Self, ModelError> {
        let row = model_type_row(&config.model_type).ok_or_else(|| unsupported(config))?;
        Ok(match row.family {
            Family::Llama(variant) => {
                Self::Llama(LlamaConfig::from_hf_variant(config, &variant)?.init(device))
            }
            Family::Gpt2 => Self::Gpt2(Gpt2Config::from_hf(config)?.init(device)),
            Family::Opt => Self::Opt(OptConfig::from_hf(config)?.init(device)),
        })
    }

    /// Loads the architecture `config` names from `weights`.
    ///
    /// # Errors
    /// As [`CausalLm::from_config`], and missing or mis-shaped tensors.
    pub fn load(config: &ModelConfig, weights: &WeightSource) -> Result<Self, ModelError> {
        crate::hub::load(Self::from_config(config, weights.device())?, weights)
    }

    /// Like [`CausalLm::load`], handing every linear layer to `on_linear` (Hub path, layer)
    /// as soon as it is read: e.g. `|path, l| if path != "lm_head" { l.quantize_nf4(&cfg) }`
    /// loads straight into NF4, one full-precision layer alive at a time.
    ///
    /// # Errors
    /// As [`CausalLm::load`].
    pub fn load_with_linear_hook(
        config: &ModelConfig,
        weights: &WeightSource,
        on_linear: &mut dyn FnMut(&str, &mut Linear),
    ) -> Result<Self, ModelError> {
        crate::hub::load_with_linear_hook(
            Self::from_config(config, weights.device())?,
            weights,
            on_linear,
        )
    }

    fn decoder(&self) -> &dyn CausalDecoder {
        match self {
            Self::Llama(m) => m,
            Self::Gpt2(m) => m,
            Self::Opt(m) => m,
        }
    }

    /// Chooses the attention implementation of a LLaMA-family model (see
    /// [`crate::attention_tiled`]); GPT-2 and OPT always materialise the scores.
    ///
    /// # Errors
    /// [`ModelError::Input`] when [`AttentionImpl::Tiled`](crate::AttentionImpl::Tiled) is asked
    /// of GPT-2 or OPT.
    pub fn set_attention_impl(
        &mut self,
        attention: crate::attention_tiled::AttentionImpl,
    ) -> Result<(), ModelError> {
        use crate::attention_tiled::AttentionImpl;
        match self {
            Self::Llama(m) => {
                m.set_attention_impl(attention);
                Ok(())
            }
            Self::Gpt2(_) | Self::Opt(_) if attention == AttentionImpl::Tiled => {
                Err(ModelError::Input(format!(
                    "tiled attention is implemented for the LLaMA family, not `{}`",
                    self.model_type()
                )))
            }
            Self::Gpt2(_) | Self::Opt(_) => Ok(()),
        }
    }

    /// The decoder one layer at a time, for activation checkpointing (LLaMA family; `None`
    /// for GPT-2 and OPT).
    pub fn layerwise(&self) -> Option<&dyn Layerwise> {
        match self {
            Self::Llama(m) => Some(m),
            Self::Gpt2(_) | Self::Opt(_) => None,
        }
    }

    /// Runs the model.
    ///
    /// With a cache, the new tokens are appended after the cached ones (positions default to
    /// `cache.len() + 0..seq`) and the cache grows by `seq`.
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]` -> logits `[batch, seq, vocab]`, hidden_states
    ///   `[batch, seq, hidden]`
    ///
    /// # Errors
    /// [`ModelError::Input`] for inconsistent shapes, token ids outside the vocabulary or a
    /// full cache.
    pub fn forward(
        &self,
        input: ForwardInput,
        cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput, ModelError> {
        let hidden_states = self.forward_hidden(&input, cache)?;
        Ok(ForwardOutput {
            logits: self.logits(hidden_states.clone()),
            hidden_states,
        })
    }

    /// Final hidden states only (skips the vocabulary projection: reward heads, chunked losses).
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]` -> `[batch, seq, hidden]`
    ///
    /// # Errors
    /// As [`CausalLm::forward`].
    pub fn forward_hidden(
        &self,
        input: &ForwardInput,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        if input.inputs_embeds.is_some() && !matches!(self, Self::Llama(_)) {
            return Err(ModelError::Input(format!(
                "inputs_embeds is supported by the LLaMA family only, not by `{}`",
                self.model_type()
            )));
        }
        self.decoder().forward_hidden(input, cache)
    }

    /// Projects hidden states to the vocabulary.
    ///
    /// # Shapes
    /// - hidden `[batch, seq, hidden]` -> `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.decoder().logits(hidden)
    }

    /// An empty KV cache for this model holding up to `max_len` positions (allocated lazily on
    /// the device and in the dtype of the first forward pass).
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        self.decoder().new_cache(max_len)
    }

    /// `model_type` of the architecture.
    pub fn model_type(&self) -> &str {
        self.decoder().model_type()
    }

    /// Vocabulary size (rows of the logits).
    pub fn vocab_size(&self) -> usize {
        self.decoder().vocab_size()
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.decoder().hidden_size()
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.decoder().num_layers()
    }

    /// The model's maximum sequence length (`max_position_embeddings`).
    pub fn max_position_embeddings(&self) -> usize {
        self.decoder().max_position_embeddings()
    }

    /// Whether the output projection shares the token embedding.
    pub fn tied_embeddings(&self) -> bool {
        self.decoder().tied_embeddings()
    }

    /// Every parameter under its Hub tensor name, in its current dtype.
    pub fn state_dict(&self) -> Vec<(String, TensorData)> {
        crate::hub::state_dict(self)
    }

    /// Writes `dir/model.safetensors` (Hub tensor names, current dtype) and `dir/config.json`
    /// (`config` with `dtype`/`torch_dtype` set to the dtype written). Creates `dir`.
    ///
    /// Adapters in [`Linear`] layers are not merged here; merge them first to save a plain
    /// model.
    pub fn save(&self, dir: &Path, config: &ModelConfig) -> Result<(), ModelError> {
        let dtype = write_single_file(dir, &self.state_dict())?;
        let mut config = config.clone();
        // NF4 layers (a bitsandbytes checkpoint's) are written dequantised: the folder is no
        // longer a quantised one.
        config.raw.remove("quantization_config");
        let key = if config.raw.contains_key("torch_dtype") {
            "torch_dtype"
        } else {
            "dtype"
        };
        config.set(key, serde_json::Value::String(dtype.to_string()));
        config.save(dir)
    }
}

/// Writes `tensors` as `dir/model.safetensors` (creating `dir`; a single file replaces any
/// shards of an earlier save into the same folder) and returns the Hub name of their dtype
/// (`float32`, `bfloat16`, ...) for the config. Shared by every model folder writer.
pub(crate) fn write_single_file(
    dir: &Path,
    tensors: &[(String, TensorData)],
) -> Result<&'static str, ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let dtype = tensors
        .first()
        .map(|(_, t)| match t.dtype() {
            burn::tensor::DType::BF16 => "bfloat16",
            burn::tensor::DType::F16 => "float16",
            burn::tensor::DType::F64 => "float64",
            _ => "float32",
        })
        .unwrap_or("float32");
    save_safetensors(&dir.join(SINGLE_FILE), tensors)?;
    let index = dir.join(crate::weights::INDEX_FILE);
    if index.is_file() {
        std::fs::remove_file(&index).map_err(|e| ModelError::io(&index, e))?;
    }
    Ok(dtype)
}

impl HubModule for CausalLm {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        match self {
            Self::Llama(m) => m.visit_tensors(path, v),
            Self::Gpt2(m) => m.visit_tensors(path, v),
            Self::Opt(m) => m.visit_tensors(path, v),
        }
    }
}

/// [`LinearVisitor`] from the [`HubModule`] description: the paths PEFT sees are the names
/// the checkpoint uses.
macro_rules! linear_visitor_from_hub {
    ($($model:ty),*) => {$(
        impl LinearVisitor for $model {
            fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
                // Visiting needs `&mut`; a clone shares every tensor.
                let mut each = |path: &str, linear: &mut Linear| f(path, linear);
                visit_infallible(&mut self.clone(), &mut LinearPaths(&mut each));
            }

            fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
                visit_infallible(self, &mut LinearPaths(f));
            }

            fn visit_embeddings_mut(&mut self, f: &mut dyn FnMut(&str, &mut Param<Tensor<2>>)) {
                visit_infallible(self, &mut EmbeddingPaths(f));
            }
        }
    )*};
}

linear_visitor_from_hub!(CausalLm, LlamaModel, Gpt2Model, OptModel);

fn unsupported(config: &ModelConfig) -> ModelError {
    ModelError::UnsupportedModelType {
        path: config.path.clone(),
        model_type: config.model_type.clone(),
        supported: supported_model_types().collect::<Vec<_>>().join(", "),
    }
}

/// Options of [`load_pretrained`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Float dtype of the loaded weights (stored values are converted); `None`: f32.
    pub dtype: Option<FloatDType>,
    /// Overrides the configuration's `rope_scaling` (LLaMA family).
    pub rope_scaling: Option<RopeScaling>,
}

/// A loaded model folder: architecture, tokenizer and configuration.
#[derive(Debug)]
pub struct Pretrained {
    /// The model.
    pub model: CausalLm,
    /// The tokenizer, when the folder has `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    /// The parsed `config.json`.
    pub config: ModelConfig,
    /// The folder it was loaded from.
    pub dir: PathBuf,
}

impl Pretrained {
    /// Saves the model ([`CausalLm::save`]) and copies the tokenizer files of the source
    /// folder ([`TOKENIZER_FILES`]) into `dir`, giving a folder `transformers` loads.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        self.model.save(dir, &self.config)?;
        copy_tokenizer_files(&self.dir, dir)
    }
}

/// Copies the [`TOKENIZER_FILES`] present in `from` into `to`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<(), ModelError> {
    if from == to {
        return Ok(());
    }
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            let dst = to.join(name);
            std::fs::copy(&src, &dst).map_err(|e| ModelError::io(&src, e))?;
        }
    }
    Ok(())
}

/// Loads a Hub-layout model folder: `config.json`, `model.safetensors` (or the shards of
/// `model.safetensors.index.json`) and, when present, the tokenizer files.
///
/// # Errors
/// A [`ModelError`] naming the file and key/tensor at fault; an unsupported `model_type` lists
/// the supported ones.
pub fn load_pretrained(
    dir: &Path,
    device: &Device,
    opts: &LoadOptions,
) -> Result<Pretrained, ModelError> {
    // A CPU model whose weights cannot fit in memory is refused before anything is allocated
    // (not in the hooked variant: QLoRA quantises each layer as it is read). `config.json`
    // is checked first, so its errors come first.
    ModelConfig::from_dir(dir)?;
    let dtype = opts.dtype.unwrap_or(FloatDType::F32);
    crate::weights::check_fits_in_memory(dir, device, dtype)?;
    load_pretrained_with_linear_hook(dir, device, opts, &mut |_, _| {})
}

/// Like [`load_pretrained`], handing every linear layer to `on_linear` as soon as it is read
/// (see [`CausalLm::load_with_linear_hook`]; QLoRA loads straight into NF4 this way).
///
/// # Errors
/// As [`load_pretrained`].
pub fn load_pretrained_with_linear_hook(
    dir: &Path,
    device: &Device,
    opts: &LoadOptions,
    on_linear: &mut dyn FnMut(&str, &mut Linear),
) -> Result<Pretrained, ModelError> {
    let config = ModelConfig::from_dir(dir)?;
    if model_type_row(&config.model_type).is_none() {
        return Err(unsupported(&config));
    }
    // A bitsandbytes checkpoint this crate cannot read is refused before any tensor is; its
    // NF4 layers are read straight into NF4 by the loader (`crate::bnb`).
    crate::bnb::bnb_quantization(&config)?;
    let dtype = opts.dtype.unwrap_or(FloatDType::F32);
    let weights = WeightSource::open(dir, device, dtype)?;
    let mut model = CausalLm::load_with_linear_hook(&config, &weights, on_linear)?;
    if let Some(scaling) = &opts.rope_scaling {
        match &mut model {
            CausalLm::Llama(m) => m.set_rope_scaling(scaling.clone()),
            CausalLm::Gpt2(_) | CausalLm::Opt(_) => {
                return Err(ModelError::config(
                    &config.path,
                    "rope_scaling",
                    "a rope_scaling override was given, but this architecture has learned \
                     absolute positions, not rotary embeddings",
                ));
            }
        }
    }
    let unused: Vec<String> = weights
        .unused()
        .into_iter()
        // Non-persistent buffers some checkpoints carry: RoPE frequencies, GPT-2's causal masks.
        .filter(|n| {
            !n.ends_with("rotary_emb.inv_freq")
                && !(config.model_type == "gpt2"
                    && (n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias")))
        })
        .collect();
    if !unused.is_empty() {
        tracing::warn!(
            "{}: {} checkpoint tensors not used by {}: {}",
            dir.display(),
            unused.len(),
            config.model_type,
            unused.join(", ")
        );
    }
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        let tokenizer = Tokenizer::from_dir(dir)?;
        // Every id the tokenizer can produce must have an embedding row (the reverse is
        // normal: embedding tables are padded beyond the vocabulary).
        if let Some((id, token)) = tokenizer.max_token_id()
            && id as usize >= model.vocab_size()
        {
            return Err(ModelError::config(
                dir.join("tokenizer.json"),
                "vocab",
                format!(
                    "token `{token}` has id {id}, but the model's embedding table has {} rows \
                     (vocab_size): the tokenizer does not belong to this model",
                    model.vocab_size()
                ),
            ));
        }
        Some(tokenizer)
    } else {
        None
    };
    Ok(Pretrained {
        model,
        tokenizer,
        config,
        dir: dir.to_path_buf(),
    })
}
