//! Reward functions behind one trait: [`RewardFunction`] scores `(prompt, response)` pairs.
//!
//! Implementations:
//! - [`TextReward`] ([`text_reward`]): any Rust closure over the prompt and the response;
//! - [`LexiconReward`]: a sentiment lexicon score of the response ([`Lexicon::afinn`], the
//!   AFINN-111 valences, or [`Lexicon::hu_liu`], the Hu & Liu opinion lexicon, both bundled);
//! - [`LengthReward`]: how far the response's word count lies outside a range;
//! - [`KeywordReward`]: weighted keywords or phrases present in the response;
//! - [`WeightedSum`]: a weighted sum of other reward functions;
//! - [`RewardModelScorer`](crate::reward_model::RewardModelScorer): a trained reward model.
//!
//! ```
//! use lmflow_align::reward_fn::{Lexicon, LexiconReward, RewardFunction, RewardSample, text_reward};
//!
//! let sentiment = LexiconReward::sum(Lexicon::afinn());
//! let samples = [
//!     RewardSample::new("The food", " was good, really great."),
//!     RewardSample::new("The food", " was bad."),
//! ];
//! // AFINN-111: good +3, great +3; bad -3.
//! assert_eq!(sentiment.score(&samples)?, vec![6.0, -3.0]);
//! let short = text_reward("short", |_prompt, response| -(response.len() as f64));
//! assert_eq!(short.score(&samples[1..])?, vec![-9.0]);
//! # Ok::<(), lmflow_align::AlignError>(())
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::AlignError;

/// One `(prompt, response)` pair to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewardSample<'a> {
    /// The prompt the response answers (raw text, or the user turn of a conversation).
    pub prompt: &'a str,
    /// The response (model output) being scored.
    pub response: &'a str,
}

impl<'a> RewardSample<'a> {
    /// A sample.
    pub fn new(prompt: &'a str, response: &'a str) -> Self {
        Self { prompt, response }
    }
}

/// Scores `(prompt, response)` pairs: higher is better.
pub trait RewardFunction: Send + Sync {
    /// A short name (logged with the rewards).
    fn name(&self) -> &str;

    /// One reward per sample, in order.
    ///
    /// # Errors
    /// [`AlignError`] when a sample cannot be scored (e.g. a reward model's forward pass fails).
    fn score(&self, samples: &[RewardSample<'_>]) -> Result<Vec<f64>, AlignError>;
}

impl<R: RewardFunction + ?Sized> RewardFunction for Box<R> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn score(&self, samples: &[RewardSample<'_>]) -> Result<Vec<f64>, AlignError> {
        (**self).score(samples)
    }
}

impl<R: RewardFunction + ?Sized> RewardFunction for Arc<R> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn score(&self, samples: &[RewardSample<'_>]) -> Result<Vec<f64>, AlignError> {
        (**self).score(samples)
    }
}

/// A reward computed by a closure `f(prompt, response)`.
pub struct TextReward<F> {
    name: String,
    f: F,
}

impl<F> std::fmt::Debug for TextReward<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextReward")
            .field("name", &self.name)
            .finish()
    }
}

/// A [`TextReward`] named `name` computing `f(prompt, response)`.
pub fn text_reward<F>(name: impl Into<String>, f: F) -> TextReward<F>
where
    F: Fn(&str, &str) -> f64 + Send + Sync,
{
    TextReward {
        name: name.into(),
        f,
    }
}

impl<F> RewardFunction for TextReward<F>
where
    F: Fn(&str, &str) -> f64 + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, samples: &[RewardSample<'_>]) -> Result<Vec<f64>, AlignError> {
        Ok(samples
            .iter()
            .map(|s| (self.f)(s.prompt, s.response))
            .collect())
    }
}

/// Lower-cased words of `text`: runs of letters, digits, apostrophes, inner hyphens and a
/// trailing `+` (`a+`); `--` separates words, typographic apostrophes count as `'`.
pub fn words(text: &str) -> Vec<String> {
    let text = text
        .replace("--", " ")
        .replace(['\u{2019}', '\u{2018}'], "'");
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-' || c == '+'))
        .filter_map(|w| {
            let w = w.trim_matches(|c: char| c == '\'' || c == '-');
            let w = w.trim_start_matches('+');
            (w.chars().any(char::is_alphanumeric)).then(|| w.to_lowercase())
        })
        .collect()
}

/// The bundled AFINN-111 list (`word,valence`).
const AFINN_111: &str = include_str!("../data/afinn-111.csv");
/// The bundled Hu & Liu positive words.
const LIU_POSITIVE: &str = include_str!("../data/liu-positive-words.txt");
/// The bundled Hu & Liu negative words.
const LIU_NEGATIVE: &str = include_str!("../data/liu-negative-words.txt");

