//! The architecture-independent model API: [`CausalLm`], [`ForwardInput`] / [`ForwardOutput`],
//! and loading ([`load_pretrained`]) and saving of Hub-layout folders.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use lmflow_peft::{Linear, LinearVisitor};

use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::gpt2::{Gpt2Config, Gpt2Model};
use crate::llama::{LlamaConfig, LlamaModel};
use crate::opt::{OptConfig, OptModel};
use crate::rope::RopeScaling;
use crate::tokenizer::Tokenizer;
use crate::weights::{SINGLE_FILE, WeightSource, save_safetensors};

/// The `model_type` values [`load_pretrained`] accepts.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "gpt2", "opt"];

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
}

impl ForwardInput {
    /// Token ids only.
    pub fn new(input_ids: Tensor<2, Int>) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            position_ids: None,
            segment_ids: None,
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
    /// `llama`, `mistral`, `qwen2`, `qwen3`.
    Llama(LlamaModel),
    /// `gpt2`.
    Gpt2(Gpt2Model),
    /// `opt` (OPT, Galactica).
    Opt(OptModel),
}

impl CausalLm {
    /// Builds a randomly initialised model from a configuration (e.g. for training from
    /// scratch or tests), on `device` in its default float dtype.
    pub fn from_config(config: &ModelConfig, device: &Device) -> Result<Self, ModelError> {
        match config.model_type.as_str() {
            "llama" | "mistral" | "qwen2" | "qwen3" => {
                Ok(Self::Llama(LlamaConfig::from_hf(config)?.init(device)))
            }
            "gpt2" => Ok(Self::Gpt2(Gpt2Config::from_hf(config)?.init(device))),
            "opt" => Ok(Self::Opt(OptConfig::from_hf(config)?.init(device))),
            other => Err(unsupported(config, other)),
        }
    }

    /// Loads the architecture `config` names from `weights`.
    pub fn load(config: &ModelConfig, weights: &WeightSource) -> Result<Self, ModelError> {
        match config.model_type.as_str() {
            "llama" | "mistral" | "qwen2" | "qwen3" => {
                Ok(Self::Llama(LlamaConfig::from_hf(config)?.load(weights)?))
            }
            "gpt2" => Ok(Self::Gpt2(Gpt2Config::from_hf(config)?.load(weights)?)),
            "opt" => Ok(Self::Opt(OptConfig::from_hf(config)?.load(weights)?)),
            other => Err(unsupported(config, other)),
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
    /// [`ModelError::Input`] for inconsistent shapes or a full cache.
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
    pub fn forward_hidden(
        &self,
        input: &ForwardInput,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        match self {
            Self::Llama(m) => m.forward_hidden(input, cache),
            Self::Gpt2(m) => m.forward_hidden(input, cache),
            Self::Opt(m) => m.forward_hidden(input, cache),
        }
    }

    /// Projects hidden states to the vocabulary.
    ///
    /// # Shapes
    /// - hidden `[batch, seq, hidden]` -> `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Llama(m) => m.logits(hidden),
            Self::Gpt2(m) => m.logits(hidden),
            Self::Opt(m) => m.logits(hidden),
        }
    }

