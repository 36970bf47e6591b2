//! The accept/reject rule of speculative sampling (Leviathan et al., 2023), as pure functions.
//!
//! Draft tokens `x_1..x_γ` were drawn from the draft distributions `q_1..q_γ`; the target gave
//! `p_1..p_{γ+1}` in one forward pass. Token `x_i` is accepted with probability
//! `min(1, p_i(x_i) / q_i(x_i))`; at the first rejection a replacement is drawn from
//! `norm(max(0, p_i - q_i))`; if all are accepted a bonus token is drawn from `p_{γ+1}`.
//! The emitted tokens are then distributed exactly as tokens sampled from the target.

use crate::rng::SeededRng;
use crate::sampler::{argmax, sample_from_probs};

/// Outcome of verifying one block of draft tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verification {
    /// How many leading draft tokens were accepted (0..=γ).
    pub accepted: usize,
    /// The token emitted after them: the replacement at the first rejection, or the bonus token.
    pub next_token: u32,
}

/// Speculative sampling verification. `draft`: γ tokens; `q`: their γ draft distributions;
/// `p`: γ + 1 target distributions (probabilities over the vocabulary, after the same logits
/// processing). Rows need not be normalised.
///
/// # Panics
/// When `q.len() != draft.len()` or `p.len() != draft.len() + 1` (a caller bug, not user data).
pub fn verify_sampled(
    draft: &[u32],
    q: &[Vec<f32>],
    p: &[Vec<f32>],
    rng: &mut SeededRng,
) -> Verification {
    assert_eq!(
        q.len(),
        draft.len(),
        "one draft distribution per draft token"
    );
    assert_eq!(p.len(), draft.len() + 1, "γ + 1 target distributions");
    for (i, &x) in draft.iter().enumerate() {
        let (pi, qi) = (&p[i], &q[i]);
        let (p_sum, q_sum) = (mass(pi), mass(qi));
        let px = pi[x as usize] as f64 / p_sum;
        let qx = qi[x as usize] as f64 / q_sum;
        let r = rng.uniform();
        if qx > 0.0 && r < (px / qx).min(1.0) {
            continue;
        }
        let residual: Vec<f32> = pi
            .iter()
            .zip(qi)
            .map(|(&a, &b)| ((a as f64 / p_sum) - (b as f64 / q_sum)).max(0.0) as f32)
            .collect();
        let next_token = if mass(&residual) > 0.0 {
            sample_from_probs(&residual, rng)
        } else {
            sample_from_probs(pi, rng)
        };
        return Verification {
            accepted: i,
            next_token,
        };
    }
    Verification {
        accepted: draft.len(),
        next_token: sample_from_probs(&p[draft.len()], rng),
    }
}

/// Greedy verification: accept while the draft token is the target's argmax; the next token is
/// the target's argmax at the first mismatch (or after the last draft token). Equals plain greedy
/// decoding of the target. `target_scores`: γ + 1 rows of processed target scores.
pub fn verify_greedy(draft: &[u32], target_scores: &[Vec<f32>]) -> Verification {
    for (i, &x) in draft.iter().enumerate() {
        let best = argmax(&target_scores[i]);
        if best != x {
            return Verification {
                accepted: i,
                next_token: best,
            };
        }
    }
    Verification {
        accepted: draft.len(),
        next_token: argmax(&target_scores[draft.len()]),
    }
}

fn mass(p: &[f32]) -> f64 {
    p.iter().map(|&x| x as f64).sum()
}
