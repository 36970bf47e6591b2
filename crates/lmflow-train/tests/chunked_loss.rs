//! Chunked cross-entropy (`chunked_lm_loss_backward`) gives the loss and the gradient of every
//! parameter of the unchunked loss (1e-5), for untied and tied heads, full and LoRA models.
#![allow(clippy::unwrap_used)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_models::{CausalLm, ForwardInput, ModelConfig};
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model};
use lmflow_train::loss::{causal_lm_loss, chunked_lm_loss_backward};

fn model(tied: bool, device: &Device) -> CausalLm {
    device.seed(7);
    let config = ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llama", "vocab_size": 96, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "tie_word_embeddings": tied
        }),
        "config.json".as_ref(),
    )
    .unwrap();
    CausalLm::from_config(&config, device).unwrap()
}

/// Every float parameter's gradient, in visiting order.
struct Collect<'a> {
    grads: &'a GradientsParams,
    out: Vec<Option<Vec<f32>>>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let g = self.grads.get::<D>(param.id);
        self.out
            .push(g.map(|g| g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()));
    }
}

fn grads_of(model: &CausalLm, grads: &GradientsParams) -> Vec<Option<Vec<f32>>> {
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

fn check(model: CausalLm, device: &Device) {
    let ids: Vec<i64> = (0..2 * 9).map(|i| (i * 37 + 5) % 96).collect();
    let mut labels = ids.clone();
    labels[0] = -100;
    labels[4] = -100;
    labels[10] = -100;
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 9]), device);
    let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [2, 9]), device);
    let scale = 1.0 / 13.0;

    let out = model
        .forward(ForwardInput::new(input.clone()), None)
        .unwrap();
    let full = causal_lm_loss(out.logits, labels.clone());
    let full_sum: f32 = full.sum.clone().into_scalar();
    let reference = GradientsParams::from_grads(full.sum.mul_scalar(scale).backward(), &model);

    let hidden = model
        .forward_hidden(&ForwardInput::new(input), None)
        .unwrap();
    // 16 predicted positions in chunks of 5: the last chunk is partial.
    let (loss, grads) = chunked_lm_loss_backward(&model, hidden, labels, 5, scale);
    assert_eq!(loss.tokens, full.tokens);
    let sum: f32 = loss.sum.into_scalar();
    assert!((sum - full_sum).abs() < 1e-4, "{sum} vs {full_sum}");

    let (a, b) = (grads_of(&model, &reference), grads_of(&model, &grads));
    assert_eq!(a.len(), b.len());
    let mut compared = 0;
    for (x, y) in a.iter().zip(&b) {
        match (x, y) {
            (Some(x), Some(y)) => {
                let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(d < 1e-5, "gradient differs by {d}");
                compared += 1;
            }
            (None, None) => {}
            _ => panic!("a parameter has a gradient on one side only"),
        }
    }
    assert!(compared > 0);
}

#[test]
fn chunked_loss_equals_unchunked_untied() {
    let device = Device::flex().autodiff();
    check(model(false, &device), &device);
}

#[test]
fn chunked_loss_equals_unchunked_tied() {
    let device = Device::flex().autodiff();
    check(model(true, &device), &device);
}

#[test]
fn chunked_loss_equals_unchunked_with_lora() {
    let device = Device::flex().autodiff();
    let base = model(false, &device).no_grad();
    let mut cfg = LoraConfig::new(4, 8.0, TargetModules::Pattern("all-linear".into()));
    cfg.init_lora_weights = lmflow_peft::InitLoraWeights::Bool(false);
    let (model, _) = get_peft_model(base, &cfg, "default").unwrap();
    check(model, &device);
}