/// A sentiment lexicon: words and phrases with a valence.
#[derive(Debug, Clone, PartialEq)]
pub struct Lexicon {
    name: String,
    entries: HashMap<String, f64>,
    longest_phrase: usize,
}

/// What a [`Lexicon`] finds in a text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LexiconScore {
    /// Sum of the valences of the matched words and phrases.
    pub sum: f64,
    /// Words in the text.
    pub words: usize,
    /// Matched entries.
    pub matches: usize,
}

impl Lexicon {
    /// A lexicon from `(entry, valence)` pairs (entries are lower-cased and split into words;
    /// phrases of several words match consecutive words).
    pub fn new(name: impl Into<String>, entries: impl IntoIterator<Item = (String, f64)>) -> Self {
        let mut map = HashMap::new();
        let mut longest = 1;
        for (entry, valence) in entries {
            let ws = words(&entry);
            if ws.is_empty() {
                continue;
            }
            longest = longest.max(ws.len());
            map.insert(ws.join(" "), valence);
        }
        Self {
            name: name.into(),
            entries: map,
            longest_phrase: longest,
        }
    }

    /// Parses an AFINN file (`word,valence` lines, an optional `word,valence` header, phrases
    /// allowed); `origin` names the source in errors.
    ///
    /// # Errors
    /// [`AlignError::Data`] naming the line that is not `entry,number`.
    pub fn from_afinn_csv(name: &str, text: &str, origin: &Path) -> Result<Self, AlignError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (i == 0 && line == "word,valence") {
                continue;
            }
            let bad = || AlignError::Data {
                path: origin.to_path_buf(),
                message: format!("line {}: expected `word,valence`, found `{line}`", i + 1),
            };
            let (word, valence) = line.rsplit_once([',', '\t']).ok_or_else(bad)?;
            let valence: f64 = valence.trim().parse().map_err(|_| bad())?;
            entries.push((word.to_string(), valence));
        }
        Ok(Self::new(name, entries))
    }

    /// A lexicon from lists of positive (+1) and negative (-1) words, one per line (`;` starts
    /// a comment line, as in the Hu & Liu files).
    pub fn from_word_lists(name: &str, positive: &str, negative: &str) -> Self {
        let list = |text: &str, v: f64| -> Vec<(String, f64)> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with(';'))
                .map(|l| (l.to_string(), v))
                .collect()
        };
        let mut entries = list(positive, 1.0);
        entries.extend(list(negative, -1.0));
        Self::new(name, entries)
    }

    /// AFINN-111 (F. Å. Nielsen, 2011; CC-BY-4.0): 2,477 words and phrases with valences
    /// -5..+5, bundled.
    pub fn afinn() -> Self {
        // The bundled file is checked by a test; an error here would be a build defect.
        Self::from_afinn_csv("afinn", AFINN_111, Path::new("data/afinn-111.csv"))
            .unwrap_or_else(|_| Self::new("afinn", Vec::new()))
    }

    /// The Hu & Liu opinion lexicon (KDD 2004; CC-BY-4.0): about 6,800 words, positive +1 and
    /// negative -1, bundled.
    pub fn hu_liu() -> Self {
        Self::from_word_lists("hu_liu", LIU_POSITIVE, LIU_NEGATIVE)
    }

    /// The lexicon's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the lexicon has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The valence of a word or phrase, if listed.
    pub fn valence(&self, entry: &str) -> Option<f64> {
        self.entries.get(&words(entry).join(" ")).copied()
    }

    /// Scores `text`: at each word the longest listed phrase starting there is matched (and
    /// its words skipped), as AFINN's reference implementation matches phrases first.
    pub fn score_text(&self, text: &str) -> LexiconScore {
        let ws = words(text);
        let (mut sum, mut matches, mut i) = (0.0, 0, 0);
        while i < ws.len() {
            let mut step = 1;
            for n in (1..=self.longest_phrase.min(ws.len() - i)).rev() {
                if let Some(v) = self.entries.get(&ws[i..i + n].join(" ")) {
                    sum += v;
                    matches += 1;
                    step = n;
                    break;
                }
            }
            i += step;
        }
        LexiconScore {
            sum,
            words: ws.len(),
            matches,
        }
    }
}

/// How a [`LexiconReward`] turns a [`LexiconScore`] into a reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LexiconNormalization {
    /// The sum of valences (AFINN's score).
    #[default]
    Sum,
    /// The sum divided by the number of words (0 for an empty response): does not grow with
    /// length.
    PerWord,
}

