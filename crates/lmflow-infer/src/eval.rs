//! Evaluation: sliding-window perplexity for long texts and accuracy (multiple choice by
//! log-likelihood, or generation with LMFlow's answer extraction).

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device};
use lmflow_models::eval::NllStats;
use lmflow_models::{CausalLm, ForwardInput};
use regex::Regex;

use crate::error::{InferError, Result};
use crate::tensor_io::ids_tensor;

/// `log p(ids[i] | ids[..i])` for `i = 1..len` (one forward pass, no cache).
///
/// # Errors
/// A model error, or unreadable log-probabilities.
pub fn token_logprobs(model: &CausalLm, ids: &[u32], device: &Device) -> Result<Vec<f64>> {
    if ids.len() < 2 {
        return Ok(Vec::new());
    }
    let n = ids.len();
    let input = ids_tensor(&[ids.iter().map(|&t| t as i64).collect()], device);
    let logits = model
        .forward(ForwardInput::new(input.clone()), None)?
        .logits;
    let vocab = logits.dims()[2];
    let logp = log_softmax(logits.slice([0..1, 0..n - 1, 0..vocab]).cast(DType::F32), 2);
    let targets = input.slice([0..1, 1..n]).reshape([1, n - 1, 1]);
    let picked = logp
        .gather(2, targets)
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| InferError::Tensor {
            name: "log-probabilities",
            reason: format!("{e:?}"),
        })?;
    Ok(picked.into_iter().map(f64::from).collect())
}

/// NLL of one long token sequence with a sliding window, as the `transformers` perplexity guide
/// (and LMFlow's `_evaluate_ppl`): windows of `max_length` tokens start every `stride` tokens;
/// each window scores only the tokens not scored by the previous one, with up to
/// `max_length - stride` tokens of earlier context. `stride == max_length` gives disjoint
/// blocks. The first token of the sequence is never predicted.
///
/// # Errors
/// `stride == 0` or `stride > max_length`, or a model error.
pub fn sliding_window_nll(
    model: &CausalLm,
    ids: &[u32],
    max_length: usize,
    stride: usize,
    device: &Device,
) -> Result<NllStats> {
    if stride == 0 || stride > max_length {
        return Err(InferError::InvalidConfig {
            field: "stride",
            reason: format!("must be in 1..={max_length} (the window), got {stride}"),
        });
    }
    let mut stats = NllStats {
        samples: 1,
        ..NllStats::default()
    };
    let mut prev_end = 0usize;
    let mut begin = 0usize;
    while begin < ids.len() {
        let end = (begin + max_length).min(ids.len());
        let target_len = end - prev_end;
        let window = &ids[begin..end];
        let logprobs = token_logprobs(model, window, device)?;
        // logprobs[j - 1] scores window[j]; score j >= max(1, len - target_len).
        let first = (window.len() - target_len).max(1);
        for lp in &logprobs[first.saturating_sub(1).min(logprobs.len())..] {
            stats.nll_sum -= lp;
            stats.predicted_tokens += 1;
        }
        prev_end = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    Ok(stats)
}

/// Summed log-likelihood of `option` following `context` (tokens of the option only).
///
/// # Errors
/// An empty context, or a model error.
pub fn continuation_logprob(
    model: &CausalLm,
    context: &[u32],
    option: &[u32],
    device: &Device,
) -> Result<f64> {
    if context.is_empty() {
        return Err(InferError::InvalidInput {
            index: 0,
            reason: "empty context".into(),
        });
    }
    let mut ids = context.to_vec();
    ids.extend_from_slice(option);
    let lp = token_logprobs(model, &ids, device)?;
    Ok(lp[context.len() - 1..].iter().sum())
}

/// Index of the option with the highest summed log-likelihood after `context` (first on ties)
/// and the scores of all options.
///
/// # Errors
/// No options, or as [`continuation_logprob`].
pub fn choose_option(
    model: &CausalLm,
    context: &[u32],
    options: &[Vec<u32>],
    device: &Device,
) -> Result<(usize, Vec<f64>)> {
    if options.is_empty() {
        return Err(InferError::InvalidInput {
            index: 0,
            reason: "no options".into(),
        });
    }
    let scores = options
        .iter()
        .map(|o| continuation_logprob(model, context, o, device))
        .collect::<Result<Vec<f64>>>()?;
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
        }
    }
    Ok((best, scores))
}

