#![allow(clippy::unwrap_used)]
//! RAFT on the bundled tiny model with the AFINN lexicon reward: the reward of its samples
//! rises while their diversity stays, and a killed run resumes to the same result.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lmflow_align::raft::{Raft, RaftConfig, RaftPrompt, Selection, distinct_2};
use lmflow_align::reward_fn::{Lexicon, LexiconReward};
use lmflow_datasets::{Instance, ReadOptions, read_dataset};
use lmflow_models::{LoadOptions, Pretrained, load_pretrained};
use lmflow_train::{FullModelWeights, TrainerConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(device: &Device) -> Pretrained {
    load_pretrained(
        &root().join("assets/tiny-llama"),
        device,
        &LoadOptions::default(),
    )
    .unwrap()
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

fn config(dir: &Path, iterations: usize) -> RaftConfig {
    RaftConfig {
        output_dir: dir.to_path_buf(),
        iterations,
        prompts_per_iteration: 16,
        samples_per_prompt: 8,
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        min_new_tokens: 4,
        max_new_tokens: 16,
        generation_batch_size: 16,
        selection: Selection::Local,
        min_distinct2: 0.5,
        seed: 7,
        resume: true,
        sft: TrainerConfig {
            max_steps: Some(8),
            learning_rate: 2e-3,
            per_device_train_batch_size: 8,
            warmup_ratio: 0.0,
            block_size: 64,
            packing: false,
            logging_steps: 1,
            save_steps: 1000,
            ..TrainerConfig::default()
        },
    }
}

#[test]
fn raft_raises_the_lexicon_reward_and_keeps_diversity() {
    let device = Device::flex().autodiff();
    let pretrained = load(&device);
    let tok = pretrained.tokenizer.as_ref().unwrap();
    let prompts = prompts(&pretrained);
    let eval: Vec<&RaftPrompt> = prompts.iter().rev().take(32).collect();
    let reward = LexiconReward::sum(Lexicon::afinn());
    let weights = FullModelWeights::new(pretrained.config.clone(), device.clone());
    let dir = tempfile::tempdir().unwrap();
    let raft = Raft::new(
        config(dir.path(), 3),
        tok,
        &reward,
        &weights,
        device.clone(),
    )
    .unwrap();

    // The same evaluation draw (seeded as iteration 1000) before and after.
    let mean = |s: &[lmflow_align::raft::ScoredSample]| {
        s.iter().map(|x| x.reward).sum::<f64>() / s.len() as f64
    };
    let before = raft
        .sample_and_score(&pretrained.model, &eval, 1000)
        .unwrap();
    let outcome = raft.run(pretrained.model, &prompts, &mut |_| {}).unwrap();
    let after = raft.sample_and_score(&outcome.model, &eval, 1000).unwrap();
    let (r0, r1) = (mean(&before), mean(&after));
    let d0 = distinct_2(&before.iter().map(|s| s.text.as_str()).collect::<Vec<_>>());
    let d1 = distinct_2(&after.iter().map(|s| s.text.as_str()).collect::<Vec<_>>());
    eprintln!("reward {r0:.3} -> {r1:.3}, distinct-2 {d0:.3} -> {d1:.3}");
    for r in &outcome.records {
        eprintln!("{}", serde_json::to_string(r).unwrap());
    }
    assert_eq!(outcome.records.len(), 3);
    assert!(r1 > r0 + 2.0, "mean AFINN reward {r0:.3} -> {r1:.3}");
    assert!(d1 > 0.5, "distinct-2 fell to {d1:.3} (was {d0:.3})");
    // Each iteration keeps one response per prompt at most and logs its numbers.
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    for r in &outcome.records {
        assert!(r.kept <= 16 && r.kept > 0);
        assert!(r.kept_reward_mean >= r.reward_mean);
        assert!(r.sft_loss.is_some());
    }
    assert!(dir.path().join("final/model.safetensors").is_file());
}

#[test]
fn killed_raft_run_resumes_to_the_same_result() {
    let device = Device::flex().autodiff();
    let base = load(&device);
    let tok = base.tokenizer.as_ref().unwrap();
    let prompts = prompts(&base);
    let reward = LexiconReward::sum(Lexicon::afinn());
    let weights = FullModelWeights::new(base.config.clone(), device.clone());
    let small = |dir: &Path, iterations| RaftConfig {
        prompts_per_iteration: 4,
        samples_per_prompt: 4,
        max_new_tokens: 8,
        sft: TrainerConfig {
            max_steps: Some(2),
            per_device_train_batch_size: 4,
            ..config(dir, iterations).sft
        },
        ..config(dir, iterations)
    };

    let a = tempfile::tempdir().unwrap();
    let raft = Raft::new(small(a.path(), 2), tok, &reward, &weights, device.clone()).unwrap();
    let straight = raft
        .run(load(&device).model, &prompts, &mut |_| {})
        .unwrap();

    // "Killed" during iteration 2: iteration 1 checkpointed, a half-written fine-tuning folder
    // and a metrics line of the unfinished iteration left behind.
    let b = tempfile::tempdir().unwrap();
    let first = Raft::new(small(b.path(), 1), tok, &reward, &weights, device.clone()).unwrap();
    first
        .run(load(&device).model, &prompts, &mut |_| {})
        .unwrap();
    std::fs::create_dir_all(b.path().join("sft/checkpoint-1")).unwrap();
    let mut metrics = std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap();
    metrics.push_str("{\"iteration\":2,\"partial\":true}\n");
    std::fs::write(b.path().join("metrics.jsonl"), metrics).unwrap();
    let resumed = Raft::new(small(b.path(), 2), tok, &reward, &weights, device.clone())
        .unwrap()
        .run(load(&device).model, &prompts, &mut |_| {})
        .unwrap();

    assert_eq!(resumed.resumed_from, Some(1));
    assert_eq!(resumed.records, straight.records);
    assert_eq!(
        std::fs::read_to_string(a.path().join("metrics.jsonl")).unwrap(),
        std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap()
    );
    let (x, y) = (straight.model.state_dict(), resumed.model.state_dict());
    assert_eq!(x.len(), y.len());
    for ((n1, t1), (n2, t2)) in x.iter().zip(&y) {
        assert_eq!(n1, n2);
        assert_eq!(t1, t2, "{n1} differs after resuming");
    }
}
