//! Logits processors with the exact semantics of transformers' `LogitsProcessor`s.
//!
//! Each function edits one row of next-token scores (`[vocab]`, f32 as transformers keeps them)
//! in place. Removed tokens get `-inf`. Scalars are rounded to f32 before use, as PyTorch does
//! when it combines a Python float with a float32 tensor. [`LogitsPipeline`] applies them in
//! transformers' order: repetition penalty, min-new-tokens EOS suppression, then (sampling only)
//! temperature, top-k, top-p, min-p.

use crate::config::GenerationConfig;

/// `RepetitionPenaltyLogitsProcessor`: every id in `context` (prompt without padding plus
/// generated tokens) gets `score / penalty` if positive, `score * penalty` if negative.
/// Ids outside the vocabulary are ignored; each id is penalised once however often it occurs.
pub fn repetition_penalty(scores: &mut [f32], context: &[u32], penalty: f64) {
    let penalty = penalty as f32;
    let mut seen = vec![false; scores.len()];
    for &id in context {
        let i = id as usize;
        if i < scores.len() && !seen[i] {
            seen[i] = true;
            let s = scores[i];
            scores[i] = if s < 0.0 { s * penalty } else { s / penalty };
        }
    }
}

/// Sets the scores of `ids` to `-inf` (`MinNewTokensLengthLogitsProcessor` applies this to the
/// EOS ids while fewer than `min_new_tokens` tokens were generated).
pub fn suppress(scores: &mut [f32], ids: &[u32]) {
    for &id in ids {
        if let Some(s) = scores.get_mut(id as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// `TemperatureLogitsWarper`: divides every score by `temperature`.
pub fn temperature(scores: &mut [f32], temperature: f64) {
    let t = temperature as f32;
    for s in scores.iter_mut() {
        *s /= t;
    }
}

/// `TopKLogitsWarper`: removes every score strictly below the k-th largest one
/// (`k = min(max(top_k, min_tokens_to_keep), vocab)`), so ties with the k-th are kept.
pub fn top_k(scores: &mut [f32], top_k: usize, min_tokens_to_keep: usize) {
    let k = top_k.max(min_tokens_to_keep).min(scores.len());
    if k == 0 || k == scores.len() {
        return;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    for s in scores.iter_mut() {
        if *s < kth {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// Softmax of a row in f32 (max-subtracted), as `torch.softmax` on float32.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; scores.len()];
    }
    let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Indices sorted by ascending score (stable, ties in index order).
fn ascending_order(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    order
}

/// `TopPLogitsWarper`: sorts ascending, removes tokens whose cumulative probability is
/// `<= 1 - top_p`, always keeping the `min_tokens_to_keep` most likely.
pub fn top_p(scores: &mut [f32], top_p: f64, min_tokens_to_keep: usize) {
    let order = ascending_order(scores);
    let sorted: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
    let probs = softmax(&sorted);
    let threshold = (1.0 - top_p) as f32;
    let keep_from = order.len().saturating_sub(min_tokens_to_keep);
    let mut cumulative = 0.0f32;
    let mut remove = vec![false; order.len()];
    for (rank, &p) in probs.iter().enumerate() {
        cumulative += p;
        remove[rank] = cumulative <= threshold && rank < keep_from;
    }
    for (rank, &i) in order.iter().enumerate() {
        if remove[rank] {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

/// `MinPLogitsWarper`: removes tokens whose probability is below `min_p * max_prob`, keeping
/// at least the `min_tokens_to_keep` most likely.
pub fn min_p(scores: &mut [f32], min_p: f64, min_tokens_to_keep: usize) {
    let probs = softmax(scores);
    let top = probs.iter().copied().fold(0.0f32, f32::max);
    let scaled = min_p as f32 * top;
    let mut remove: Vec<bool> = probs.iter().map(|&p| p < scaled).collect();
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    for &i in order.iter().take(min_tokens_to_keep.min(probs.len())) {
        remove[i] = false;
    }
    for (s, r) in scores.iter_mut().zip(remove) {
        if r {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// The processors a [`GenerationConfig`] enables, applied in transformers' order.
#[derive(Clone, Debug)]
pub struct LogitsPipeline {
    repetition_penalty: Option<f64>,
    min_new_tokens: usize,
    eos_token_ids: Vec<u32>,
    do_sample: bool,
    temperature: Option<f64>,
    top_k: Option<usize>,
    top_p: Option<f64>,
    min_p: Option<f64>,
}

impl LogitsPipeline {
    /// Builds the pipeline transformers' `_get_logits_processor` builds for this config
    /// (with `num_beams = 1`, hence `min_tokens_to_keep = 1`).
    pub fn new(config: &GenerationConfig) -> Self {
        Self {
            repetition_penalty: (config.repetition_penalty != 1.0)
                .then_some(config.repetition_penalty),
            min_new_tokens: config.min_new_tokens,
            eos_token_ids: config.eos_token_ids.clone(),
            do_sample: config.do_sample,
            temperature: (config.temperature != 1.0).then_some(config.temperature),
            top_k: (config.top_k != 0).then_some(config.top_k),
            top_p: (config.top_p < 1.0).then_some(config.top_p),
            min_p: config.min_p,
        }
    }

    /// True when the pipeline never changes which token is the argmax (greedy decoding can then
    /// take the argmax of the raw logits, e.g. on the device).
    pub fn is_identity_for_greedy(&self) -> bool {
        !self.do_sample
            && self.repetition_penalty.is_none()
            && (self.min_new_tokens == 0 || self.eos_token_ids.is_empty())
    }

    /// Processes one row of scores. `context`: the sequence so far without padding (prompt and
    /// generated tokens); `new_tokens`: how many tokens were generated so far.
    pub fn apply(&self, scores: &mut [f32], context: &[u32], new_tokens: usize) {
        if let Some(penalty) = self.repetition_penalty {
            repetition_penalty(scores, context, penalty);
        }
        if new_tokens < self.min_new_tokens {
            suppress(scores, &self.eos_token_ids);
        }
        if !self.do_sample {
            return;
        }
        if let Some(t) = self.temperature {
            temperature(scores, t);
        }
        if let Some(k) = self.top_k {
            top_k(scores, k, 1);
        }
        if let Some(p) = self.top_p {
            top_p(scores, p, 1);
        }
        if let Some(p) = self.min_p {
            min_p(scores, p, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_ties_and_top_p_keeps_one() {
        let mut s = vec![1.0, 3.0, 2.0, 2.0, 0.0];
        top_k(&mut s, 2, 1);
        assert_eq!(s, vec![f32::NEG_INFINITY, 3.0, 2.0, 2.0, f32::NEG_INFINITY]);
        let mut s = vec![0.0, 10.0, 0.0];
        top_p(&mut s, 0.0, 1);
        assert_eq!(s, vec![f32::NEG_INFINITY, 10.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn repetition_penalty_signs() {
        let mut s = vec![2.0, -2.0, 1.0];
        repetition_penalty(&mut s, &[0, 1, 1, 7], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 1.0]);
    }
}