/// Answer types of LMFlow's `answer_extraction` supported here.
pub const ANSWER_TYPES: &[&str] = &[
    "gsm8k",
    "svamp",
    "asdiv",
    "addsub",
    "singleeq",
    "multiarith",
    "math",
    "aqua",
    "csqa",
    "multiple_choice",
    "strategyqa",
    "coin_flip",
    "text",
];

fn regex(pattern: &str) -> Regex {
    // The patterns are constants of this module; a failure is a programming error caught by tests.
    Regex::new(pattern).unwrap_or_else(|e| panic!("invalid built-in pattern {pattern}: {e}"))
}

/// Extracts the answer from generated text as LMFlow's `answer_extraction` does:
/// - number types (`gsm8k`, `svamp`, `asdiv`, `addsub`, `singleeq`, `multiarith`, `math`): the
///   last number after removing commas, without a trailing `.`; `gsm8k`/`svamp` round it to an
///   integer (half to even, as Python's `round`), `""` when none;
/// - `aqua`, `csqa`, `multiple_choice`: the last of the letters A-E;
/// - `strategyqa`, `coin_flip`: the last standalone `yes`/`no` (lower-cased);
/// - `text`: the whole response.
///
/// # Errors
/// An answer type outside [`ANSWER_TYPES`].
pub fn extract_answer(response: &str, answer_type: &str) -> Result<String> {
    let candidates: Vec<String> = match answer_type {
        "gsm8k" | "svamp" | "asdiv" | "addsub" | "singleeq" | "multiarith" | "math" => {
            let text = response.replace(',', "");
            regex(r"-?\d+\.?\d*")
                .find_iter(&text)
                .map(|m| m.as_str().to_string())
                .collect()
        }
        "aqua" | "csqa" | "multiple_choice" => regex("A|B|C|D|E")
            .find_iter(response)
            .map(|m| m.as_str().to_string())
            .collect(),
        "strategyqa" | "coin_flip" => {
            let lower = response.to_lowercase();
            let cleaned = regex(r#""|'|\n|\.|\s|:|,"#).replace_all(&lower, " ");
            cleaned
                .split(' ')
                .filter(|w| *w == "yes" || *w == "no")
                .map(str::to_string)
                .collect()
        }
        "text" => return Ok(response.to_string()),
        other => {
            return Err(InferError::InvalidConfig {
                field: "answer_type",
                reason: format!(
                    "unsupported `{other}` (supported: {})",
                    ANSWER_TYPES.join(", ")
                ),
            });
        }
    };
    let Some(mut answer) = candidates.last().cloned() else {
        return Ok(String::new());
    };
    if answer.ends_with('.') {
        answer.pop();
    }
    if matches!(answer_type, "gsm8k" | "svamp") {
        answer = match answer.parse::<f64>() {
            Ok(v) => format!("{}", v.round_ties_even() as i64),
            Err(_) => String::new(),
        };
    }
    Ok(answer)
}

/// LMFlow's `_match`: case-insensitive for `strategyqa`, `coin_flip` (and LMFlow's medical
/// types), exact otherwise.
pub fn answers_match(predicted: &str, truth: &str, answer_type: &str) -> bool {
    if matches!(
        answer_type,
        "strategyqa" | "coin_flip" | "pubmedqa" | "binary_choice" | "medmcqa" | "usmle"
    ) {
        predicted.to_lowercase() == truth.to_lowercase()
    } else {
        predicted == truth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_extraction_follows_lmflow() {
        assert_eq!(
            extract_answer("so 1,234 apples and 12.5 pears", "math").unwrap(),
            "12.5"
        );
        assert_eq!(extract_answer("The answer is 42.", "gsm8k").unwrap(), "42");
        assert_eq!(extract_answer("about 2.5", "gsm8k").unwrap(), "2");
        assert_eq!(extract_answer("about 3.5", "svamp").unwrap(), "4");
        assert_eq!(extract_answer("no number", "gsm8k").unwrap(), "");
        assert_eq!(extract_answer("-7 degrees", "asdiv").unwrap(), "-7");
        assert_eq!(
            extract_answer("I pick B, no wait, D", "multiple_choice").unwrap(),
            "D"
        );
        assert_eq!(
            extract_answer("Yes. Actually: no.", "strategyqa").unwrap(),
            "no"
        );
        assert_eq!(extract_answer(" whatever ", "text").unwrap(), " whatever ");
        assert!(extract_answer("x", "unknown").is_err());
        assert!(answers_match("Yes", "yes", "coin_flip"));
        assert!(!answers_match("Yes", "yes", "text"));
    }
}
