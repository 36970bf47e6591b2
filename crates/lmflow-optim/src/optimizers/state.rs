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
