//! Picking a token from processed scores: argmax or seeded inverse-CDF sampling.

use crate::processors::softmax;
use crate::rng::SeededRng;

/// Index of the largest score; the first one on ties (as `torch.argmax`).
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws an index from a probability vector (need not be normalised; zero entries are never
/// drawn). Falls back to the argmax when the mass is zero or not finite.
pub fn sample_from_probs(probs: &[f32], rng: &mut SeededRng) -> u32 {
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    if !(total > 0.0 && total.is_finite()) {
        return argmax(probs);
    }
    let target = rng.uniform() * total;
    let mut cumulative = 0.0f64;
    let mut last_positive = 0usize;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cumulative += p as f64;
            last_positive = i;
            if target < cumulative {
                return i as u32;
            }
        }
    }
    last_positive as u32
}

/// Softmax of processed scores, then a draw (what `torch.multinomial(softmax(scores))` does,
/// with this crate's generator).
pub fn sample(scores: &[f32], rng: &mut SeededRng) -> u32 {
    sample_from_probs(&softmax(scores), rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_frequencies_follow_probs() {
        let probs = [0.1f32, 0.0, 0.6, 0.3];
        let mut rng = SeededRng::new(3);
        let mut counts = [0usize; 4];
        let n = 40_000;
        for _ in 0..n {
            counts[sample_from_probs(&probs, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[1], 0);
        for (c, p) in counts.iter().zip(probs) {
            assert!((*c as f32 / n as f32 - p).abs() < 0.01, "{counts:?}");
        }
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
