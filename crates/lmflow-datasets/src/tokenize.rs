//! Tokenization and labels: instances become `input_ids` and `labels` (`-100` = not trained).
//!
//! Labels are *unshifted*, as in `transformers`: `labels[t]` is the target for the logits at
//! `t - 1`; the model (or loss) shifts them.
//!
//! Masking rules:
//! - `text_only`: every token is trained; BOS (per the tokenizer's post-processor) is
//!   prepended and EOS appended when [`TokenizeConfig::append_eos`].
//! - `text2text`: `input` (with BOS) is masked, `output` + EOS is trained.
//! - `conversation`: the template's trained segments (assistant turns including their
//!   end-of-turn token) are trained, the rest masked, unless [`TokenizeConfig::train_on_prompt`]
//!   (then everything is trained). The rendered text is tokenized as a whole, without adding
//!   special tokens (the template writes them), and a token is trained when its text overlaps
//!   a trained segment.
//!
//! Truncation keeps the first `block_size` tokens; samples cut that way are flagged, and a
//! sample whose trained tokens were all cut is flagged `target_lost` (never silently kept as
//! an all-masked sample). [`SampleEncoder::encode_text_blocks`] splits long `text_only`
//! texts into consecutive blocks instead ([`split_into_blocks`], like `group_texts`).

use lmflow_models::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::format::{Conversation, Instance};
use crate::template::{ChatTemplate, Segment, TemplateTokens};

/// The label of a token that is not trained.
pub const IGNORE_INDEX: i64 = -100;

/// Options of [`SampleEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeConfig {
    /// Maximum tokens per sample; longer samples are cut (default 1024).
    pub block_size: usize,
    /// Train on prompt tokens too (user/system/template text; default false).
    pub train_on_prompt: bool,
    /// Append EOS to `text_only` texts and `text2text` outputs (default true).
    pub append_eos: bool,
}

impl Default for TokenizeConfig {
    fn default() -> Self {
        Self {
            block_size: 1024,
            train_on_prompt: false,
            append_eos: true,
        }
    }
}

/// One tokenized sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizedSample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Unshifted labels: the id when trained, [`IGNORE_INDEX`] otherwise.
    pub labels: Vec<i64>,
    /// Length before truncation (for a block of [`split_into_blocks`], of the whole text).
    pub original_len: usize,
    /// Whether tokens were cut to fit `block_size`.
    pub truncated: bool,
    /// Whether truncation removed every trained token.
    pub target_lost: bool,
}

impl TokenizedSample {
    fn new(input_ids: Vec<u32>, labels: Vec<i64>, block_size: usize) -> Self {
        let original_len = input_ids.len();
        let had_target = labels.iter().any(|&l| l != IGNORE_INDEX);
        let (mut input_ids, mut labels) = (input_ids, labels);
        let truncated = original_len > block_size;
        if truncated {
            input_ids.truncate(block_size);
            labels.truncate(block_size);
        }
        let target_lost = had_target && labels.iter().all(|&l| l == IGNORE_INDEX);
        Self {
            input_ids,
            labels,
            original_len,
            truncated,
            target_lost,
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the sample has no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of trained tokens.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Splits a fully trained token sequence (`text_only`) into consecutive samples of at most
/// `block_size` tokens, every token trained; a last piece of one token is dropped (nothing
/// would be predicted from it). `block_size` 0 gives no samples.
pub fn split_into_blocks(ids: &[u32], block_size: usize) -> Vec<TokenizedSample> {
    if block_size == 0 {
        return Vec::new();
    }
    ids.chunks(block_size)
        .filter(|c| c.len() >= 2 || ids.len() < 2)
        .map(|c| TokenizedSample {
            input_ids: c.to_vec(),
            labels: c.iter().map(|&id| i64::from(id)).collect(),
            original_len: ids.len(),
            truncated: false,
            target_lost: false,
        })
        .collect()
}

/// A tokenized preference pair (from `paired_conversation` or `paired_text_to_text`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizedPair {
    /// The preferred sample.
    pub chosen: TokenizedSample,
    /// The dispreferred sample.
    pub rejected: TokenizedSample,
    /// Optional margin.
    pub margin: Option<f64>,
}

/// A rendered and tokenized sample with the text it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedText {
    /// The rendered segments.
    pub segments: Vec<Segment>,
    /// The tokens and labels.
    pub sample: TokenizedSample,
}

/// Turns instances into tokenized samples.
#[derive(Debug, Clone)]
pub struct SampleEncoder<'a> {
    tokenizer: &'a Tokenizer,
    template: Option<&'a ChatTemplate>,
    tokens: TemplateTokens,
    config: TokenizeConfig,
}

