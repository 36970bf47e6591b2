//! Optimizers, learning-rate schedules and global-norm gradient clipping for LMFlow-rs.
pub mod accumulate;
pub mod clip;
pub mod error;
pub mod groups;
pub mod optimizers;
pub mod registry;
pub mod schedule;
pub use error::Error;
