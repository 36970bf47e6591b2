//! `lmflow data inspect` and `lmflow data stats` as library functions.

use std::path::{Path, PathBuf};

use lmflow_models::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::format::{DatasetType, Instance};
use crate::reader::{JsonlStream, ReadOptions, read_dataset};
use crate::template::{ChatTemplate, Segment};
use crate::tokenize::{IGNORE_INDEX, SampleEncoder, TokenizeConfig, TokenizedSample};

/// Options shared by [`inspect`] and [`stats`].
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// `"tokenizer"` (the tokenizer's `chat_template`) or a preset name. Default: the
    /// tokenizer's template when it has one, else `chatml`.
    pub template: Option<String>,
    /// At most this many instances (all when `None`).
    pub limit: Option<usize>,
    /// Type of JSON Lines files without a header.
    pub dataset_type: Option<DatasetType>,
    /// Tokenization options.
    pub tokenize: TokenizeConfig,
}

/// One rendered and tokenized sample. Serialises to `{"text", "input_ids", "labels"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectedSample {
    /// The rendered text (what the tokenizer sees).
    pub text: String,
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Labels (`-100`: not trained).
    pub labels: Vec<i64>,
    /// The rendered segments and whether each is trained.
    #[serde(skip)]
    pub segments: Vec<Segment>,
    /// File and instance index.
    #[serde(skip)]
    pub origin: Option<(PathBuf, usize)>,
    /// `chosen` / `rejected` for preference data.
    #[serde(skip)]
    pub part: Option<&'static str>,
    /// Token count before truncation.
    #[serde(skip)]
    pub original_len: usize,
    /// Whether the sample was cut to `block_size`.
    #[serde(skip)]
    pub truncated: bool,
    /// Whether the cut removed every trained token.
    #[serde(skip)]
    pub target_lost: bool,
}

fn load(path: &Path, options: &InspectOptions) -> Result<Vec<(Instance, PathBuf, usize)>> {
    let limit = options.limit.unwrap_or(usize::MAX);
    if path.is_file() && path.extension().is_some_and(|e| e == "jsonl") {
        // Stream: only the first `limit` lines are parsed.
        let stream = JsonlStream::open(path, options.dataset_type)?;
        return stream
            .take(limit)
            .enumerate()
            .map(|(i, r)| r.map(|inst| (inst, path.to_path_buf(), i)))
            .collect();
    }
    let d = read_dataset(
        path,
        &ReadOptions {
            dataset_type: options.dataset_type,
        },
    )?;
    Ok(d.instances
        .into_iter()
        .zip(d.origins)
        .take(limit)
        .map(|(inst, (p, i))| (inst, p, i))
        .collect())
}

fn template_for(tokenizer: &Tokenizer, options: &InspectOptions) -> Result<ChatTemplate> {
    match options.template.as_deref() {
        Some(spec) => ChatTemplate::resolve(spec, tokenizer),
        None if tokenizer.chat_template(None).is_some() => {
            ChatTemplate::from_tokenizer(tokenizer, None)
        }
        None => ChatTemplate::preset("chatml"),
    }
}

fn from_sample(
    segments: Vec<Segment>,
    sample: TokenizedSample,
    origin: (PathBuf, usize),
    part: Option<&'static str>,
) -> InspectedSample {
    InspectedSample {
        text: segments.iter().map(|s| s.text.as_str()).collect(),
        input_ids: sample.input_ids,
        labels: sample.labels,
        segments,
        origin: Some(origin),
        part,
        original_len: sample.original_len,
        truncated: sample.truncated,
        target_lost: sample.target_lost,
    }
}