/// The sentiment of the response under a [`Lexicon`] (the prompt is ignored).
#[derive(Debug, Clone)]
pub struct LexiconReward {
    lexicon: Arc<Lexicon>,
    normalization: LexiconNormalization,
    name: String,
}

impl LexiconReward {
    /// A reward with `normalization`.
    pub fn new(lexicon: Lexicon, normalization: LexiconNormalization) -> Self {
        let name = match normalization {
            LexiconNormalization::Sum => lexicon.name().to_string(),
            LexiconNormalization::PerWord => format!("{}_per_word", lexicon.name()),
        };
        Self {
            lexicon: Arc::new(lexicon),
            normalization,
            name,
        }
    }

    /// The sum of valences.
    pub fn sum(lexicon: Lexicon) -> Self {
        Self::new(lexicon, LexiconNormalization::Sum)
    }

    /// The mean valence per word.
    pub fn per_word(lexicon: Lexicon) -> Self {
        Self::new(lexicon, LexiconNormalization::PerWord)
    }

    /// The reward of one response.
    pub fn score_one(&self, response: &str) -> f64 {
        let s = self.lexicon.score_text(response);
        match self.normalization {
            LexiconNormalization::Sum => s.sum,
            LexiconNormalization::PerWord if s.words == 0 => 0.0,
            LexiconNormalization::PerWord => s.sum / s.words as f64,
        }
    }
}

impl RewardFunction for LexiconReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, samples: &[RewardSample<'_>]) -> Result<Vec<f64>, AlignError> {
        Ok(samples.iter().map(|s| self.score_one(s.response)).collect())
    }
}

/// Minus the distance (in words) of the response's length from `min..=max`: 0 inside the
/// range, `-(min - n)` below it, `-(n - max)` above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthReward {
    /// Fewest words without penalty.
    pub min_words: usize,
    /// Most words without penalty.
    pub max_words: usize,
}

impl LengthReward {
    /// A length rule.
    ///
    /// # Errors
    /// [`AlignError::Config`] when `min_words > max_words`.
    pub fn new(min_words: usize, max_words: usize) -> Result<Self, AlignError> {
        if min_words > max_words {
            return Err(AlignError::Config(format!(
                "length reward: min_words {min_words} > max_words {max_words}"
            )));
        }
        Ok(Self {
            min_words,
            max_words,
        })
    }
}

impl RewardFunction for LengthReward {
    fn name(&self) -> &str {
        "length"
    }

    fn score(&self, samples: &[RewardSample<'_>]) -> Result<Vec<f64>, AlignError> {
        Ok(samples
            .iter()
            .map(|s| {
                let n = words(s.response).len();
                if n < self.min_words {
                    -((self.min_words - n) as f64)
                } else if n > self.max_words {
                    -((n - self.max_words) as f64)
                } else {
                    0.0
                }
            })
            .collect())
    }
}

/// The sum of the weights of the keywords (words or phrases, case-insensitive, matched on word
/// boundaries) found in the response; each keyword counts once, or once per occurrence with
/// [`KeywordReward::count_repeats`].
#[derive(Debug, Clone, PartialEq)]
pub struct KeywordReward {
    keywords: Vec<(Vec<String>, f64)>,
    count_repeats: bool,
}

impl KeywordReward {
    /// Keywords with their weights (negative weights penalise).
    ///
    /// # Errors
    /// [`AlignError::Config`] for a keyword without any word character.
    pub fn new<S: AsRef<str>>(keywords: &[(S, f64)]) -> Result<Self, AlignError> {
        let keywords = keywords
            .iter()
            .map(|(k, w)| {
                let ws = words(k.as_ref());
                if ws.is_empty() {
                    Err(AlignError::Config(format!(
                        "keyword reward: `{}` has no word characters",
                        k.as_ref()
                    )))
                } else {
                    Ok((ws, *w))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            keywords,
            count_repeats: false,
        })
    }

    /// Counts every occurrence, not just presence.
    pub fn count_repeats(mut self, yes: bool) -> Self {
        self.count_repeats = yes;
        self
    }
}

impl RewardFunction for KeywordReward {
    fn name(&self) -> &str {
        "keywords"
    }

