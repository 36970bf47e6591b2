//! Activation checkpointing per decoder layer (`checkpointed_lm_loss_backward`) gives the loss
//! and the gradient of every parameter of the run without it (1e-5 in f32), for untied and
//! tied heads, full and LoRA models, with padding and packed segments.
#![allow(clippy::unwrap_used)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lmflow_models::{CausalLm, ForwardInput, ModelConfig};
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model};
use lmflow_train::loss::{causal_lm_loss, checkpointed_lm_loss_backward};

fn model(tied: bool, device: &Device) -> CausalLm {
    device.seed(11);
    let config = ModelConfig::from_json(
        serde_json::json!({
            "model_type": "llama", "vocab_size": 96, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "tie_word_embeddings": tied
        }),
        "config.json".as_ref(),
    )
    .unwrap();
    CausalLm::from_config(&config, device).unwrap()
}

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

fn input(device: &Device) -> (ForwardInput, Tensor<2, Int>) {
    let ids: Vec<i64> = (0..2 * 9).map(|i| (i * 37 + 5) % 96).collect();
    let mut labels = ids.clone();
    labels[0] = -100;
    labels[4] = -100;
    labels[16] = -100;
    labels[17] = -100;
    // Row 0: two packed samples (positions restart); row 1: two padding tokens at the end.
    let mask: Vec<i64> = (0..18).map(|i| i64::from(i < 16)).collect();
    let positions: Vec<i64> = (0..18)
        .map(|i| {
            if i < 9 {
                (i % 5) as i64
            } else {
                (i - 9) as i64
            }
        })
        .collect();
    let segments: Vec<i64> = (0..18)
        .map(|i| {
            if i < 5 {
                1
            } else if i < 9 {
                2
            } else {
                1
            }
        })
        .collect();
    let t = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [2, 9]), device);
    let input = ForwardInput::new(t(ids))
        .with_attention_mask(t(mask))
        .with_position_ids(t(positions))
        .with_segment_ids(t(segments));
    (input, t(labels))
}

fn check(model: CausalLm, device: &Device, chunk: usize) {
    let (input, labels) = input(device);
    let scale = 1.0 / 11.0;
    let out = model.forward(input.clone(), None).unwrap();
    let full = causal_lm_loss(out.logits, labels.clone());
    let full_sum: f32 = full.sum.clone().into_scalar();
    let reference = GradientsParams::from_grads(full.sum.mul_scalar(scale).backward(), &model);

    let (loss, grads) =
        checkpointed_lm_loss_backward(&model, &input, labels, chunk, scale).unwrap();
    assert_eq!(loss.tokens, full.tokens);
    let sum: f32 = loss.sum.into_scalar();
    assert!((sum - full_sum).abs() < 1e-4, "{sum} vs {full_sum}");

    let (a, b) = (grads_of(&model, &reference), grads_of(&model, &grads));
    assert_eq!(a.len(), b.len());
    let mut compared = 0;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        match (x, y) {
            (Some(x), Some(y)) => {
                let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(d < 1e-5, "gradient of parameter {i} differs by {d}");
                compared += 1;
            }
            (None, None) => {}
            _ => panic!("parameter {i} has a gradient on one side only"),
        }
    }
    assert!(compared > 0);
}

#[test]
fn checkpointing_equals_plain_backward_untied_full() {
    let device = Device::flex().autodiff();
    check(model(false, &device), &device, 5);
}

#[test]
fn checkpointing_equals_plain_backward_tied_unchunked() {
    let device = Device::flex().autodiff();
    check(model(true, &device), &device, 0);
}

#[test]
fn checkpointing_equals_plain_backward_with_lora() {
    let device = Device::flex().autodiff();
    let base = model(false, &device).no_grad();
    let mut cfg = LoraConfig::new(4, 8.0, TargetModules::Pattern("all-linear".into()));
    cfg.init_lora_weights = lmflow_peft::InitLoraWeights::Bool(false);
    let (model, _) = get_peft_model(base, &cfg, "default").unwrap();
    check(model, &device, 7);
}

#[test]
fn checkpointing_refuses_gpt2() {
    let device = Device::flex().autodiff();
    let config = ModelConfig::from_json(
        serde_json::json!({
            "model_type": "gpt2", "vocab_size": 96, "n_embd": 32, "n_layer": 1, "n_head": 4,
            "n_positions": 32
        }),
        "config.json".as_ref(),
    )
    .unwrap();
    let model = CausalLm::from_config(&config, &device).unwrap();
    let (input, labels) = input(&device);
    let err = checkpointed_lm_loss_backward(&model, &input, labels, 0, 1.0).unwrap_err();
    assert!(err.to_string().contains("gpt2"), "{err}");
}
