//! Tokenizer wrapper over the `tokenizers` crate with the Hub's model-folder conventions.
//!
//! A Hub model folder describes its tokenizer in up to four files:
//!
//! - `tokenizer.json`: the fast tokenizer itself (required);
//! - `tokenizer_config.json`: special tokens (`bos_token`, `eos_token`, `pad_token`,
//!   `unk_token`, each a string or an `AddedToken` object `{"content": ..}`), `add_bos_token` /
//!   `add_eos_token`, `chat_template` (a string, or a list of `{name, template}`),
//!   `model_max_length`, `clean_up_tokenization_spaces`;
//! - `chat_template.jinja`: the chat template in the newer separate-file layout (it wins over the
//!   config's `chat_template`);
//! - `generation_config.json`: `eos_token_id` (one id or a list), `bos_token_id`, `pad_token_id`.
//!
//! [`Tokenizer`] follows `transformers`' `PreTrainedTokenizerFast` (v5): when
//! `tokenizer_config.json` names `add_bos_token` or `add_eos_token` (or `tokenizer.json` has no
//! post-processor) the post-processor is rebuilt as `[bos] $A [eos]` from those flags; otherwise
//! the post-processor of `tokenizer.json` decides what "special tokens" are added.
//!
//! [`StreamDecoder`] turns a stream of generated ids into text pieces that never split a UTF-8
//! character.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::processors::template::TemplateProcessing;

/// Errors raised while loading or using a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A key of a configuration file has an unexpected type or value.
    #[error("{path}: key `{key}`: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `eos_token`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// `tokenizer.json` could not be turned into a tokenizer.
    #[error("{path}: cannot build the tokenizer: {message}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The error reported by `tokenizers`.
        message: String,
    },
    /// Encoding text failed.
    #[error("cannot encode text: {0}")]
    Encode(String),
    /// Decoding ids failed.
    #[error("cannot decode ids: {0}")]
    Decode(String),
    /// A token id lies outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownId {
        /// The offending id.
        id: u32,
        /// The vocabulary size, added tokens included.
        vocab_size: usize,
    },
}

/// Token ids with the byte range of the text each token covers.
pub type IdsWithOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// Result alias for tokenizer operations.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// A special token: its text and (when the vocabulary has it) its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    /// The token's text, e.g. `"</s>"`.
    pub content: String,
    /// Its id, `None` when the vocabulary lacks the token.
    pub id: Option<u32>,
}

/// A tokenizer with the special tokens, chat templates and limits of a Hub model folder.
///
/// # Example
///
/// ```no_run
/// use lmflow_models::Tokenizer;
///
/// let tok = Tokenizer::from_dir("path/to/model")?;
/// let ids = tok.encode("Call me Ishmael.", true)?;
/// assert_eq!(tok.decode(&ids, true)?, "Call me Ishmael.");
/// # Ok::<(), lmflow_models::tokenizer::TokenizerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    pad: Option<SpecialToken>,
    unk: Option<SpecialToken>,
    eos_token_ids: Vec<u32>,
    add_bos_token: bool,
    add_eos_token: bool,
    chat_templates: BTreeMap<String, String>,
    model_max_length: Option<usize>,
    clean_up_tokenization_spaces: bool,
}

/// The name of the default chat template in a list-form `chat_template`.
pub const DEFAULT_CHAT_TEMPLATE: &str = "default";

/// `model_max_length` values at or above this are the Hub's "no limit" placeholder (`1e30`).
const NO_MAX_LENGTH: f64 = 1e18;

