//! Optimizers missing from Burn, each a Burn [`Optimizer`](burn::optim::Optimizer) with a
//! `XConfig` whose defaults equal the reference implementation's.

pub(crate) mod state;

mod adadelta;
mod adamax;
mod nadam;
mod radam;

pub use adadelta::*;
pub use adamax::*;
pub use nadam::*;
pub use radam::*;
