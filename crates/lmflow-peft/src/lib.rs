//! # lmflow-peft
//!
//! Parameter-efficient fine-tuning for Burn models, in Hugging Face PEFT's file format.
//!
//! - [`Linear`]: a linear layer in the Hugging Face `[out, in]` layout that carries named
//!   LoRA / rsLoRA / DoRA adapters ([`LoraAdapter`]) and optionally an NF4-quantised frozen
//!   base ([`Nf4Weight`], QLoRA). The update is computed as two low-rank matmuls.
//! - [`LinearVisitor`]: models (all of `lmflow-models`) expose their linear layers by Hub
//!   module path; `inject` attaches adapters by `target_modules`, `io` saves and loads
//!   `adapter_config.json` + `adapter_model.safetensors`, merge/unmerge fold them in.
//! - `lisa`: LISA layer sampling for the trainer.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use lmflow_peft::{LinearConfig, LoraAdapter, LoraInit};
//!
//! let device = Device::flex();
//! let mut layer = LinearConfig::new(16, 8).init(&device);
//! let (adapter, _) =
//!     LoraAdapter::init("default", layer.weight.val(), 4, 2.0, 0.0, &LoraInit::Default, false)
//!         .unwrap();
//! layer.adapters.push(adapter);
//! layer.active_adapter = Some("default".into());
//! let y = layer.forward(Tensor::<2>::zeros([4, 16], &device));
//! assert_eq!(y.dims(), [4, 8]);
//! ```

pub mod config;
pub mod error;
pub mod linear;
pub mod lora;
pub mod nf4;
mod svd;

pub use config::{InitLoraWeights, LoraConfig, TargetModules};
pub use error::PeftError;
pub use linear::{Linear, LinearConfig, LinearVisitor, MergedAdapter};
pub use lora::{LoraAdapter, LoraInit};
pub use nf4::{Nf4Config, Nf4Weight};
