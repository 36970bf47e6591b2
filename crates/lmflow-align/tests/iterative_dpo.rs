#![allow(clippy::unwrap_used)]
//! Iterative DPO on the bundled tiny model with the AFINN lexicon reward: each iteration
//! samples, scores and pairs (max_min) responses, runs DPO from the previous iteration's model,
//! and the mean reward of the policy's samples rises.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lmflow_align::raft::{Raft, RaftConfig, RaftPrompt, ScoredSample, Selection};
use lmflow_align::reward_fn::{Lexicon, LexiconReward};
use lmflow_align::{DpoConfig, IterativeDpoConfig, Pairing, run_iterative_dpo};
use lmflow_datasets::{Instance, ReadOptions, read_dataset};
use lmflow_models::{LoadOptions, Pretrained, load_pretrained};
use lmflow_train::{FullModelWeights, TrainerConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn prompts(p: &Pretrained) -> Vec<RaftPrompt> {
    let tok = p.tokenizer.as_ref().unwrap();
    let data = read_dataset(
        root().join("assets/data/align/prompts.json"),
        &ReadOptions::default(),
    )
    .unwrap();
    data.instances
        .iter()
        .map(|i| match i {
            Instance::TextOnly { text } => RaftPrompt {
                text: text.clone(),
                ids: tok.encode(text, true).unwrap(),
            },
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn sampling(dir: &Path) -> RaftConfig {
    RaftConfig {
        output_dir: dir.to_path_buf(),
        iterations: 3,
        prompts_per_iteration: 16,
        samples_per_prompt: 4,
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        min_new_tokens: 4,
        max_new_tokens: 16,
        generation_batch_size: 16,
        selection: Selection::Local,
        min_distinct2: 0.5,
        seed: 7,
        resume: false,
        sft: TrainerConfig {
            max_steps: Some(8),
            learning_rate: 1e-3,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 16,
            logging_steps: 1,
            save_steps: 1000,
            ..TrainerConfig::default()
        },
    }
}

#[test]
fn iterative_dpo_raises_the_lexicon_reward() {
    let device = Device::flex().autodiff();
    let pretrained = load_pretrained(
        &root().join("assets/tiny-llama"),
        &device,
        &LoadOptions::default(),
    )
    .unwrap();
    let tok = pretrained.tokenizer.as_ref().unwrap();
    let prompts = prompts(&pretrained);
    let eval: Vec<&RaftPrompt> = prompts.iter().rev().take(32).collect();
    let reward = LexiconReward::sum(Lexicon::afinn());
    let weights = FullModelWeights::new(pretrained.config.clone(), device.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = IterativeDpoConfig {
        sampling: sampling(dir.path()),
        pairing: Pairing::MaxMin,
        dpo: DpoConfig::default(),
    };
    let probe = Raft::new(
        config.sampling.clone(),
        tok,
        &reward,
        &weights,
        device.clone(),
    )
    .unwrap();
    let mean = |s: &[ScoredSample]| s.iter().map(|x| x.reward).sum::<f64>() / s.len() as f64;
    let before = mean(
        &probe
            .sample_and_score(&pretrained.model, &eval, 1000)
            .unwrap(),
    );
    let (model, records) = run_iterative_dpo(
        pretrained.model,
        &prompts,
        tok,
        &reward,
        &weights,
        &config,
        &device,
        &mut |r| eprintln!("{}", serde_json::to_string(r).unwrap()),
    )
    .unwrap();
    let after = mean(&probe.sample_and_score(&model, &eval, 1000).unwrap());
    eprintln!("mean AFINN reward of held-out samples {before:.3} -> {after:.3}");
    assert_eq!(records.len(), 3);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.iteration, i);
        assert!(r.pairs > 0 && r.pairs <= 16);
        assert!(r.pair_gap > 0.0);
        assert!(r.dpo_loss.is_some());
        assert!(dir.path().join(format!("iter-{i:04}/final")).is_dir());
    }
    let log = std::fs::read_to_string(dir.path().join("iterations.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3);
    assert!(
        after > before + 0.2,
        "mean reward {before:.3} -> {after:.3}"
    );
}
