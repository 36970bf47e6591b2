//! Model-independent checks: logits processors against transformers (fixture
//! tests/fixtures/infer/processors.json from tests/fixtures/infer.py) and the speculative
//! sampling rule against the exact target distribution (chi-square, fixed seed).
#![allow(clippy::unwrap_used)]

use lmflow_infer::speculative_math::{verify_greedy, verify_sampled};
use lmflow_infer::{GenerationConfig, LogitsPipeline, SeededRng, processors, sampler};
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/infer/processors.json"
);

fn row(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().map_or(f32::NEG_INFINITY, |f| f as f32))
        .collect()
}

#[test]
fn processors_match_transformers() {
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut config: GenerationConfig = serde_json::from_value(case["config"].clone()).unwrap();
        if !case["config"].as_object().unwrap().contains_key("top_k") {
            config.top_k = 0;
        }
        let pipeline = LogitsPipeline::new(&config);
        let new_tokens = case["new_tokens"].as_u64().unwrap() as usize;
        let contexts = case["context"].as_array().unwrap();
        for (b, (scores, expected)) in case["scores"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["expected"].as_array().unwrap())
            .enumerate()
        {
            let context: Vec<u32> = contexts[b]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let mut got = row(scores);
            pipeline.apply(&mut got, &context, new_tokens);
            let want = row(expected);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let ok = if w.is_infinite() {
                    g == w
                } else {
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0)
                };
                assert!(ok, "{name} row {b} token {i}: got {g}, transformers {w}");
            }
        }
    }
}

/// Toy "models": first-order Markov chains over a 4-token vocabulary.
const TARGET: [[f32; 4]; 4] = [
    [0.5, 0.2, 0.2, 0.1],
    [0.1, 0.6, 0.1, 0.2],
    [0.25, 0.25, 0.25, 0.25],
    [0.05, 0.05, 0.1, 0.8],
];
const DRAFT: [[f32; 4]; 4] = [
    [0.1, 0.4, 0.4, 0.1],
    [0.3, 0.3, 0.2, 0.2],
    [0.7, 0.1, 0.1, 0.1],
    [0.25, 0.25, 0.25, 0.25],
];

/// Speculative sampling of `n` tokens after token 0, `gamma` drafts per round.
fn speculative_sequence(
    n: usize,
    gamma: usize,
    rng: &mut SeededRng,
    draft_table: &[[f32; 4]; 4],
) -> Vec<u32> {
    let mut seq = vec![0u32];
    while seq.len() < n + 1 {
        let mut draft = Vec::new();
        let mut q = Vec::new();
        let mut last = *seq.last().unwrap();
        for _ in 0..gamma {
            let qi = draft_table[last as usize].to_vec();
            let x = sampler::sample_from_probs(&qi, rng);
            draft.push(x);
            q.push(qi);
            last = x;
        }
        let mut p = Vec::new();
        let mut prev = *seq.last().unwrap();
        for &x in draft.iter().chain(std::iter::once(&0)) {
            p.push(TARGET[prev as usize].to_vec());
            prev = x;
        }
        let v = verify_sampled(&draft, &q, &p, rng);
        seq.extend_from_slice(&draft[..v.accepted]);
        seq.push(v.next_token);
    }
    seq[1..=n].to_vec()
}

/// Chi-square statistic of the empirical 3-token joint distribution against the target chain.
fn chi_square(draft_table: &[[f32; 4]; 4], seed: u64) -> f64 {
    let mut rng = SeededRng::new(seed);
    let n = 20_000;
    let mut counts = [0usize; 64];
    for _ in 0..n {
        let s = speculative_sequence(3, 3, &mut rng, draft_table);
        counts[(s[0] * 16 + s[1] * 4 + s[2]) as usize] += 1;
    }
    let mut chi = 0.0;
    for (cell, &c) in counts.iter().enumerate() {
        let (a, b, c3) = (cell / 16, (cell / 4) % 4, cell % 4);
        let p = TARGET[0][a] as f64 * TARGET[a][b] as f64 * TARGET[b][c3] as f64;
        let e = p * n as f64;
        chi += (c as f64 - e).powi(2) / e;
    }
    chi
}

#[test]
fn speculative_sampling_matches_target_distribution() {
    // 63 degrees of freedom: the 99.9% quantile of chi-square(63) is about 103.4.
    let chi = chi_square(&DRAFT, 11);
    assert!(
        chi < 103.4,
        "speculative samples deviate from the target: chi2 = {chi}"
    );
    // The test has power: plain draft sampling (accept everything) is rejected by far.
    let mut rng = SeededRng::new(11);
    let n = 20_000;
    let mut counts = [0usize; 64];
    for _ in 0..n {
        let mut last = 0usize;
        let mut idx = 0;
        for _ in 0..3 {
            last = sampler::sample_from_probs(&DRAFT[last], &mut rng) as usize;
            idx = idx * 4 + last;
        }
        counts[idx] += 1;
    }
    let mut chi_draft = 0.0;
    for (cell, &c) in counts.iter().enumerate() {
        let (a, b, c3) = (cell / 16, (cell / 4) % 4, cell % 4);
        let e = TARGET[0][a] as f64 * TARGET[a][b] as f64 * TARGET[b][c3] as f64 * n as f64;
        chi_draft += (c as f64 - e).powi(2) / e;
    }
    assert!(chi_draft > 1000.0, "draft-only chi2 {chi_draft}");
    // An identical draft is always accepted and still exact.
    assert!(chi_square(&TARGET, 5) < 103.4);
}

#[test]
fn greedy_verification_equals_target_argmax_chain() {
    let scores: Vec<Vec<f32>> = vec![
        vec![0.0, 2.0, 1.0],
        vec![3.0, 0.0, 1.0],
        vec![0.0, 0.0, 5.0],
    ];
    assert_eq!(
        verify_greedy(&[1, 0], &scores),
        lmflow_infer::speculative_math::Verification {
            accepted: 2,
            next_token: 2
        }
    );
    assert_eq!(verify_greedy(&[1, 2], &scores).accepted, 1);
    assert_eq!(verify_greedy(&[1, 2], &scores).next_token, 0);
    assert_eq!(verify_greedy(&[2, 2], &scores).accepted, 0);
    let mut s = vec![1.0f32, 5.0, 2.0];
    processors::top_k(&mut s, 1, 1);
    assert_eq!(sampler::argmax(&s), 1);
}