/// Renders and tokenizes the first `limit` instances of a dataset (preference instances give
/// two samples, chosen then rejected). Errors name the file, instance and field.
pub fn inspect(
    dataset: impl AsRef<Path>,
    tokenizer: &Tokenizer,
    options: &InspectOptions,
) -> Result<Vec<InspectedSample>> {
    let instances = load(dataset.as_ref(), options)?;
    let template = template_for(tokenizer, options)?;
    let encoder = SampleEncoder::new(tokenizer, Some(&template), options.tokenize.clone())?;
    let mut out = Vec::new();
    for (inst, path, index) in instances {
        let at = |e: DatasetError| e.at(&path, index);
        match &inst {
            Instance::PairedConversation { chosen, rejected } => {
                for (part, c) in [("chosen", chosen), ("rejected", rejected)] {
                    let e = encoder.encode_conversation(c).map_err(at)?;
                    out.push(from_sample(
                        e.segments,
                        e.sample,
                        (path.clone(), index),
                        Some(part),
                    ));
                }
            }
            Instance::PairedTextToText {
                prompt,
                chosen,
                rejected,
                ..
            } => {
                for (part, completion) in [("chosen", chosen), ("rejected", rejected)] {
                    let e = encoder
                        .encode_text(&Instance::Text2Text {
                            input: prompt.clone(),
                            output: completion.clone(),
                        })
                        .map_err(at)?;
                    out.push(from_sample(
                        e.segments,
                        e.sample,
                        (path.clone(), index),
                        Some(part),
                    ));
                }
            }
            Instance::TextOnly { .. } | Instance::Text2Text { .. } | Instance::Conversation(_) => {
                let e = encoder.encode_text(&inst).map_err(at)?;
                out.push(from_sample(
                    e.segments,
                    e.sample,
                    (path.clone(), index),
                    None,
                ));
            }
            other => {
                return Err(DatasetError::Type(format!(
                    "{}: `{}` datasets have no training text to inspect",
                    path.display(),
                    other.dataset_type()
                )));
            }
        }
    }
    Ok(out)
}

const TRAINED: &str = "\x1b[1;32m";
const MASKED: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Human-readable view of one sample: a header line, then the tokens decoded with trained
/// tokens in bold green and masked tokens dimmed (plain `[[...]]` around trained text when
/// `color` is false).
pub fn render_sample(
    sample: &InspectedSample,
    tokenizer: &Tokenizer,
    color: bool,
) -> Result<String> {
    let mut out = String::new();
    let trained = sample.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
    if let Some((p, i)) = &sample.origin {
        out.push_str(&format!("── {} #{i}", p.display()));
    }
    if let Some(part) = sample.part {
        out.push_str(&format!(" ({part})"));
    }
    out.push_str(&format!(
        " ── {} tokens, {trained} trained{}{}\n",
        sample.input_ids.len(),
        if sample.truncated { ", TRUNCATED" } else { "" },
        if sample.target_lost {
            ", TARGET LOST"
        } else {
            ""
        }
    ));
    // Decode runs of equally-labelled tokens so multi-byte characters stay whole.
    let mut start = 0;
    while start < sample.input_ids.len() {
        let is_trained = sample.labels[start] != IGNORE_INDEX;
        let mut end = start + 1;
        while end < sample.input_ids.len() && (sample.labels[end] != IGNORE_INDEX) == is_trained {
            end += 1;
        }
        let text = tokenizer.decode(&sample.input_ids[start..end], false)?;
        match (color, is_trained) {
            (true, true) => out.push_str(&format!("{TRAINED}{text}{RESET}")),
            (true, false) => out.push_str(&format!("{MASKED}{text}{RESET}")),
            (false, true) => out.push_str(&format!("[[{text}]]")),
            (false, false) => out.push_str(&text),
        }
        start = end;
    }
    out.push('\n');
    Ok(out)
}

/// Token-length percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LengthStats {
    /// Shortest.
    pub min: usize,
    /// Median.
    pub p50: usize,
    /// 90th percentile.
    pub p90: usize,
    /// 99th percentile.
    pub p99: usize,
    /// Longest.
    pub max: usize,
    /// Mean.
    pub mean: f64,
}