    /// An empty KV cache for this model holding up to `max_len` positions (allocated lazily on
    /// the device and in the dtype of the first forward pass).
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        match self {
            Self::Llama(m) => m.new_cache(max_len),
            Self::Gpt2(m) => m.new_cache(max_len),
            Self::Opt(m) => m.new_cache(max_len),
        }
    }

    /// `model_type` of the architecture.
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Llama(m) => m.config.family.model_type(),
            Self::Gpt2(_) => "gpt2",
            Self::Opt(_) => "opt",
        }
    }

    /// Vocabulary size (rows of the logits).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Llama(m) => m.config.vocab_size,
            Self::Gpt2(m) => m.config.vocab_size,
            Self::Opt(m) => m.config.vocab_size,
        }
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Llama(m) => m.config.hidden_size,
            Self::Gpt2(m) => m.config.n_embd,
            // OPT's final hidden states are projected to `word_embed_proj_dim`.
            Self::Opt(m) => m.config.word_embed_proj_dim,
        }
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        match self {
            Self::Llama(m) => m.config.num_hidden_layers,
            Self::Gpt2(m) => m.config.n_layer,
            Self::Opt(m) => m.config.num_hidden_layers,
        }
    }

    /// The model's maximum sequence length (`max_position_embeddings`).
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            Self::Llama(m) => m.config.max_position_embeddings,
            Self::Gpt2(m) => m.config.n_positions,
            Self::Opt(m) => m.config.max_position_embeddings,
        }
    }

    /// Whether the output projection shares the token embedding.
    pub fn tied_embeddings(&self) -> bool {
        match self {
            Self::Llama(m) => m.lm_head.is_none(),
            Self::Gpt2(m) => m.lm_head.is_none(),
            Self::Opt(m) => m.lm_head.is_none(),
        }
    }

    /// Every parameter under its Hub tensor name, in its current dtype.
    pub fn state_dict(&self) -> Vec<(String, TensorData)> {
        match self {
            Self::Llama(m) => m.state_dict(),
            Self::Gpt2(m) => m.state_dict(),
            Self::Opt(m) => m.state_dict(),
        }
    }

    /// Writes `dir/model.safetensors` (Hub tensor names, current dtype) and `dir/config.json`
    /// (`config` with `dtype`/`torch_dtype` set to the dtype written). Creates `dir`.
    ///
    /// Adapters in [`Linear`] layers are not merged here; merge them first to save a plain
    /// model.
    pub fn save(&self, dir: &Path, config: &ModelConfig) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let tensors = self.state_dict();
        let dtype = tensors
            .first()
            .map(|(_, t)| match t.dtype() {
                burn::tensor::DType::BF16 => "bfloat16",
                burn::tensor::DType::F16 => "float16",
                burn::tensor::DType::F64 => "float64",
                _ => "float32",
            })
            .unwrap_or("float32");
        save_safetensors(&dir.join(SINGLE_FILE), &tensors)?;
        // A single file replaces any shards of an earlier save into the same folder.
        let index = dir.join(crate::weights::INDEX_FILE);
        if index.is_file() {
            std::fs::remove_file(&index).map_err(|e| ModelError::io(&index, e))?;
        }
        let mut config = config.clone();
        let key = if config.raw.contains_key("torch_dtype") {
            "torch_dtype"
        } else {
            "dtype"
        };
        config.set(key, serde_json::Value::String(dtype.to_string()));
        config.save(dir)
    }
}

impl LinearVisitor for CausalLm {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
        match self {
            Self::Llama(m) => m.visit_linears(f),
            Self::Gpt2(m) => m.visit_linears(f),
            Self::Opt(m) => m.visit_linears(f),
        }
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
        match self {
            Self::Llama(m) => m.visit_linears_mut(f),
            Self::Gpt2(m) => m.visit_linears_mut(f),
            Self::Opt(m) => m.visit_linears_mut(f),
        }
    }

    fn visit_embeddings_mut(
        &mut self,
        f: &mut dyn FnMut(&str, &mut burn::module::Param<Tensor<2>>),
    ) {
        match self {
            Self::Llama(m) => m.visit_embeddings_mut(f),
            Self::Gpt2(m) => m.visit_embeddings_mut(f),
            Self::Opt(m) => m.visit_embeddings_mut(f),
        }
    }
}

fn unsupported(config: &ModelConfig, model_type: &str) -> ModelError {
    ModelError::UnsupportedModelType {
        path: config.path.clone(),
        model_type: model_type.to_string(),
        supported: SUPPORTED_MODEL_TYPES.join(", "),
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
    let config = ModelConfig::from_dir(dir)?;
    if !SUPPORTED_MODEL_TYPES.contains(&config.model_type.as_str()) {
        return Err(unsupported(&config, &config.model_type));
    }
    let dtype = opts.dtype.unwrap_or(FloatDType::F32);
    let weights = WeightSource::open(dir, device, dtype)?;
    let mut model = CausalLm::load(&config, &weights)?;
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
        Some(Tokenizer::from_dir(dir)?)
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
