//! Freezing and unfreezing parameters by their Burn module path.
//!
//! Burn names every parameter by the fields and `Vec` indices leading to it
//! (`layers.3.self_attn.q_proj.adapters.0.lora_a`). These helpers walk any [`Module`] with
//! that path, so they work for every model without a per-architecture list.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Bool, Int, Tensor};

struct PathMapper<F: FnMut(&str) -> Option<bool>> {
    stack: Vec<String>,
    decide: F,
}

impl<F: FnMut(&str) -> Option<bool>> PathMapper<F> {
    fn path(&self) -> String {
        self.stack.join(".")
    }
}

impl<F: FnMut(&str) -> Option<bool>> ModuleMapper for PathMapper<F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path();
        match (self.decide)(&path) {
            Some(trainable) => param.set_require_grad(trainable),
            None => param,
        }
    }
    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        param
    }
    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        param
    }
}

/// Sets `require_grad` on every float parameter for which `decide(path)` returns
/// `Some(trainable)`; parameters with `None` are left as they are.
pub fn set_trainable_by_path<M: Module>(model: M, decide: impl FnMut(&str) -> Option<bool>) -> M {
    let mut mapper = PathMapper {
        stack: Vec::new(),
        decide,
    };
    model.map(&mut mapper)
}

/// Freezes every parameter except adapter tensors (`lora_a`, `lora_b`, `magnitude` inside a
/// [`Linear`](crate::Linear)'s `adapters`), as PEFT's `mark_only_lora_as_trainable`.
pub fn mark_only_adapters_trainable<M: Module>(model: M) -> M {
    set_trainable_by_path(model, |path| Some(is_adapter_path(path)))
}

/// Whether a Burn parameter path lies inside an adapter.
pub fn is_adapter_path(path: &str) -> bool {
    path.split('.').any(|p| p == "adapters")
}

/// `(path, id, element count, require_grad)` of every float parameter, in module order.
pub fn float_params<M: Module>(model: &M) -> Vec<(String, ParamId, usize, bool)> {
    struct V {
        stack: Vec<String>,
        out: Vec<(String, ParamId, usize, bool)>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _c: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let n = param.shape().num_elements();
            self.out
                .push((self.stack.join("."), param.id, n, param.is_require_grad()));
        }
    }
    let mut v = V {
        stack: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

/// `(trainable, total)` float parameter counts.
pub fn count_params<M: Module>(model: &M) -> (usize, usize) {
    float_params(model)
        .iter()
        .fold((0, 0), |(t, n), (_, _, k, g)| {
            (t + if *g { *k } else { 0 }, n + k)
        })
}

struct CastFloats {
    dtype: burn::tensor::FloatDType,
}

impl ModuleMapper for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.dtype;
        param.map(|t| {
            if t.dtype() == burn::tensor::DType::from(dtype) {
                return t;
            }
            let require_grad = t.is_require_grad();
            // Untracked while cast, so that the result is a leaf that may be tracked again.
            t.set_require_grad(false)
                .cast(dtype)
                .set_require_grad(require_grad)
        })
    }
}

/// Stores every float parameter of `model` in `dtype` (ids and `require_grad` kept), one
/// parameter at a time, e.g. a randomly initialised model in bf16. A loaded model gets its
/// dtype from `LoadOptions::dtype` instead (converted while reading, never held in f32); apply
/// this before [`get_peft_model`](crate::get_peft_model) so that the adapters stay f32.
pub fn cast_float_params<M: Module>(model: M, dtype: burn::tensor::FloatDType) -> M {
    model.map(&mut CastFloats { dtype })
}
