//! Optimizers, learning-rate schedules and global-norm gradient clipping for LMFlow-rs.
pub mod clip;
pub mod error;
pub mod optimizers;
pub mod schedule;
pub use error::Error;
