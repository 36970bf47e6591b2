//! Optimizers, learning-rate schedules and global-norm gradient clipping for LMFlow-rs,
//! checked against PyTorch.
//!
//! - [`optimizers`]: the optimizers of LMFlow's `--customized_optim` list that Burn lacks
//!   (AdaBelief, AdaBound, LARS, Adamax, NAdam, RAdam, AdamP, SGDP, Yogi, SophiaG, NovoGrad,
//!   Adadelta, schedule-free AdamW and SGD, `dummy`), each a Burn
//!   [`Optimizer`](burn::optim::Optimizer) with an `XConfig` whose defaults are the reference
//!   implementation's, plus [`optimizers::AdamW8bit`] with 8-bit blockwise moments.
//! - [`registry`]: [`OptimizerConfig`] builds any of these or Burn's own optimizers from a name
//!   plus parameters (JSON), giving a [`BuiltOptimizer`] around a Burn `ModuleOptimizer`.
//! - [`groups`]: no weight decay for biases and norm weights, learning-rate ratios per group
//!   (LoRA+).
//! - [`schedule`]: the schedules of `transformers.get_scheduler`.
//! - [`clip`]: clipping by the global norm over all tensors (`clip_grad_norm_`).
//!
//! ```
//! use burn::module::{Module, Param};
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Tensor, TensorData};
//! use lmflow_optim::clip::{NormType, clip_grad_norm};
//! use lmflow_optim::groups::ParamGroupsConfig;
//! use lmflow_optim::schedule::ScheduleConfig;
//! use lmflow_optim::OptimizerConfig;
//!
//! #[derive(Module, Debug)]
//! struct Model {
//!     weight: Param<Tensor<2>>,
//!     bias: Param<Tensor<1>>,
//! }
//!
//! # fn main() -> Result<(), lmflow_optim::Error> {
//! let device = Device::flex().autodiff();
//! let mut model = Model {
//!     weight: Param::from_data(TensorData::new(vec![0.5f32; 6], [2, 3]), &device),
//!     bias: Param::from_data(TensorData::new(vec![0.0f32; 2], [2]), &device),
//! };
//! let config = OptimizerConfig::from_json(
//!     r#"{"name": "adabelief", "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.01}"#,
//! )?;
//! let mut optimizer = config.build_with_groups(&ParamGroupsConfig::default())?;
//! let schedule = ScheduleConfig::from_json(r#"{"name": "cosine", "warmup_ratio": 0.1}"#)?
//!     .init(config.lr(), 100)?;
//!
//! for step in 0..3 {
//!     let x = Tensor::<2>::ones([4, 3], &device);
//!     let loss = (x.matmul(model.weight.val().transpose()) + model.bias.val().unsqueeze::<2>())
//!         .square()
//!         .mean();
//!     let mut grads = GradientsParams::from_grads(loss.backward(), &model);
//!     let _norm = clip_grad_norm(&model, &mut grads, 1.0, NormType::P(2.0))?;
//!     model = optimizer.step(schedule.lr(step), model, grads);
//! }
//! // The optimizer state saves and restores through Burn's records.
//! let bytes = optimizer.optimizer.into_bytes().expect("in-memory record");
//! assert!(!bytes.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/optimizers.md` for the table of optimizers, defaults, memory and references.

pub mod clip;
pub mod error;
pub mod groups;
pub mod optimizers;
pub mod registry;
pub mod schedule;

pub use error::Error;
pub use registry::{BuiltOptimizer, OptimizerConfig};
