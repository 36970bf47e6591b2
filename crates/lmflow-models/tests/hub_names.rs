//! The one description of each architecture's tensor names ([`lmflow_models::hub`]) agrees
//! with itself: every linear layer PEFT sees is saved under the same path, every saved tensor
//! is loaded back from that name, and shared input checks apply to every architecture.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use burn::tensor::{Device, Int, Tensor};
use lmflow_models::{
    CausalLm, ForwardInput, MODEL_TYPES, ModelConfig, ModelError, WeightSource,
    supported_model_types,
};
use lmflow_peft::LinearVisitor;

/// A tiny configuration every architecture of the table accepts (unknown keys are ignored).
fn tiny_config(model_type: &str) -> ModelConfig {
    ModelConfig::from_json(
        serde_json::json!({
            "model_type": model_type, "vocab_size": 40, "hidden_size": 16,
            "intermediate_size": 24, "ffn_dim": 24, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4,
            "word_embed_proj_dim": 8, "max_position_embeddings": 32, "n_positions": 32,
            "tie_word_embeddings": false, "attention_bias": true, "mlp_bias": true
        }),
        "config.json".as_ref(),
    )
    .unwrap()
}

fn every_model(device: &Device) -> Vec<CausalLm> {
    MODEL_TYPES
        .iter()
        .map(|row| CausalLm::from_config(&tiny_config(row.model_type), device).unwrap())
        .collect()
}

#[test]
fn every_visited_linear_and_embedding_is_in_the_state_dict() {
    let device = Device::flex();
    for mut model in every_model(&device) {
        let names: BTreeSet<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
        let mut linears = Vec::new();
        model.visit_linears(&mut |path, linear| {
            linears.push(path.to_string());
            assert_eq!(
                names.contains(&format!("{path}.bias")),
                linear.bias.is_some(),
                "{path}: bias saved iff present"
            );
        });
        assert!(linears.len() >= 4, "{}: {linears:?}", model.model_type());
        assert!(
            linears.iter().any(|p| p == "lm_head"),
            "{}",
            model.model_type()
        );
        for path in &linears {
            assert!(
                names.contains(&format!("{path}.weight")),
                "{}: linear {path} is not saved ({names:?})",
                model.model_type()
            );
        }
        let mut mutable = Vec::new();
        model.visit_linears_mut(&mut |path, _| mutable.push(path.to_string()));
        assert_eq!(mutable, linears);
        let mut embeddings = Vec::new();
        model.visit_embeddings_mut(&mut |path, _| embeddings.push(path.to_string()));
        assert!(!embeddings.is_empty());
        for path in &embeddings {
            assert!(names.contains(&format!("{path}.weight")), "{path}");
        }
    }
}

#[test]
fn saved_names_load_back_and_nothing_is_left_over() {
    let device = Device::flex();
    for model in every_model(&device) {
        let model_type = model.model_type().to_string();
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_config(&model_type);
        model.save(dir.path(), &config).unwrap();
        let weights =
            WeightSource::open(dir.path(), &device, burn::tensor::FloatDType::F32).unwrap();
        let loaded = CausalLm::load(&config, &weights).unwrap();
        assert!(
            weights.unused().is_empty(),
            "{model_type}: {:?}",
            weights.unused()
        );
        let before = model.state_dict();
        let after = loaded.state_dict();
        assert_eq!(before.len(), after.len(), "{model_type}");
        for ((n1, t1), (n2, t2)) in before.iter().zip(&after) {
            assert_eq!(n1, n2);
            assert_eq!(t1, t2, "{model_type}: {n1}");
        }
    }
}

#[test]
fn token_ids_outside_the_vocabulary_are_an_input_error_for_every_architecture() {
    let device = Device::flex();
    for model in every_model(&device) {
        for bad in [40i64, -1] {
            let ids = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device)
                .slice_assign([0..1, 1..2], Tensor::from_data([[bad]], &device));
            let err = model.forward(ForwardInput::new(ids), None).unwrap_err();
            assert!(
                matches!(err, ModelError::Input(ref m) if m.contains("input_ids")),
                "{}: {err}",
                model.model_type()
            );
        }
        let ids = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
        let bad_positions = ForwardInput::new(ids.clone())
            .with_position_ids(Tensor::<2, Int>::from_ints([[0, 1]], &device));
        assert!(matches!(
            model.forward(bad_positions, None),
            Err(ModelError::Input(_))
        ));
        let bad_mask = ForwardInput::new(ids)
            .with_attention_mask(Tensor::<2, Int>::from_ints([[1, 1]], &device));
        assert!(matches!(
            model.forward(bad_mask, None),
            Err(ModelError::Input(_))
        ));
    }
}

#[test]
fn the_table_is_the_list_of_supported_types() {
    let listed: Vec<&str> = supported_model_types().collect();
    assert_eq!(listed.len(), MODEL_TYPES.len());
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(unique.len(), listed.len(), "duplicate rows: {listed:?}");
    for model_type in listed {
        let model = CausalLm::from_config(&tiny_config(model_type), &Device::flex()).unwrap();
        assert_eq!(model.model_type(), model_type);
    }
}
