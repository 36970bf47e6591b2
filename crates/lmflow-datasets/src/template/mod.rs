//! Chat templates: render a [`Conversation`] into [`Segment`]s that know whether they are
//! trained.
//!
//! Two kinds exist:
//! - presets ([`Preset`]), LMFlow's named templates written in Rust; their segments come from
//!   the preset's structure (assistant content and its end-of-turn marker are trained; role
//!   headers, user, system and observation turns are not);
//! - Jinja templates ([`JinjaTemplate`]), e.g. a tokenizer's `chat_template`, rendered with
//!   `minijinja` the way `transformers`' `apply_chat_template` does; trained spans are the
//!   `{% generation %}...{% endgeneration %}` blocks, or, for templates without them, the
//!   text each assistant turn adds after the generation prompt.
//!
//! `qwen2_5` and `qwen3` presets are Jinja templates with generation markers, as in LMFlow.

mod jinja;
mod preset;

pub use jinja::JinjaTemplate;
pub use preset::{PRESET_NAMES, Preset};

use lmflow_models::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::format::Conversation;

/// A piece of rendered text and whether its tokens are trained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The text.
    pub text: String,
    /// Whether the tokens of this text get labels (are predicted by the loss).
    pub trained: bool,
}

/// Concatenates segment texts.
pub fn segments_text(segments: &[Segment]) -> String {
    segments.iter().map(|s| s.text.as_str()).collect()
}

/// Appends `text` to `out`, merging with the last segment when `trained` agrees.
pub(crate) fn push_segment(out: &mut Vec<Segment>, text: &str, trained: bool) {
    if text.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(last) if last.trained == trained => last.text.push_str(text),
        _ => out.push(Segment {
            text: text.to_string(),
            trained,
        }),
    }
}

/// Special-token strings a template may insert (`bos_token`, `eos_token`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateTokens {
    /// Beginning of sequence.
    pub bos_token: Option<String>,
    /// End of sequence.
    pub eos_token: Option<String>,
    /// Padding.
    pub pad_token: Option<String>,
    /// Unknown token.
    pub unk_token: Option<String>,
}

impl TemplateTokens {
    /// The special tokens of a tokenizer.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Self {
        Self {
            bos_token: tokenizer.bos_token().map(|t| t.content.clone()),
            eos_token: tokenizer.eos_token().map(|t| t.content.clone()),
            pad_token: tokenizer.pad_token().map(|t| t.content.clone()),
            unk_token: tokenizer.unk_token().map(|t| t.content.clone()),
        }
    }
}

/// A chat template: a preset or a Jinja template.
#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// A preset written in Rust.
    Preset(Preset),
    /// A Jinja template.
    Jinja(JinjaTemplate),
}

impl ChatTemplate {
    /// The preset called `name` (see [`PRESET_NAMES`]).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "qwen2_5" => Ok(ChatTemplate::Jinja(JinjaTemplate::new(
                "qwen2_5",
                include_str!("qwen2_5.jinja"),
            )?)),
            "qwen3" => Ok(ChatTemplate::Jinja(JinjaTemplate::new(
                "qwen3",
                include_str!("qwen3.jinja"),
            )?)),
            _ => Preset::from_name(name).map(ChatTemplate::Preset),
        }
    }

    /// The tokenizer's own `chat_template` (`name` picks one of a list; `None`: the default).
    pub fn from_tokenizer(tokenizer: &Tokenizer, name: Option<&str>) -> Result<Self> {
        let source = tokenizer
            .chat_template(name)
            .ok_or_else(|| DatasetError::Template {
                name: name.unwrap_or("tokenizer").into(),
                message: "the tokenizer has no such chat_template".into(),
            })?;
        Ok(ChatTemplate::Jinja(JinjaTemplate::new(
            name.unwrap_or("tokenizer"),
            source,
        )?))
    }

    /// `"tokenizer"` selects the tokenizer's template, anything else a preset.
    pub fn resolve(spec: &str, tokenizer: &Tokenizer) -> Result<Self> {
        if spec == "tokenizer" {
            Self::from_tokenizer(tokenizer, None)
        } else {
            Self::preset(spec)
        }
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        match self {
            ChatTemplate::Preset(p) => p.name(),
            ChatTemplate::Jinja(j) => j.name(),
        }
    }

    /// Renders `conversation` into segments. With `add_generation_prompt` the opening of a
    /// new assistant turn is appended (untrained).
    pub fn render(
        &self,
        conversation: &Conversation,
        tokens: &TemplateTokens,
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>> {
        match self {
            ChatTemplate::Preset(p) => p.render(conversation, tokens, add_generation_prompt),
            ChatTemplate::Jinja(j) => j.render(conversation, tokens, add_generation_prompt),
        }
    }

    /// Renders to a plain string (what `apply_chat_template(tokenize=False)` returns).
    pub fn render_text(
        &self,
        conversation: &Conversation,
        tokens: &TemplateTokens,
        add_generation_prompt: bool,
    ) -> Result<String> {
        Ok(segments_text(&self.render(
            conversation,
            tokens,
            add_generation_prompt,
        )?))
    }
}
