//! LoRA for your own Burn model: an MLP classifier written here gets adapters from `lmflow-peft`
//! (its layers are `lmflow_peft::Linear`, named through `impl_linear_visitor!`), is fine-tuned
//! with only the adapters trainable, saved in Hugging Face PEFT's format, and reloaded into a
//! fresh copy of the base model with identical outputs.
//!
//! `cargo run --example custom_model_lora [-- OUT_DIR]` (`cargo test --example
//! custom_model_lora` runs it in a short mode).
#![allow(clippy::unwrap_used)]

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Distribution, Int, Tensor};
use lmflow_peft::{Linear, LinearConfig, LoraConfig, TargetModules};

/// A 3-class classifier of 8-dimensional points.
#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    head: Linear,
}
// Names the layers "fc1", "fc2", "head" for target_modules and the saved tensors.
lmflow_peft::impl_linear_visitor!(Mlp { fc1, fc2, head });

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(8, 64).init(device),
            fc2: LinearConfig::new(64, 64).init(device),
            head: LinearConfig::new(64, 3).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.head
            .forward(relu(self.fc2.forward(relu(self.fc1.forward(x)))))
    }
}

/// Points and labels: the class is which of the first three coordinates is largest.
fn batch(n: usize, device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let x = Tensor::<2>::random([n, 8], Distribution::Normal(0.0, 1.0), device);
    let labels = x.clone().slice([0..n, 0..3]).argmax(1).reshape([n]);
    (x, labels)
}

/// Mean cross-entropy of `logits` `[n, classes]` against `labels` `[n]`.
fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let n = labels.dims()[0];
    let picked = log_softmax(logits, 1).gather(1, labels.reshape([n, 1]));
    picked.mean().neg()
}

/// Trains adapters for `steps` steps, saves them to `out`, reloads; returns the losses.
pub fn run(steps: usize, out: &std::path::Path) -> (f32, f32) {
    let device = Device::flex().autodiff();
    let base = Mlp::new(&device);
    let config = LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        target_modules: Some(TargetModules::Names(vec!["fc1".into(), "fc2".into()])),
        modules_to_save: Some(vec!["head".into()]),
        ..LoraConfig::default()
    };
    // Adapters on fc1/fc2, the head trained in full (PEFT's modules_to_save); the rest frozen.
    let (mut model, report) =
        lmflow_peft::get_peft_model(base.clone(), &config, "default").unwrap();
    println!(
        "adapted {:?}, trained in full {:?}",
        report.adapted, report.saved_linears
    );
    let (trainable, total) = lmflow_peft::trainable::count_params(&model);
    println!("trainable parameters: {trainable} of {total}");

    let (test_x, test_y) = batch(256, &device);
    let first: f32 = cross_entropy(model.forward(test_x.clone()), test_y.clone()).into_scalar();
    let mut optim = AdamWConfig::new().init();
    for step in 0..steps {
        let (x, y) = batch(64, &device);
        let loss = cross_entropy(model.forward(x), y);
        if step % 50 == 0 {
            println!("step {step}: loss {:.4}", loss.clone().into_scalar::<f32>());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let last: f32 = cross_entropy(model.forward(test_x.clone()), test_y).into_scalar();
    println!("held-out loss: {first:.4} -> {last:.4}");

    // adapter_config.json + adapter_model.safetensors (fc1/fc2 lora_A/B, head in full).
    lmflow_peft::save_adapter(&mut model, &config, "default", out).unwrap();
    let mut reloaded = base;
    lmflow_peft::load_adapter(&mut reloaded, out, "default", &device).unwrap();
    let diff: f32 = (model.forward(test_x.clone()) - reloaded.forward(test_x))
        .abs()
        .max()
        .into_scalar();
    println!("reloaded adapter: largest output difference {diff:e}");
    assert!(diff < 1e-5, "reloaded model differs by {diff}");
    (first, last)
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("lmflow-custom-model-lora"));
    run(300, &out);
    println!("adapter written to {}", out.display());
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_run_learns_saves_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let (first, last) = super::run(60, dir.path());
        assert!(last < 0.8 * first, "loss {first} -> {last}");
        assert!(dir.path().join("adapter_config.json").is_file());
    }
}
