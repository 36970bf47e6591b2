//! Optimizers missing from Burn, each a Burn [`Optimizer`](burn::optim::Optimizer) with a
//! `XConfig` whose defaults equal the reference implementation's.

pub(crate) mod state;

mod adabelief;
mod adabound;
mod adadelta;
mod adamax;
mod adamp;
mod adamw8bit;
mod dummy;
mod lars;
mod nadam;
mod novograd;
mod projection;
mod radam;
mod schedule_free;
mod sgdp;
mod sophia;
mod yogi;

pub use adabelief::*;
pub use adabound::*;
pub use adadelta::*;
pub use adamax::*;
pub use adamp::*;
pub use adamw8bit::*;
pub use dummy::*;
pub use lars::*;
pub use nadam::*;
pub use novograd::*;
pub use radam::*;
pub use schedule_free::*;
pub use sgdp::*;
pub use sophia::*;
pub use state::MomentState;
pub use yogi::*;
