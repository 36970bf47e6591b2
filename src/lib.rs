//! # LMFlow-rs
//!
//! Fine-tune, align and run large language models on [Burn](https://burn.dev): the LMFlow
//! toolkit rebuilt as Rust crates. This facade re-exports them:
//!
//! | module | crate | what |
//! | --- | --- | --- |
//! | [`models`] | `lmflow-models` | HF-format causal LMs (LLaMA, Qwen2/3, Mistral, GPT-2, OPT), tokenizer, KV cache |
//! | [`datasets`] | `lmflow-datasets` | LMFlow dataset formats, chat templates, loss masks, packing, batches |
//! | [`peft`] | `lmflow-peft` | LoRA, rsLoRA, DoRA, QLoRA (NF4), LISA in HF PEFT's format |
//! | [`optim`] | `lmflow-optim` | optimizers, learning-rate schedules, global-norm clipping |
//! | [`train`] | `lmflow-train` | the trainer: loss, accumulation, checkpoints, metrics |
//! | [`infer`] | `lmflow-infer` | generation, sampling, speculative decoding, evaluation |
//! | [`align`] | `lmflow-align` | DPO and reward-model losses (trainers planned) |
//!
//! ```
//! use lmflow::burn::tensor::{Device, Int, Tensor};
//! use lmflow::models::{CausalLm, ForwardInput, ModelConfig};
//!
//! let device = Device::flex();
//! let config = ModelConfig::from_json(
//!     serde_json::json!({
//!         "model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
//!         "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
//!         "num_key_value_heads": 2
//!     }),
//!     "config.json".as_ref(),
//! )?;
//! let model = CausalLm::from_config(&config, &device)?;
//! let ids = Tensor::<2, Int>::from_ints([[1, 2, 3, 4]], &device);
//! let logits = model.forward(ForwardInput::new(ids), None)?.logits;
//! assert_eq!(logits.dims(), [1, 4, 64]);
//! # Ok::<(), lmflow::models::ModelError>(())
//! ```

pub use burn;
pub use lmflow_align as align;
pub use lmflow_datasets as datasets;
pub use lmflow_infer as infer;
pub use lmflow_models as models;
pub use lmflow_optim as optim;
pub use lmflow_peft as peft;
pub use lmflow_train as train;
