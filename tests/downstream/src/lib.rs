//! A user's own model with LoRA from `lmflow-peft` (nothing else of LMFlow-rs): a small
//! two-layer regressor whose layers are `lmflow_peft::Linear`, named for PEFT through
//! `impl_linear_visitor!`.

use burn::module::Module;
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use lmflow_peft::{Linear, LinearConfig};

/// `y = out(gelu(hidden(x)))`: 4 inputs, 2 outputs.
#[derive(Module, Debug)]
pub struct Regressor {
    /// Hidden layer, 4 -> 32.
    pub hidden: Linear,
    /// Output layer, 32 -> 2.
    pub out: Linear,
}

lmflow_peft::impl_linear_visitor!(Regressor { hidden, out });

impl Regressor {
    /// A randomly initialised regressor.
    pub fn new(device: &Device) -> Self {
        Self {
            hidden: LinearConfig::new(4, 32).init(device),
            out: LinearConfig::new(32, 2).init(device),
        }
    }

    /// `[n, 4] -> [n, 2]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(gelu(self.hidden.forward(x)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use burn::optim::{AdamConfig, GradientsParams};
    use burn::tensor::{Device, Distribution, Tensor};
    use lmflow_peft::{LoraConfig, TargetModules};

    use super::Regressor;

    /// Targets: a fixed linear map of the inputs the base model does not know.
    fn data(device: &Device) -> (Tensor<2>, Tensor<2>) {
        let x = Tensor::<2>::random([128, 4], Distribution::Normal(0.0, 1.0), device);
        let w =
            Tensor::<2>::from_floats([[1.0, -2.0], [0.5, 0.0], [0.0, 1.5], [-1.0, 1.0]], device);
        let y = x.clone().matmul(w);
        (x, y)
    }

    #[test]
    fn lora_fine_tuning_of_an_own_model_saves_and_reloads() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let base = Regressor::new(&device);
        let config = LoraConfig::new(
            4,
            8.0,
            TargetModules::Names(vec!["hidden".into(), "out".into()]),
        );
        let (mut model, report) =
            lmflow_peft::get_peft_model(base.clone(), &config, "default").unwrap();
        assert_eq!(report.adapted, ["hidden", "out"]);

        let (x, y) = data(&device);
        let mse = |m: &Regressor| (m.forward(x.clone()) - y.clone()).square().mean();
        let before: f32 = mse(&model).into_scalar();
        let mut optim = AdamConfig::new().init();
        for _ in 0..150 {
            let grads = GradientsParams::from_grads(mse(&model).backward(), &model);
            model = optim.step(2e-2, model, grads);
        }
        let after: f32 = mse(&model).into_scalar();
        assert!(after < 0.5 * before, "loss {before} -> {after}");
        // Only adapters trained: the base weights are unchanged.
        let same: f32 = (model.hidden.weight.val() - base.hidden.weight.val())
            .abs()
            .max()
            .into_scalar();
        assert_eq!(same, 0.0);

        let dir = tempfile::tempdir().unwrap();
        lmflow_peft::save_adapter(&mut model, &config, "default", dir.path()).unwrap();
        let mut reloaded = base;
        lmflow_peft::load_adapter(&mut reloaded, dir.path(), "default", &device).unwrap();
        let diff: f32 = (model.forward(x.clone()) - reloaded.forward(x))
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-5, "{diff}");
    }
}