impl<'a> SampleEncoder<'a> {
    /// An encoder; `template` is needed for conversation types.
    pub fn new(
        tokenizer: &'a Tokenizer,
        template: Option<&'a ChatTemplate>,
        config: TokenizeConfig,
    ) -> Result<Self> {
        if config.block_size == 0 {
            return Err(DatasetError::Config("block_size must be positive".into()));
        }
        Ok(Self {
            tokenizer,
            template,
            tokens: TemplateTokens::from_tokenizer(tokenizer),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TokenizeConfig {
        &self.config
    }

    fn eos(&self) -> Result<Option<u32>> {
        if !self.config.append_eos {
            return Ok(None);
        }
        self.tokenizer.eos_token_id().map(Some).ok_or_else(|| {
            DatasetError::Config("the tokenizer has no EOS token (needed by append_eos)".into())
        })
    }

    /// Tokenizes segments as one text (no special tokens added) and labels tokens that
    /// overlap trained segments.
    pub fn encode_segments(&self, segments: &[Segment]) -> Result<TokenizedSample> {
        let text: String = segments.iter().map(|s| s.text.as_str()).collect();
        let (ids, offsets) = self.tokenizer.encode_with_offsets(&text, false)?;
        let mut spans = Vec::new();
        let mut pos = 0;
        for s in segments {
            let end = pos + s.text.len();
            if s.trained || self.config.train_on_prompt {
                spans.push((pos, end));
            }
            pos = end;
        }
        let labels = ids
            .iter()
            .zip(&offsets)
            .map(|(&id, &(a, b))| {
                let trained = spans.iter().any(|&(s, e)| a < e && s < b);
                if trained { i64::from(id) } else { IGNORE_INDEX }
            })
            .collect();
        Ok(TokenizedSample::new(ids, labels, self.config.block_size))
    }

    /// Renders a conversation with the encoder's chat template into segments (not tokenized).
    pub fn render_conversation(&self, conversation: &Conversation) -> Result<Vec<Segment>> {
        let template = self.template.ok_or_else(|| {
            DatasetError::Config("conversation data needs a chat template".into())
        })?;
        template.render(conversation, &self.tokens, false)
    }

    /// Renders and tokenizes a conversation.
    pub fn encode_conversation(&self, conversation: &Conversation) -> Result<EncodedText> {
        let template = self.template.ok_or_else(|| {
            DatasetError::Config("conversation data needs a chat template".into())
        })?;
        let segments = template.render(conversation, &self.tokens, false)?;
        let sample = self.encode_segments(&segments)?;
        Ok(EncodedText { segments, sample })
    }

    fn encode_prompt_completion(&self, prompt: &str, completion: &str) -> Result<EncodedText> {
        let mut ids = self.tokenizer.encode(prompt, true)?;
        let n_prompt = ids.len();
        ids.extend(self.tokenizer.encode(completion, false)?);
        if let Some(eos) = self.eos()? {
            ids.push(eos);
        }
        let labels = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                if i >= n_prompt || self.config.train_on_prompt {
                    i64::from(id)
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        let mut completion_text = completion.to_string();
        if self.config.append_eos
            && let Some(e) = &self.tokens.eos_token
        {
            completion_text.push_str(e);
        }
        let segments = vec![
            Segment {
                text: prompt.to_string(),
                trained: self.config.train_on_prompt,
            },
            Segment {
                text: completion_text,
                trained: true,
            },
        ];
        Ok(EncodedText {
            segments,
            sample: TokenizedSample::new(ids, labels, self.config.block_size),
        })
    }

    /// Token ids of a `text_only` text (BOS per the tokenizer, EOS when
    /// [`TokenizeConfig::append_eos`]), not truncated.
    fn text_only_ids(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text, true)?;
        if let Some(eos) = self.eos()? {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// Like [`SampleEncoder::encode_text`], except that a `text_only` text longer than the
    /// block size is split into consecutive blocks of `block_size` tokens (the last one
    /// shorter), as Hugging Face's and LMFlow's `group_texts` do, instead of being truncated:
    /// no token is thrown away. Each block is trained on its own (its first token is
    /// predicted from nothing, as after `group_texts`). A last block of a single token is
    /// dropped (it would predict nothing). Other instance types give one sample, truncated
    /// as by [`SampleEncoder::encode_text`].
    pub fn encode_text_blocks(&self, instance: &Instance) -> Result<Vec<TokenizedSample>> {
        match instance {
            Instance::TextOnly { text } => {
                let ids = self.text_only_ids(text)?;
                Ok(split_into_blocks(&ids, self.config.block_size))
            }
            other => Ok(vec![self.encode_text(other)?.sample]),
        }
    }

    /// Renders and tokenizes a single-sequence instance (`text_only`, `text2text`,
    /// `conversation`).
    pub fn encode_text(&self, instance: &Instance) -> Result<EncodedText> {
        match instance {
            Instance::TextOnly { text } => {
                let ids = self.text_only_ids(text)?;
                let mut shown = text.clone();
                if self.config.append_eos
                    && let Some(e) = &self.tokens.eos_token
                {
                    shown.push_str(e);
                }
                let labels = ids.iter().map(|&id| i64::from(id)).collect();
                Ok(EncodedText {
                    segments: vec![Segment {
                        text: shown,
                        trained: true,
                    }],
                    sample: TokenizedSample::new(ids, labels, self.config.block_size),
                })
            }
            Instance::Text2Text { input, output } => self.encode_prompt_completion(input, output),
            Instance::Conversation(c) => self.encode_conversation(c),
            other => Err(DatasetError::Type(format!(
                "`{}` instances are not single sequences (use encode_pair for preference data)",
                other.dataset_type()
            ))),
        }
    }

    /// Tokenizes a preference instance (`paired_conversation`, `paired_text_to_text`).
    pub fn encode_pair(&self, instance: &Instance) -> Result<TokenizedPair> {
        match instance {
            Instance::PairedConversation { chosen, rejected } => Ok(TokenizedPair {
                chosen: self.encode_conversation(chosen)?.sample,
                rejected: self.encode_conversation(rejected)?.sample,
                margin: None,
            }),
            Instance::PairedTextToText {
                prompt,
                chosen,
                rejected,
                margin,
            } => Ok(TokenizedPair {
                chosen: self.encode_prompt_completion(prompt, chosen)?.sample,
                rejected: self.encode_prompt_completion(prompt, rejected)?.sample,
                margin: *margin,
            }),
            other => Err(DatasetError::Type(format!(
                "`{}` instances are not preference pairs",
                other.dataset_type()
            ))),
        }
    }
}
