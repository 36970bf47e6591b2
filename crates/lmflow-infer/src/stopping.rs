//! Stop criteria: EOS ids, stop strings and the new-token budget.

use serde::{Deserialize, Serialize};

/// Why the generation of one sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The last token is one of the EOS ids (it is part of the output).
    Eos,
    /// The decoded new text contains a stop string (kept in the output).
    StopString,
    /// `max_new_tokens` tokens were generated.
    Length,
}

/// Decides after every token whether a sequence is done.
#[derive(Clone, Debug)]
pub struct StopCriteria {
    eos_token_ids: Vec<u32>,
    stop_strings: Vec<String>,
    max_new_tokens: usize,
}

impl StopCriteria {
    /// Criteria from EOS ids, stop strings and the token budget.
    pub fn new(eos_token_ids: Vec<u32>, stop_strings: Vec<String>, max_new_tokens: usize) -> Self {
        Self {
            eos_token_ids,
            stop_strings,
            max_new_tokens,
        }
    }

    /// Whether stop strings are in use (callers then need the decoded text).
    pub fn needs_text(&self) -> bool {
        !self.stop_strings.is_empty()
    }

    /// Whether `id` is an EOS id.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// Checks a sequence after `last` was appended; `new_tokens` counts it, `text` is the decoded
    /// new text (only read when stop strings are set). EOS wins over a stop string, which wins
    /// over the length limit.
    pub fn check(&self, last: u32, new_tokens: usize, text: &str) -> Option<FinishReason> {
        if self.is_eos(last) {
            Some(FinishReason::Eos)
        } else if self.stop_strings.iter().any(|s| text.contains(s.as_str())) {
            Some(FinishReason::StopString)
        } else if new_tokens >= self.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_priorities() {
        let c = StopCriteria::new(vec![2, 5], vec!["\n\n".into()], 3);
        assert_eq!(c.check(5, 1, ""), Some(FinishReason::Eos));
        assert_eq!(c.check(7, 1, "a\n\nb"), Some(FinishReason::StopString));
        assert_eq!(c.check(7, 2, "a\nb"), None);
        assert_eq!(c.check(7, 3, "a\nb"), Some(FinishReason::Length));
    }
}