impl LengthStats {
    /// Nearest-rank percentiles of `lengths`.
    pub fn from_lengths(lengths: &[usize]) -> Self {
        if lengths.is_empty() {
            return Self::default();
        }
        let mut v = lengths.to_vec();
        v.sort_unstable();
        let pct = |p: f64| {
            let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        Self {
            min: v[0],
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: v[v.len() - 1],
            mean: v.iter().sum::<usize>() as f64 / v.len() as f64,
        }
    }
}

/// Dataset statistics (`lmflow data stats`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Samples (preference pairs count twice).
    pub samples: usize,
    /// Token lengths before truncation.
    pub length_before_truncation: LengthStats,
    /// Token lengths after truncation.
    pub length: LengthStats,
    /// Tokens after truncation.
    pub total_tokens: usize,
    /// Trained tokens after truncation.
    pub trained_tokens: usize,
    /// Samples cut to `block_size`.
    pub truncated: usize,
    /// `truncated / samples`.
    pub truncated_fraction: f64,
    /// Samples whose trained tokens were all cut.
    pub target_lost: usize,
    /// Fraction of tokens that are masked (`1 - trained / total`).
    pub masked_fraction: f64,
    /// The `block_size` used.
    pub block_size: usize,
}

/// Computes [`DatasetStats`] over the (first `limit`) instances.
pub fn stats(
    dataset: impl AsRef<Path>,
    tokenizer: &Tokenizer,
    options: &InspectOptions,
) -> Result<DatasetStats> {
    let samples = inspect(dataset, tokenizer, options)?;
    Ok(stats_of(&samples, options.tokenize.block_size))
}

/// Statistics of already inspected samples.
pub fn stats_of(samples: &[InspectedSample], block_size: usize) -> DatasetStats {
    let lengths: Vec<usize> = samples.iter().map(|s| s.input_ids.len()).collect();
    let before: Vec<usize> = samples.iter().map(|s| s.original_len).collect();
    let total: usize = lengths.iter().sum();
    let trained: usize = samples
        .iter()
        .map(|s| s.labels.iter().filter(|&&l| l != IGNORE_INDEX).count())
        .sum();
    let truncated = samples.iter().filter(|s| s.truncated).count();
    let n = samples.len();
    DatasetStats {
        samples: n,
        length_before_truncation: LengthStats::from_lengths(&before),
        length: LengthStats::from_lengths(&lengths),
        total_tokens: total,
        trained_tokens: trained,
        truncated,
        truncated_fraction: if n == 0 {
            0.0
        } else {
            truncated as f64 / n as f64
        },
        target_lost: samples.iter().filter(|s| s.target_lost).count(),
        masked_fraction: if total == 0 {
            0.0
        } else {
            1.0 - trained as f64 / total as f64
        },
        block_size,
    }
}

/// Human-readable statistics table.
pub fn render_stats(s: &DatasetStats) -> String {
    let row = |name: &str, l: &LengthStats| {
        format!(
            "{name:<24} min {:>6}  p50 {:>6}  p90 {:>6}  p99 {:>6}  max {:>6}  mean {:>8.1}\n",
            l.min, l.p50, l.p90, l.p99, l.max, l.mean
        )
    };
    let mut out = String::new();
    out.push_str(&format!("samples                  {}\n", s.samples));
    out.push_str(&format!("block_size               {}\n", s.block_size));
    out.push_str(&row("tokens (before cut)", &s.length_before_truncation));
    out.push_str(&row("tokens", &s.length));
    out.push_str(&format!("total tokens             {}\n", s.total_tokens));
    out.push_str(&format!("trained tokens           {}\n", s.trained_tokens));
    out.push_str(&format!(
        "masked fraction          {:.4}\n",
        s.masked_fraction
    ));
    out.push_str(&format!(
        "truncated                {} ({:.2}%)\n",
        s.truncated,
        100.0 * s.truncated_fraction
    ));
    out.push_str(&format!("target lost by cut       {}\n", s.target_lost));
    out
}
