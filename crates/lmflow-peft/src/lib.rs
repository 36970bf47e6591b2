//! # lmflow-peft
//!
//! Parameter-efficient fine-tuning for Burn models, in Hugging Face PEFT's file format.
//!
//! - [`Linear`]: a linear layer in the Hugging Face `[out, in]` layout that carries named
//!   LoRA / rsLoRA / DoRA adapters ([`LoraAdapter`]) and optionally an NF4-quantised frozen
//!   base ([`Nf4Weight`], QLoRA). The update is computed as two low-rank matmuls.
//! - [`LinearVisitor`]: models (all of `lmflow-models`) expose their linear layers by Hub
//!   module path; [`inject`] attaches adapters by `target_modules`, [`io`] saves and loads
//!   `adapter_config.json` + `adapter_model.safetensors`, merge/unmerge fold them in.
//! - [`lisa`]: LISA layer sampling for the trainer, freeing the optimizer state of idle layers.
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
pub mod inject;
pub mod io;
pub mod linear;
pub mod lisa;
pub mod lora;
pub mod nf4;
mod svd;
pub mod trainable;

pub use config::{InitLoraWeights, LoraConfig, TargetModules};
pub use error::PeftError;
pub use inject::{
    get_peft_model, inject_adapter, merge_adapter, merge_and_unload, set_active_adapter, unload,
    unmerge_adapter,
};
pub use io::{load_adapter, save_adapter};
pub use linear::{Linear, LinearConfig, LinearVisitor, MergedAdapter};
pub use lora::{LoraAdapter, LoraInit};
pub use nf4::{Nf4Config, Nf4Weight};
