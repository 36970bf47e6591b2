//! Declarative optimizer states that save and restore through Burn's optimizer records.
//!
//! Burn's `#[derive(RecordState)]` only works inside `burn-optim`, so the states of this crate
//! implement [`RecordState`](burn::optim::RecordState) through the [`optimizer_state!`] macro:
//! every tensor and scalar field is written under its field name.

/// Declares an optimizer state struct generic over the parameter rank `D` and implements
/// [`RecordState`](burn::optim::RecordState) plus a `to_device` helper for it.
///
/// Sections: `tensors` (always present), `optional` (`Option<Tensor<..>>`) and `scalars`
/// (anything convertible to and from `burn_pack::Scalar`).
macro_rules! optimizer_state {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            tensors { $( $(#[$tm:meta])* $t:ident : $tty:ty ),* $(,)? }
            optional { $( $(#[$om:meta])* $o:ident : $oty:ty ),* $(,)? }
            scalars { $( $(#[$sm:meta])* $s:ident : $sty:ty ),* $(,)? }
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $name<const D: usize> {
            $( $(#[$tm])* pub $t: $tty, )*
            $( $(#[$om])* pub $o: Option<$oty>, )*
            $( $(#[$sm])* pub $s: $sty, )*
        }

        impl<const D: usize> burn::optim::RecordState for $name<D> {
            fn state_flatten(&self, prefix: &str, out: &mut burn::optim::StateSink) {
                $( out.push_tensor(prefix, stringify!($t), self.$t.to_data()); )*
                $( if let Some(t) = &self.$o { out.push_tensor(prefix, stringify!($o), t.to_data()); } )*
                $( out.push_scalar(prefix, stringify!($s), burn_pack::Scalar::from(self.$s)); )*
            }

            #[allow(unused_variables)]
            fn state_unflatten(
                prefix: &str,
                src: &mut burn::optim::StateSource,
                device: &burn::tensor::Device,
            ) -> Option<Self> {
                $( let $t = <$tty>::from_data(src.take_tensor(prefix, stringify!($t))?, device); )*
                $( let $o = src.take_tensor(prefix, stringify!($o)).map(|d| <$oty>::from_data(d, device)); )*
                $( let $s = <$sty>::try_from(src.take_scalar(prefix, stringify!($s))?).ok()?; )*
                Some(Self { $($t,)* $($o,)* $($s,)* })
            }
        }

        impl<const D: usize> $name<D> {
            /// Moves every tensor of the state to `device`.
            #[allow(unused_mut, unused_variables)]
            pub fn to_device(mut self, device: &burn::tensor::Device) -> Self {
                $( self.$t = self.$t.to_device(device); )*
                $( self.$o = self.$o.map(|t| t.to_device(device)); )*
                self
            }
        }
    };
}

pub(crate) use optimizer_state;

/// Declares a per-tensor optimizer that keeps its config: the struct, `XConfig::build`, and a
/// Burn [`Optimizer`](burn::optim::Optimizer) impl whose `step` is the given update function
/// (`fn(&XConfig, lr, tensor, grad, state) -> (tensor, state)`) and whose `to_device` is the
/// state's (see [`optimizer_state!`]).
macro_rules! config_optimizer {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($config:ident) -> $state:ident = $update:path;
    ) => {
        impl $config {
            /// Builds the per-tensor optimizer (wrap with `ModuleOptimizer::from`).
            pub fn build(&self) -> $name {
                $name {
                    config: self.clone(),
                }
            }
        }

        $(#[$meta])*
        #[derive(Clone, Debug)]
        pub struct $name {
            config: $config,
        }

        impl burn::optim::Optimizer for $name {
            type State<const D: usize> = $state<D>;

            fn step<const D: usize>(
                &self,
                lr: burn::optim::LearningRate,
                tensor: burn::tensor::Tensor<D>,
                grad: burn::tensor::Tensor<D>,
                state: Option<Self::State<D>>,
            ) -> (burn::tensor::Tensor<D>, Option<Self::State<D>>) {
                $update(&self.config, lr, tensor, grad, state)
            }

            fn to_device<const D: usize>(
                state: Self::State<D>,
                device: &burn::tensor::Device,
            ) -> Self::State<D> {
                state.to_device(device)
            }
        }
    };
}

pub(crate) use config_optimizer;

optimizer_state! {
    /// First and second moments of an Adam-style optimizer for one parameter.
    pub struct MomentState {
        tensors {
            /// First moment.
            exp_avg: Tensor<D>,
            /// Second moment.
            exp_avg_sq: Tensor<D>,
        }
        optional {}
        scalars {
            /// Number of steps taken.
            step: usize,
        }
    }
}

impl<const D: usize> MomentState<D> {
    /// Both moments `value` everywhere (the shape of `tensor`), before the first step.
    pub fn filled(tensor: &Tensor<D>, value: f64) -> Self {
        let moment = || {
            if value == 0.0 {
                tensor.zeros_like()
            } else {
                tensor.ones_like().mul_scalar(value)
            }
        };
        Self {
            exp_avg: moment(),
            exp_avg_sq: moment(),
            step: 0,
        }
    }
}

/// What one step of a per-tensor optimizer returns: the new tensor and its state.
pub(crate) type Step<const D: usize, S> = (Tensor<D>, Option<S>);

use burn::tensor::Tensor;

/// `1 - beta^step` in double precision, as PyTorch computes bias corrections.
pub(crate) fn bias_correction(beta: f64, step: usize) -> f64 {
    1.0 - beta.powi(step as i32)
}

/// Broadcasts a one-element tensor to rank `D` (shape `[1; D]`) for element-wise products.
pub(crate) fn broadcast_scalar<const D: usize>(value: Tensor<1>) -> Tensor<D> {
    value.reshape([1usize; D])
}

/// The L2 norm of a whole tensor as a one-element tensor.
pub(crate) fn l2_norm<const D: usize>(tensor: Tensor<D>) -> Tensor<1> {
    tensor.square().sum().sqrt()
}

/// An exponential moving average `prev * beta + x * (1 - beta)` (PyTorch's
/// `prev.mul_(beta).add_(x, alpha=1 - beta)`).
pub(crate) fn ema<const D: usize>(prev: Tensor<D>, x: Tensor<D>, beta: f64) -> Tensor<D> {
    prev.mul_scalar(beta) + x.mul_scalar(1.0 - beta)
}

/// Adds the L2 penalty `weight_decay * param` to `grad` (nothing when `weight_decay` is 0).
pub(crate) fn l2_penalty<const D: usize>(
    grad: Tensor<D>,
    param: &Tensor<D>,
    weight_decay: f64,
) -> Tensor<D> {
    if weight_decay != 0.0 {
        grad + param.clone().mul_scalar(weight_decay)
    } else {
        grad
    }
}

/// Applies weight decay, decoupled (`param *= 1 - lr * weight_decay`) or as an L2 penalty on
/// the gradient; nothing when `weight_decay` is 0. Returns the parameter and the gradient.
pub(crate) fn apply_weight_decay<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    lr: f64,
    weight_decay: f64,
    decoupled: bool,
) -> (Tensor<D>, Tensor<D>) {
    if weight_decay != 0.0 && decoupled {
        (param.mul_scalar(1.0 - lr * weight_decay), grad)
    } else {
        let grad = l2_penalty(grad, &param, weight_decay);
        (param, grad)
    }
}

/// The AMSGrad running maximum of `current` when `enabled` (`None` otherwise).
pub(crate) fn running_max<const D: usize>(
    enabled: bool,
    previous: Option<Tensor<D>>,
    current: &Tensor<D>,
) -> Option<Tensor<D>> {
    enabled.then(|| match previous {
        Some(m) => m.max_pair(current.clone()),
        None => current.clone(),
    })
}

/// Adam's denominator `sqrt(v) / sqrt(bias_correction_2) + eps`.
pub(crate) fn adam_denom<const D: usize>(
    v: Tensor<D>,
    bias_correction_2: f64,
    eps: f64,
) -> Tensor<D> {
    v.sqrt()
        .div_scalar(bias_correction_2.sqrt())
        .add_scalar(eps)
}
