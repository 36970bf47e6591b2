//! # lmflow-peft
//!
//! Parameter-efficient fine-tuning for Burn models.
//!
//! The building block is [`Linear`]: a linear layer in the Hugging Face `[out, in]` layout.
//! Models built from it (all of `lmflow-models`) expose their layers through [`LinearVisitor`].
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use lmflow_peft::LinearConfig;
//!
//! let device = Device::flex();
//! let layer = LinearConfig::new(16, 8).init(&device);
//! let y = layer.forward(Tensor::<2>::zeros([4, 16], &device));
//! assert_eq!(y.dims(), [4, 8]);
//! ```

pub mod linear;

pub use linear::{Linear, LinearConfig, LinearVisitor};
