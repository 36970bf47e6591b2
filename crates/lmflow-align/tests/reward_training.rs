#![allow(clippy::unwrap_used)]
//! Reward-model training (Bradley-Terry objective in the shared loop) on the demo preference
//! set of `assets/data/align/`: the preferred answer uses positive opinion words; the reward
//! model must order > 90% of the held-out pairs (disjoint states) correctly.

use std::path::PathBuf;

use burn::tensor::Device;
use lmflow_align::reward_fn::{RewardFunction, RewardSample};
use lmflow_align::reward_model::{
    ClassifierLoraWeights, ClassifierWeights, PairFormat, RewardModelScorer, RewardObjective,
    encode_pairs, pairwise_accuracy,
};
use lmflow_datasets::{ChatTemplate, ReadOptions, TokenizedPair, read_dataset};
use lmflow_models::{LoadOptions, SequenceClassifier, load_sequence_classifier};
use lmflow_peft::{LoraConfig, get_peft_model};
use lmflow_train::{Trainer, TrainerConfig};

/// The backend's random generator is shared by the tests of this process: each test takes this
/// lock and seeds it, so the new score head is the same whichever test runs first.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn seeded_device(seed: u64) -> (std::sync::MutexGuard<'static, ()>, Device) {
    let guard = RNG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let device = Device::flex().autodiff();
    device.seed(seed);
    (guard, device)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pairs(name: &str, tok: &lmflow_models::Tokenizer, t: &ChatTemplate) -> Vec<TokenizedPair> {
    let data = read_dataset(
        root().join("assets/data/align").join(name),
        &ReadOptions::default(),
    )
    .unwrap();
    encode_pairs(&data.instances, tok, Some(t), 96).unwrap()
}

fn trainer_config(dir: &std::path::Path, lr: f64, epochs: f64) -> TrainerConfig {
    TrainerConfig {
        output_dir: dir.to_path_buf(),
        learning_rate: lr,
        num_train_epochs: epochs,
        per_device_train_batch_size: 16,
        per_device_eval_batch_size: 32,
        warmup_ratio: 0.0,
        logging_steps: 5,
        eval_steps: 0,
        save_steps: 1000,
        packing: false,
        block_size: 96,
        seed: 3,
        ..TrainerConfig::default()
    }
}

#[test]
fn reward_model_learns_the_preference_rule() {
    let (_rng, device) = seeded_device(11);
    let loaded = load_sequence_classifier(
        &root().join("assets/tiny-llama"),
        &device,
        &LoadOptions::default(),
        Some(1),
    )
    .unwrap();
    assert!(loaded.new_head);
    let tok = loaded.tokenizer.clone().unwrap();
    let template = ChatTemplate::from_tokenizer(&tok, None).unwrap();
    let train = pairs("preference_train.json", &tok, &template);
    let eval = pairs("preference_eval.json", &tok, &template);
    let pad = loaded.model.pad_token_id.unwrap();
    let plain = device.clone().inner();

    let before = pairwise_accuracy(&loaded.model, &eval, 32, &plain).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weights = ClassifierWeights::new(loaded.config.clone(), Some(pad), device.clone());
    let trainer = Trainer::new(trainer_config(dir.path(), 2e-3, 2.0), device.clone(), pad).unwrap();
    let objective = RewardObjective::new(pad);
    let outcome = trainer
        .train_objective(
            loaded.model.model,
            &weights,
            &objective,
            &train,
            Some(&eval),
            &mut |_| {},
        )
        .unwrap();
    let trained = SequenceClassifier::from_model(outcome.model, Some(pad)).unwrap();
    let after = pairwise_accuracy(&trained, &eval, 32, &plain).unwrap();
    eprintln!("held-out pairwise accuracy {before:.3} -> {after:.3}");
    assert!(after > 0.9, "held-out accuracy {after}");

    // The loop logged the objective's metrics.
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"accuracy\"") && metrics.contains("eval_accuracy"));

    // The final folder is a classifier in the Hub layout and scores as the trained model.
    let reloaded =
        load_sequence_classifier(&outcome.final_dir, &plain, &LoadOptions::default(), None)
            .unwrap();
    assert!(!reloaded.new_head);
    let again = pairwise_accuracy(&reloaded.model, &eval, 32, &plain).unwrap();
    assert_eq!(again, after);

    // As a reward function over text.
    let scorer = RewardModelScorer::new(
        reloaded.model,
        tok.clone(),
        PairFormat::Chat(Box::new(template)),
        96,
        8,
        plain,
    )
    .unwrap();
    let r = scorer
        .score(&[
            RewardSample::new("Tell me about Denver.", "Denver is wonderful and lovely."),
            RewardSample::new("Tell me about Denver.", "Denver is dreadful and awful."),
        ])
        .unwrap();
    assert!(r[0] > r[1], "{r:?}");
}

#[test]
fn lora_reward_model_trains_adapter_and_head() {
    let (_rng, device) = seeded_device(12);
    let loaded = load_sequence_classifier(
        &root().join("assets/tiny-llama"),
        &device,
        &LoadOptions::default(),
        Some(1),
    )
    .unwrap();
    let tok = loaded.tokenizer.clone().unwrap();
    let template = ChatTemplate::from_tokenizer(&tok, None).unwrap();
    let train = pairs("preference_train.json", &tok, &template);
    let eval = pairs("preference_eval.json", &tok, &template);
    let pad = loaded.model.pad_token_id.unwrap();
    let plain = device.clone().inner();
    let lora: LoraConfig = serde_json::from_value(serde_json::json!({
        "r": 8, "lora_alpha": 16, "target_modules": "all-linear",
        "modules_to_save": ["score"], "task_type": "SEQ_CLS"
    }))
    .unwrap();
    let (classifier, _) = get_peft_model(loaded.model, &lora, "default").unwrap();
    let head_before = classifier.score().unwrap().weight.val().into_data();
    let dir = tempfile::tempdir().unwrap();
    let weights = ClassifierLoraWeights::new(lora, "default", Some(pad), device.clone());
    let trainer = Trainer::new(trainer_config(dir.path(), 1e-2, 2.0), device.clone(), pad).unwrap();
    let outcome = trainer
        .train_objective(
            classifier.model,
            &weights,
            &RewardObjective::new(pad),
            &train,
            None,
            &mut |_| {},
        )
        .unwrap();
    let trained = SequenceClassifier::from_model(outcome.model, Some(pad)).unwrap();
    assert_ne!(
        trained.score().unwrap().weight.val().into_data(),
        head_before,
        "the score head is a module to save: it trains"
    );
    let after = pairwise_accuracy(&trained, &eval, 32, &plain).unwrap();
    eprintln!("LoRA held-out pairwise accuracy {after:.3}");
    assert!(after > 0.8, "LoRA held-out accuracy {after}");
    let files: Vec<String> = std::fs::read_dir(&outcome.final_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        files.contains(&"adapter_model.safetensors".to_string()),
        "{files:?}"
    );
}
