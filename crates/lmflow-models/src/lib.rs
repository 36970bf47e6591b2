//! # lmflow-models
//!
//! Hugging Face-compatible causal language models on Burn: load a Hub-layout folder
//! (`config.json`, `model.safetensors` or sharded `model.safetensors.index.json`, tokenizer
//! files), run it with the same numerics as `transformers`, decode with a KV cache, and save it
//! back in a layout `transformers` loads.
//!
//! Architectures (by `model_type`, one table: [`MODEL_TYPES`]): `llama`, `mistral`,
//! `ministral`, `qwen2`, `qwen3` ([`llama`]), `gpt2` ([`gpt2`]), `opt` ([`opt`], also
//! Galactica), and the vision-language `llava` ([`llava`]: a CLIP vision tower ([`clip`]), a
//! projector and a LLaMA-family language model; loaded with [`load_llava`]). Each module
//! names its checkpoint tensors once ([`hub`]); loading, saving and the
//! linear-layer paths PEFT uses derive from that. See `docs/models.md` for the support matrix.
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use lmflow_models::{CausalLm, ForwardInput, ModelConfig};
//!
//! let device = Device::flex();
//! let config = ModelConfig::from_json(
//!     serde_json::json!({
//!         "model_type": "llama", "vocab_size": 32, "hidden_size": 16,
//!         "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
//!         "num_key_value_heads": 2
//!     }),
//!     "config.json".as_ref(),
//! )?;
//! let model = CausalLm::from_config(&config, &device)?;
//! let ids = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
//! let out = model.forward(ForwardInput::new(ids), None)?;
//! assert_eq!(out.logits.dims(), [1, 3, 32]);
//! # Ok::<(), lmflow_models::ModelError>(())
//! ```

pub mod activation;
pub mod attention;
pub mod attention_tiled;
pub mod bnb;
pub mod cache;
pub mod clip;
pub mod config;
pub mod error;
pub mod eval;
pub mod gpt2;
pub mod hub;
pub mod input;
pub mod layer_norm;
pub mod llama;
pub mod llava;
pub mod logprobs;
pub mod model;
pub mod norm;
pub mod opt;
pub mod rope;
pub mod sequence_classification;
pub mod tokenizer;
pub mod weights;

pub use attention_tiled::{AttentionImpl, TiledMask};
pub use cache::KvCache;
pub use config::ModelConfig;
pub use error::ModelError;
pub use llava::{LlavaConfig, LlavaModel, PretrainedLlava, load_llava};
pub use model::{
    CausalDecoder, CausalLm, Family, ForwardInput, ForwardOutput, LayerContext, Layerwise,
    LoadOptions, MODEL_TYPES, ModelTypeRow, Pretrained, load_pretrained,
    load_pretrained_with_linear_hook, model_type_row, supported_model_types,
};
pub use rope::RopeScaling;
pub use sequence_classification::{
    PretrainedClassifier, SequenceClassifier, last_non_pad_positions, load_sequence_classifier,
    pool_and_score,
};
pub use tokenizer::Tokenizer;
pub use weights::{WeightSource, save_safetensors};
