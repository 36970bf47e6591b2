//! Parameter ids derived from module paths.
//!
//! Burn identifies optimizer state by [`ParamId`], which is random for freshly created
//! parameters. Deriving ids from each parameter's module path makes them identical across
//! processes, so a resumed run finds its optimizer state again.

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::Tensor;

struct StableIds {
    path: Vec<String>,
}

impl ModuleMapper for StableIds {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.id = ParamId::from(fnv1a(&self.path.join(".")));
        param
    }
}

fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in text.as_bytes() {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

/// Gives every float parameter of `module` an id derived from its module path.
pub fn assign_stable_param_ids<M: Module>(module: M) -> M {
    module.map(&mut StableIds { path: Vec::new() })
}