impl Tokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` (optional), `chat_template.jinja`
    /// (optional) and `generation_config.json` (optional) from a model folder.
    ///
    /// Errors name the file, and the key for malformed configuration values.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&tok_path).map_err(|source| TokenizerError::Io {
            path: tok_path.clone(),
            source,
        })?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Load {
                path: tok_path.clone(),
                message: e.to_string(),
            })?;
        let config_path = dir.join("tokenizer_config.json");
        let config = read_optional_json(&config_path)?;
        let gen_path = dir.join("generation_config.json");
        let generation = read_optional_json(&gen_path)?;
        let jinja_path = dir.join("chat_template.jinja");
        let jinja = if jinja_path.is_file() {
            Some(
                std::fs::read_to_string(&jinja_path).map_err(|source| TokenizerError::Io {
                    path: jinja_path.clone(),
                    source,
                })?,
            )
        } else {
            None
        };
        Self::from_parts(
            inner,
            config.as_ref().map(|v| (config_path.as_path(), v)),
            generation.as_ref().map(|v| (gen_path.as_path(), v)),
            jinja,
        )
    }

    /// Builds a tokenizer from an already loaded `tokenizers::Tokenizer` and optional parsed
    /// `tokenizer_config.json` / `generation_config.json` values (each with the path used in
    /// error messages) and an optional `chat_template.jinja` text.
    pub fn from_parts(
        mut inner: tokenizers::Tokenizer,
        config: Option<(&Path, &Value)>,
        generation: Option<(&Path, &Value)>,
        chat_template_file: Option<String>,
    ) -> Result<Self> {
        let empty = Value::Object(Default::default());
        let (cfg_path, cfg) = config.unwrap_or((Path::new("tokenizer_config.json"), &empty));
        if !cfg.is_object() {
            return Err(field_err(cfg_path, "<root>", "expected a JSON object"));
        }
        let special = |key: &str| -> Result<Option<SpecialToken>> {
            let Some(content) = token_content(cfg_path, cfg, key)? else {
                return Ok(None);
            };
            let id = inner.token_to_id(&content);
            if id.is_none() {
                tracing::warn!(
                    "{}: `{key}` = {content:?} is not in the vocabulary",
                    cfg_path.display()
                );
            }
            Ok(Some(SpecialToken { content, id }))
        };
        let bos = special("bos_token")?;
        let mut eos = special("eos_token")?;
        let pad = special("pad_token")?;
        let unk = special("unk_token")?;

        let add_bos = opt_bool(cfg_path, cfg, "add_bos_token")?;
        let add_eos = opt_bool(cfg_path, cfg, "add_eos_token")?;
        let add_bos_token = add_bos.unwrap_or(false);
        let add_eos_token = add_eos.unwrap_or(false);
        if add_bos.is_some() || add_eos.is_some() || inner.get_post_processor().is_none() {
            let processor = bos_eos_processor(
                bos.as_ref().filter(|_| add_bos_token),
                eos.as_ref().filter(|_| add_eos_token),
            )
            .map_err(|message| field_err(cfg_path, "add_bos_token", &message))?;
            inner.with_post_processor(Some(processor));
        }

        let mut chat_templates = BTreeMap::new();
        match cfg.get("chat_template") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                chat_templates.insert(DEFAULT_CHAT_TEMPLATE.to_string(), s.clone());
            }
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let name = item.get("name").and_then(Value::as_str);
                    let template = item.get("template").and_then(Value::as_str);
                    match (name, template) {
                        (Some(n), Some(t)) => {
                            chat_templates.insert(n.to_string(), t.to_string());
                        }
                        _ => {
                            return Err(field_err(
                                cfg_path,
                                &format!("chat_template[{i}]"),
                                "expected an object with string `name` and `template`",
                            ));
                        }
                    }
                }
            }
            Some(_) => {
                return Err(field_err(
                    cfg_path,
                    "chat_template",
                    "expected a string or a list of {name, template}",
                ));
            }
        }
        if let Some(t) = chat_template_file {
            chat_templates.insert(DEFAULT_CHAT_TEMPLATE.to_string(), t);
        }

        let model_max_length = match cfg.get("model_max_length") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(x) if x >= NO_MAX_LENGTH => None,
                Some(x) if x >= 0.0 && x.fract() == 0.0 => Some(x as usize),
                _ => {
                    return Err(field_err(
                        cfg_path,
                        "model_max_length",
                        "expected a non-negative integer",
                    ));
                }
            },
        };
        let clean_up_tokenization_spaces =
            opt_bool(cfg_path, cfg, "clean_up_tokenization_spaces")?.unwrap_or(false);

        let mut eos_token_ids = Vec::new();
        if let Some(id) = eos.as_ref().and_then(|t| t.id) {
            eos_token_ids.push(id);
        }
        if let Some((gen_path, generation)) = generation {
            let ids = match generation.get("eos_token_id") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        as_u32(v).ok_or_else(|| {
                            field_err(
                                gen_path,
                                &format!("eos_token_id[{i}]"),
                                "expected a token id",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
                Some(v) => vec![as_u32(v).ok_or_else(|| {
                    field_err(
                        gen_path,
                        "eos_token_id",
                        "expected a token id or a list of ids",
                    )
                })?],
            };
            for id in ids {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
            if eos.is_none()
                && let Some(&id) = eos_token_ids.first()
                && let Some(content) = inner.id_to_token(id)
            {
                eos = Some(SpecialToken {
                    content,
                    id: Some(id),
                });
            }
        }

        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            unk,
            eos_token_ids,
            add_bos_token,
            add_eos_token,
            chat_templates,
            model_max_length,
            clean_up_tokenization_spaces,
        })
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes `text` into token ids; with `add_special_tokens` the post-processor's tokens
    /// (e.g. BOS) are added, as `tokenizer(text, add_special_tokens=...)` does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes `text` and returns ids with the byte range of `text` each token covers
    /// (`(0, 0)` for tokens added by the post-processor).
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<IdsWithOffsets> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Decodes ids into text; `skip_special_tokens` drops special tokens as
    /// `tokenizer.decode(ids, skip_special_tokens=...)` does. Ids the tokenizer lacks (a model
    /// whose embedding table is padded beyond the vocabulary can emit them) decode as nothing,
    /// as in `transformers`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let vocab_size = self.vocab_size();
        let known: Vec<u32>;
        let ids = if ids.iter().any(|&id| id as usize >= vocab_size) {
            known = ids
                .iter()
                .copied()
                .filter(|&id| (id as usize) < vocab_size)
                .collect();
            &known[..]
        } else {
            ids
        };
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))?;
        Ok(if self.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// A streaming decoder over this tokenizer (see [`StreamDecoder`]).
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special_tokens)
    }

    /// Vocabulary size, added tokens included (`len(tokenizer)` in `transformers`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest token id of the vocabulary (added tokens included) and its token.
    pub fn max_token_id(&self) -> Option<(u32, String)> {
        self.inner
            .get_vocab(true)
            .into_iter()
            .max_by_key(|(_, id)| *id)
            .map(|(token, id)| (id, token))
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of token `id`, if it is in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The beginning-of-sequence token.
    pub fn bos_token(&self) -> Option<&SpecialToken> {
        self.bos.as_ref()
    }

    /// The end-of-sequence token of `tokenizer_config.json` (or the first EOS of
    /// `generation_config.json` when the config names none).
    pub fn eos_token(&self) -> Option<&SpecialToken> {
        self.eos.as_ref()
    }

    /// The padding token.
    pub fn pad_token(&self) -> Option<&SpecialToken> {
        self.pad.as_ref()
    }

    /// The unknown token.
    pub fn unk_token(&self) -> Option<&SpecialToken> {
        self.unk.as_ref()
    }

    /// Id of the BOS token.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos.as_ref().and_then(|t| t.id)
    }

    /// Id of the EOS token.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos.as_ref().and_then(|t| t.id)
    }

    /// Id of the padding token.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad.as_ref().and_then(|t| t.id)
    }

    /// Every id that ends generation: the tokenizer's EOS first, then each
    /// `eos_token_id` of `generation_config.json` (deduplicated).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Whether `id` ends generation (is one of [`Self::eos_token_ids`]).
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// `add_bos_token` of `tokenizer_config.json` (false when absent).
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// `add_eos_token` of `tokenizer_config.json` (false when absent).
    pub fn add_eos_token(&self) -> bool {
        self.add_eos_token
    }

    /// The chat template called `name`, or the default one for `None`.
    pub fn chat_template(&self, name: Option<&str>) -> Option<&str> {
        self.chat_templates
            .get(name.unwrap_or(DEFAULT_CHAT_TEMPLATE))
            .map(String::as_str)
    }

    /// All chat templates by name (a single-string `chat_template` is named `"default"`).
    pub fn chat_templates(&self) -> &BTreeMap<String, String> {
        &self.chat_templates
    }

    /// `model_max_length` of `tokenizer_config.json`, `None` when absent or the "no limit"
    /// placeholder.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }
}

/// Incremental detokenizer: push generated ids one at a time and get back only text that is
/// complete.
///
/// Text is emitted when decoding the pending ids yields new characters that do not end in the
/// replacement character `U+FFFD`, so a UTF-8 character split over several byte-level tokens is
/// held back until its last byte arrives. Decoding uses a small window of previous ids as
/// context so that decoders which strip a leading space (SentencePiece-style) produce the same
/// text as decoding the whole sequence at once.
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder with no pending ids.
    pub fn new(tokenizer: &'t Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one id; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let new_text = match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => {
                // The context decoded differently once more ids arrived: emit the part after the
                // longest common prefix (on a character boundary).
                let common = full
                    .char_indices()
                    .zip(prefix.chars())
                    .take_while(|((_, a), b)| a == b)
                    .last()
                    .map_or(0, |((i, c), _)| i + c.len_utf8());
                full[common..].to_string()
            }
        };
        // Keep only the ids needed as context for the next decode.
        // The ids before the old read offset are no longer needed as context.
        self.ids.drain(..self.read_offset);
        self.prefix_offset = 0;
        self.read_offset = self.ids.len();
        Ok(Some(new_text))
    }

    /// Flushes the text of the ids still held back (possibly ending in `U+FFFD` when the stream
    /// stopped inside a character) and resets the decoder.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let prefix = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.ids.clear();
        self.prefix_offset = 0;
        self.read_offset = 0;
        let rest = full.strip_prefix(prefix.as_str()).unwrap_or(&full);
        Ok((!rest.is_empty()).then(|| rest.to_string()))
    }
}

/// `transformers`' `clean_up_tokenization`: removes spaces before punctuation and contractions.
fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })
}

fn field_err(path: &Path, key: &str, message: &str) -> TokenizerError {
    TokenizerError::Field {
        path: path.to_path_buf(),
        key: key.to_string(),
        message: message.to_string(),
    }
}

fn token_content(path: &Path, cfg: &Value, key: &str) -> Result<Option<String>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(field_err(
                path,
                key,
                "an AddedToken object needs a string `content`",
            )),
        },
        Some(_) => Err(field_err(
            path,
            key,
            "expected a string or an AddedToken object {\"content\": ...}",
        )),
    }
}

fn opt_bool(path: &Path, cfg: &Value, key: &str) -> Result<Option<bool>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(field_err(path, key, "expected true or false")),
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

/// `[bos] $A [eos]` / `[bos] $A [eos] [bos] $B [eos]`, as `update_post_processor` builds it.
fn bos_eos_processor(
    bos: Option<&SpecialToken>,
    eos: Option<&SpecialToken>,
) -> std::result::Result<TemplateProcessing, String> {
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Vec::new();
    let bos = bos.and_then(|t| t.id.map(|id| (t.content.clone(), id)));
    let eos = eos.and_then(|t| t.id.map(|id| (t.content.clone(), id)));
    if let Some((b, _)) = &bos {
        single.push(format!("{b}:0"));
        pair.push(format!("{b}:0"));
    }
    single.push("$A:0".to_string());
    pair.push("$A:0".to_string());
    if let Some((e, _)) = &eos {
        single.push(format!("{e}:0"));
        pair.push(format!("{e}:0"));
    }
    if let Some((b, _)) = &bos {
        pair.push(format!("{b}:1"));
    }
    pair.push("$B:1".to_string());
    if let Some((e, _)) = &eos {
        pair.push(format!("{e}:1"));
    }
    specials.extend(bos.clone());
    if eos.as_ref().map(|e| &e.0) != bos.as_ref().map(|b| &b.0) {
        specials.extend(eos.clone());
    }
    TemplateProcessing::builder()
        .try_single(single.join(" "))
        .map_err(|e| e.to_string())?
        .try_pair(pair.join(" "))
        .map_err(|e| e.to_string())?
        .special_tokens(specials)
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tokenizer"
    );

    fn reference() -> Value {
        let text = std::fs::read_to_string(format!("{DIR}/reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn ids(v: &Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }

    #[test]
    fn special_tokens_match_transformers() {
        let tok = Tokenizer::from_dir(DIR).unwrap();
        let r = reference();
        assert_eq!(tok.vocab_size() as u64, r["vocab_size"].as_u64().unwrap());
        assert_eq!(tok.bos_token().unwrap().content, r["bos_token"]);
        assert_eq!(tok.eos_token().unwrap().content, r["eos_token"]);
        assert_eq!(tok.pad_token().unwrap().content, r["pad_token"]);
        assert_eq!(
            tok.bos_token_id().map(u64::from),
            r["bos_token_id"].as_u64()
        );
        assert_eq!(
            tok.eos_token_id().map(u64::from),
            r["eos_token_id"].as_u64()
        );
        assert_eq!(
            tok.pad_token_id().map(u64::from),
            r["pad_token_id"].as_u64()
        );
        assert!(tok.unk_token().is_none());
        let gen_eos = ids(&r["generation_eos_token_ids"]);
        for id in &gen_eos {
            assert!(tok.is_eos(*id));
        }
        assert_eq!(tok.eos_token_ids()[0], tok.eos_token_id().unwrap());
        assert_eq!(tok.eos_token_ids().len(), 3);
        assert!(tok.add_bos_token());
        assert!(!tok.add_eos_token());
        assert_eq!(tok.model_max_length(), Some(2048));
        assert!(tok.chat_template(None).unwrap().contains("<|im_start|>"));
        for (name, id) in r["special_token_ids"].as_object().unwrap() {
            assert_eq!(tok.token_to_id(name).map(u64::from), id.as_u64(), "{name}");
        }
    }

    #[test]
    fn encode_decode_match_transformers() {
        let tok = Tokenizer::from_dir(DIR).unwrap();
        let r = reference();
        for case in r["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let with = ids(&case["ids_with_special"]);
            let without = ids(&case["ids_without_special"]);
            assert_eq!(tok.encode(text, true).unwrap(), with, "{text:?}");
            assert_eq!(tok.encode(text, false).unwrap(), without, "{text:?}");
            assert_eq!(
                tok.decode(&without, false).unwrap(),
                case["decoded"],
                "{text:?}"
            );
            assert_eq!(
                tok.decode(&with, true).unwrap(),
                case["decoded_with_special_skip"],
                "{text:?}"
            );
            assert_eq!(
                tok.decode(&with, false).unwrap(),
                case["decoded_with_special_keep"],
                "{text:?}"
            );
            let (oids, offsets) = tok.encode_with_offsets(text, false).unwrap();
            assert_eq!(oids, without);
            assert!(offsets.iter().all(|&(a, b)| a <= b && b <= text.len()));
        }
    }

    #[test]
    fn stream_decoder_never_splits_characters() {
        let tok = Tokenizer::from_dir(DIR).unwrap();
        let r = reference();
        let mut saw_held_back = false;
        for case in r["cases"].as_array().unwrap() {
            for skip in [false, true] {
                let with = ids(&case["ids_with_special"]);
                let mut dec = tok.stream_decoder(skip);
                let mut out = String::new();
                for &id in &with {
                    match dec.push(id).unwrap() {
                        Some(piece) => {
                            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                            out.push_str(&piece);
                        }
                        None => saw_held_back = true,
                    }
                }
                if let Some(rest) = dec.finish().unwrap() {
                    out.push_str(&rest);
                }
                let key = if skip {
                    "decoded_with_special_skip"
                } else {
                    "decoded_with_special_keep"
                };
                assert_eq!(out, case[key].as_str().unwrap());
            }
        }
        // The non-ASCII case splits characters over byte-level tokens.
        assert!(saw_held_back);
    }

    #[test]
    fn stream_decoder_finish_flushes_partial_character() {
        let tok = Tokenizer::from_dir(DIR).unwrap();
        let whale = tok.encode("🐳", false).unwrap();
        assert!(whale.len() > 1, "the emoji must span several tokens");
        let mut dec = tok.stream_decoder(false);
        assert_eq!(dec.push(whale[0]).unwrap(), None);
        assert_eq!(dec.finish().unwrap().as_deref(), Some("\u{FFFD}"));
    }

    #[test]
    fn config_errors_name_file_and_key() {
        let inner = Tokenizer::from_dir(DIR).unwrap().inner().clone();
        let path = Path::new("x/tokenizer_config.json");
        let bad = serde_json::json!({"eos_token": 5});
        let err = Tokenizer::from_parts(inner.clone(), Some((path, &bad)), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x/tokenizer_config.json") && err.contains("eos_token"),
            "{err}"
        );
        let bad = serde_json::json!({"chat_template": [{"name": "tool_use"}]});
        let err = Tokenizer::from_parts(inner.clone(), Some((path, &bad)), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chat_template[0]"), "{err}");
        let gen_path = Path::new("x/generation_config.json");
        let bad = serde_json::json!({"eos_token_id": [1, "two"]});
        let err = Tokenizer::from_parts(inner.clone(), None, Some((gen_path, &bad)), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("generation_config.json") && err.contains("eos_token_id[1]"),
            "{err}"
        );
        let err = Tokenizer::from_dir("/nonexistent-dir")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn config_variants() {
        let inner = Tokenizer::from_dir(DIR).unwrap().inner().clone();
        let path = Path::new("tokenizer_config.json");
        let cfg = serde_json::json!({
            "bos_token": {"content": "<s>"},
            "eos_token": "</s>",
            "add_bos_token": false,
            "add_eos_token": true,
            "model_max_length": 1e30,
            "chat_template": [
                {"name": "default", "template": "A"},
                {"name": "tool_use", "template": "B"}
            ]
        });
        let gen_path = Path::new("generation_config.json");
        let generation = serde_json::json!({"eos_token_id": 2});
        let tok = Tokenizer::from_parts(
            inner,
            Some((path, &cfg)),
            Some((gen_path, &generation)),
            None,
        )
        .unwrap();
        let plain = tok.encode("Call me", false).unwrap();
        let mut expected = plain.clone();
        expected.push(tok.eos_token_id().unwrap());
        // add_bos_token=false / add_eos_token=true rebuild the post-processor like transformers.
        assert_eq!(tok.encode("Call me", true).unwrap(), expected);
        assert_eq!(tok.model_max_length(), None);
        assert_eq!(tok.chat_template(Some("tool_use")), Some("B"));
        assert_eq!(tok.chat_template(None), Some("A"));
        assert_eq!(tok.eos_token_ids(), &[4, 2]);
    }

    #[test]
    fn ids_beyond_the_vocabulary_decode_as_nothing() {
        // Models pad their embedding tables (Qwen2: 151,936 rows for ~151,650 tokens) and can
        // emit the padding ids; transformers decodes them as empty text.
        let tok = Tokenizer::from_dir(DIR).unwrap();
        let hello = tok.encode("hello world", false).unwrap();
        let beyond = tok.vocab_size() as u32 + 7;
        let mut with_padding = hello.clone();
        with_padding.insert(1, beyond);
        with_padding.push(beyond);
        assert_eq!(
            tok.decode(&with_padding, false).unwrap(),
            tok.decode(&hello, false).unwrap()
        );
        let mut stream = tok.stream_decoder(false);
        assert_eq!(stream.push(beyond).unwrap(), None);
    }
}