    fn score(&self, samples: &[RewardSample<'_>]) -> Result<Vec<f64>, AlignError> {
        Ok(samples
            .iter()
            .map(|s| {
                let ws = words(s.response);
                self.keywords
                    .iter()
                    .map(|(k, w)| {
                        let hits = ws
                            .windows(k.len())
                            .filter(|win| *win == k.as_slice())
                            .count();
                        let hits = if self.count_repeats {
                            hits
                        } else {
                            hits.min(1)
                        };
                        w * hits as f64
                    })
                    .sum()
            })
            .collect())
    }
}

/// `Σ weight_i · reward_i` over several reward functions.
pub struct WeightedSum {
    parts: Vec<(f64, Box<dyn RewardFunction>)>,
    name: String,
}

impl std::fmt::Debug for WeightedSum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightedSum")
            .field("name", &self.name)
            .finish()
    }
}

impl WeightedSum {
    /// A weighted sum (named `w1*name1+w2*name2...`).
    pub fn new(parts: Vec<(f64, Box<dyn RewardFunction>)>) -> Self {
        let name = parts
            .iter()
            .map(|(w, r)| format!("{w}*{}", r.name()))
            .collect::<Vec<_>>()
            .join("+");
        Self { parts, name }
    }
}

impl RewardFunction for WeightedSum {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, samples: &[RewardSample<'_>]) -> Result<Vec<f64>, AlignError> {
        let mut total = vec![0.0; samples.len()];
        for (w, r) in &self.parts {
            for (t, v) in total.iter_mut().zip(r.score(samples)?) {
                *t += w * v;
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_lexicons_parse_completely() {
        let afinn = Lexicon::afinn();
        assert_eq!(afinn.len(), 2477);
        assert_eq!(afinn.valence("abandon"), Some(-2.0));
        assert_eq!(afinn.valence("cool stuff"), Some(3.0));
        assert_eq!(afinn.valence("can't stand"), Some(-3.0));
        let liu = Lexicon::hu_liu();
        assert!(liu.len() > 6700, "{}", liu.len());
        assert_eq!(liu.valence("abound"), Some(1.0));
        assert_eq!(liu.valence("abysmal"), Some(-1.0));
        assert_eq!(liu.valence("a+"), Some(1.0));
    }

    #[test]
    fn words_split_like_a_reader() {
        assert_eq!(
            words("The whale--THE white one; it's well-known, 'said' he."),
            vec![
                "the",
                "whale",
                "the",
                "white",
                "one",
                "it's",
                "well-known",
                "said",
                "he"
            ]
        );
    }

    #[test]
    fn phrases_take_precedence_over_their_words() {
        let afinn = Lexicon::afinn();
        // "cool stuff" (+3) is one match, not "cool" (+1) plus "stuff".
        let s = afinn.score_text("That is cool stuff!");
        assert_eq!((s.sum, s.matches, s.words), (3.0, 1, 4));
        let s = afinn.score_text("cool");
        assert_eq!(s.sum, 1.0);
        // "does not work" (-3).
        assert_eq!(afinn.score_text("It does not work.").sum, -3.0);
    }

    #[test]
    fn length_keyword_and_sum_rules() {
        let s = |r| RewardSample::new("p", r);
        let len = LengthReward::new(2, 3).unwrap();
        assert_eq!(
            len.score(&[s("one"), s("one two"), s("a b c d e")])
                .unwrap(),
            vec![-1.0, 0.0, -2.0]
        );
        assert!(LengthReward::new(3, 2).is_err());
        let kw = KeywordReward::new(&[("white whale", 2.0), ("ahab", -1.0)]).unwrap();
        let samples = [
            s("The White Whale and the white whale"),
            s("Ahab! ahab"),
            s("whale"),
        ];
        assert_eq!(kw.score(&samples).unwrap(), vec![2.0, -1.0, 0.0]);
        assert_eq!(
            kw.clone().count_repeats(true).score(&samples).unwrap(),
            vec![4.0, -2.0, 0.0]
        );
        assert!(KeywordReward::new(&[("--", 1.0)]).is_err());
        let sum = WeightedSum::new(vec![(1.0, Box::new(len)), (0.5, Box::new(kw))]);
        assert_eq!(sum.score(&[s("white whale")]).unwrap(), vec![1.0]);
        assert_eq!(sum.name(), "1*length+0.5*keywords");
    }

    #[test]
    fn per_word_normalisation() {
        let r = LexiconReward::per_word(Lexicon::afinn());
        assert_eq!(r.name(), "afinn_per_word");
        let v = r
            .score(&[
                RewardSample::new("", "good good bad day"),
                RewardSample::new("", ""),
            ])
            .unwrap();
        assert_eq!(v, vec![(3.0 + 3.0 - 3.0) / 4.0, 0.0]);
    }

    #[test]
    fn malformed_afinn_lines_are_named() {
        let err = Lexicon::from_afinn_csv("x", "good,3\nbad\n", Path::new("f.csv")).unwrap_err();
        assert!(err.to_string().contains("f.csv") && err.to_string().contains("line 2"));
    }
}
