//! LMFlow's dataset formats: the instance types and their parsing from JSON values.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{DatasetError, Result};

/// The `type` of an LMFlow dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetType {
    /// `{"text": ..}`: plain text, every token trained.
    TextOnly,
    /// `{"input": .., "output": ..}`: input masked, output trained.
    #[serde(rename = "text2text")]
    Text2Text,
    /// `{"messages": [{role, content}], "system"?, "tools"?}`.
    Conversation,
    /// `{"chosen": conversation, "rejected": conversation}`.
    PairedConversation,
    /// `{"prompt": .., "chosen": .., "rejected": .., "margin"?}`.
    PairedTextToText,
    /// `{"input": .., "output": [text, ..]}`.
    TextToTextlist,
    /// `{"input": .., "output": [{"score": .., "text": ..}, ..]}`.
    TextToScoredTextlist,
    /// `{"value": float}`.
    FloatOnly,
}

impl DatasetType {
    /// Every type, in documentation order.
    pub const ALL: [DatasetType; 8] = [
        DatasetType::TextOnly,
        DatasetType::Text2Text,
        DatasetType::Conversation,
        DatasetType::PairedConversation,
        DatasetType::PairedTextToText,
        DatasetType::TextToTextlist,
        DatasetType::TextToScoredTextlist,
        DatasetType::FloatOnly,
    ];

    /// The name used in the `type` key.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetType::TextOnly => "text_only",
            DatasetType::Text2Text => "text2text",
            DatasetType::Conversation => "conversation",
            DatasetType::PairedConversation => "paired_conversation",
            DatasetType::PairedTextToText => "paired_text_to_text",
            DatasetType::TextToTextlist => "text_to_textlist",
            DatasetType::TextToScoredTextlist => "text_to_scored_textlist",
            DatasetType::FloatOnly => "float_only",
        }
    }
}

impl fmt::Display for DatasetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetType {
    type Err = DatasetError;

    fn from_str(s: &str) -> Result<Self> {
        DatasetType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                DatasetError::Type(format!(
                    "unknown dataset type `{s}` (expected one of: {})",
                    DatasetType::ALL.map(|t| t.as_str()).join(", ")
                ))
            })
    }
}

/// The role of a conversation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// System prompt.
    System,
    /// The user.
    User,
    /// The model: trained.
    Assistant,
    /// A function call emitted by the model: trained.
    Function,
    /// The result of a function call: not trained.
    Observation,
}

impl Role {
    /// The role's name in LMFlow's JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Function => "function",
            Role::Observation => "observation",
        }
    }

    /// Whether messages of this role are model output (trained by default).
    pub fn is_model_output(self) -> bool {
        matches!(self, Role::Assistant | Role::Function)
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
    /// Any other keys of the message object (e.g. `tool_calls`), passed to Jinja templates.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A conversation instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Conversation {
    /// Optional system prompt (LMFlow's `system` key, or a leading `system` message).
    pub system: Option<String>,
    /// Optional tool descriptions (strings or JSON schemas), given to templates as `tools`.
    pub tools: Vec<Value>,
    /// The turns; the first one is a user turn.
    pub messages: Vec<Message>,
}

/// A scored completion of `text_to_scored_textlist`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredText {
    /// The score.
    pub score: f64,
    /// The completion.
    pub text: String,
}

/// One parsed instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Instance {
    /// `text_only`.
    TextOnly {
        /// The text.
        text: String,
    },
    /// `text2text`.
    #[serde(rename = "text2text")]
    Text2Text {
        /// The prompt (masked).
        input: String,
        /// The target (trained).
        output: String,
    },
    /// `conversation`.
    Conversation(Conversation),
    /// `paired_conversation`.
    PairedConversation {
        /// The preferred conversation.
        chosen: Conversation,
        /// The dispreferred conversation.
        rejected: Conversation,
    },
    /// `paired_text_to_text`.
    PairedTextToText {
        /// The shared prompt.
        prompt: String,
        /// The preferred completion.
        chosen: String,
        /// The dispreferred completion.
        rejected: String,
        /// Optional reward margin.
        margin: Option<f64>,
    },
    /// `text_to_textlist`.
    TextToTextlist {
        /// The prompt.
        input: String,
        /// Candidate completions.
        output: Vec<String>,
    },
    /// `text_to_scored_textlist`.
    TextToScoredTextlist {
        /// The prompt.
        input: String,
        /// Scored completions.
        output: Vec<ScoredText>,
    },
    /// `float_only`.
    FloatOnly {
        /// The value.
        value: f64,
    },
}

impl Instance {
    /// The dataset type of this instance.
    pub fn dataset_type(&self) -> DatasetType {
        match self {
            Instance::TextOnly { .. } => DatasetType::TextOnly,
            Instance::Text2Text { .. } => DatasetType::Text2Text,
            Instance::Conversation(_) => DatasetType::Conversation,
            Instance::PairedConversation { .. } => DatasetType::PairedConversation,
            Instance::PairedTextToText { .. } => DatasetType::PairedTextToText,
            Instance::TextToTextlist { .. } => DatasetType::TextToTextlist,
            Instance::TextToScoredTextlist { .. } => DatasetType::TextToScoredTextlist,
            Instance::FloatOnly { .. } => DatasetType::FloatOnly,
        }
    }

    /// Parses one instance of type `ty` from a JSON value; errors name `path`, `index` and
    /// the field.
    pub fn from_json(ty: DatasetType, value: &Value, path: &Path, index: usize) -> Result<Self> {
        let p = Parser { path, index };
        let obj = p.object(value, "")?;
        Ok(match ty {
            DatasetType::TextOnly => Instance::TextOnly {
                text: p.string(obj, "text")?,
            },
            DatasetType::Text2Text => Instance::Text2Text {
                input: p.string(obj, "input")?,
                output: p.string(obj, "output")?,
            },
            DatasetType::Conversation => Instance::Conversation(p.conversation(obj, "")?),
            DatasetType::PairedConversation => Instance::PairedConversation {
                chosen: p.conversation(p.object(p.get(obj, "chosen")?, "chosen")?, "chosen.")?,
                rejected: p
                    .conversation(p.object(p.get(obj, "rejected")?, "rejected")?, "rejected.")?,
            },
            DatasetType::PairedTextToText => Instance::PairedTextToText {
                prompt: p.string(obj, "prompt")?,
                chosen: p.string(obj, "chosen")?,
                rejected: p.string(obj, "rejected")?,
                margin: match obj.get("margin") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(p.number(v, "margin")?),
                },
            },
            DatasetType::TextToTextlist => {
                let input = p.string(obj, "input")?;
                let list = p.array(p.get(obj, "output")?, "output")?;
                let output = list
                    .iter()
                    .enumerate()
                    .map(|(i, v)| p.as_string(v, &format!("output[{i}]")))
                    .collect::<Result<_>>()?;
                Instance::TextToTextlist { input, output }
            }
            DatasetType::TextToScoredTextlist => {
                let input = p.string(obj, "input")?;
                let list = p.array(p.get(obj, "output")?, "output")?;
                let output = list
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let field = format!("output[{i}]");
                        let o = p.object(v, &field)?;
                        let score = p.number(
                            o.get("score")
                                .ok_or_else(|| p.err(&format!("{field}.score"), "missing"))?,
                            &format!("{field}.score"),
                        )?;
                        let text = p.as_string(
                            o.get("text")
                                .ok_or_else(|| p.err(&format!("{field}.text"), "missing"))?,
                            &format!("{field}.text"),
                        )?;
                        Ok(ScoredText { score, text })
                    })
                    .collect::<Result<_>>()?;
                Instance::TextToScoredTextlist { input, output }
            }
            DatasetType::FloatOnly => Instance::FloatOnly {
                value: p.number(p.get(obj, "value")?, "value")?,
            },
        })
    }
}

struct Parser<'a> {
    path: &'a Path,
    index: usize,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Parser<'_> {
    fn err(&self, field: &str, message: &str) -> DatasetError {
        DatasetError::Field {
            path: self.path.to_path_buf(),
            index: self.index,
            field: if field.is_empty() {
                "<instance>".into()
            } else {
                field.to_string()
            },
            message: message.to_string(),
        }
    }

    fn object<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Map<String, Value>> {
        v.as_object().ok_or_else(|| {
            self.err(
                field,
                &format!("expected an object, found {}", json_type(v)),
            )
        })
    }

    fn array<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Vec<Value>> {
        v.as_array()
            .ok_or_else(|| self.err(field, &format!("expected an array, found {}", json_type(v))))
    }

    fn get<'v>(&self, obj: &'v Map<String, Value>, key: &str) -> Result<&'v Value> {
        obj.get(key).ok_or_else(|| self.err(key, "missing"))
    }

    fn as_string(&self, v: &Value, field: &str) -> Result<String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.err(field, &format!("expected a string, found {}", json_type(v))))
    }

    fn string(&self, obj: &Map<String, Value>, key: &str) -> Result<String> {
        self.as_string(self.get(obj, key)?, key)
    }

    fn number(&self, v: &Value, field: &str) -> Result<f64> {
        match v {
            Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| self.err(field, "not a finite number")),
            // LMFlow's own description writes floats as strings ("FLOAT_1").
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| self.err(field, &format!("expected a number, found string {s:?}"))),
            _ => Err(self.err(field, &format!("expected a number, found {}", json_type(v)))),
        }
    }

    fn conversation(&self, obj: &Map<String, Value>, prefix: &str) -> Result<Conversation> {
        let field = |f: &str| format!("{prefix}{f}");
        let mut system = match obj.get("system") {
            None | Some(Value::Null) => None,
            Some(v) => Some(self.as_string(v, &field("system"))?),
        };
        let tools = match obj.get("tools") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => self.array(v, &field("tools"))?.clone(),
        };
        let raw = self.array(
            obj.get("messages")
                .ok_or_else(|| self.err(&field("messages"), "missing"))?,
            &field("messages"),
        )?;
        if raw.is_empty() {
            return Err(self.err(
                &field("messages"),
                "a conversation needs at least one message",
            ));
        }
        let mut messages = Vec::with_capacity(raw.len());
        for (i, m) in raw.iter().enumerate() {
            let mf = field(&format!("messages[{i}]"));
            let mo = self.object(m, &mf)?;
            let role_v = mo
                .get("role")
                .ok_or_else(|| self.err(&format!("{mf}.role"), "missing"))?;
            let role_s = self.as_string(role_v, &format!("{mf}.role"))?;
            let role = match role_s.as_str() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                "function" => Role::Function,
                "observation" => Role::Observation,
                other => {
                    return Err(self.err(
                        &format!("{mf}.role"),
                        &format!(
                            "unknown role `{other}` (expected system, user, assistant, function or observation)"
                        ),
                    ));
                }
            };
            let content = match mo.get("content") {
                Some(v) => self.as_string(v, &format!("{mf}.content"))?,
                None => return Err(self.err(&format!("{mf}.content"), "missing")),
            };
            let extra = mo
                .iter()
                .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "content")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            messages.push(Message {
                role,
                content,
                extra,
            });
        }
        // A leading system message (Hub style) becomes the system prompt.
        if messages[0].role == Role::System {
            if system.is_some() {
                return Err(self.err(
                    &field("messages[0]"),
                    "both a `system` key and a leading system message",
                ));
            }
            system = Some(messages.remove(0).content);
        }
        match messages.first() {
            None => {
                return Err(self.err(&field("messages"), "a conversation needs a user turn"));
            }
            Some(m) if m.role != Role::User => {
                return Err(self.err(
                    &field("messages[0].role"),
                    &format!(
                        "a conversation must start with a user turn (after an optional system message), found `{}`",
                        m.role.as_str()
                    ),
                ));
            }
            _ => {}
        }
        if let Some(i) = messages.iter().position(|m| m.role == Role::System) {
            return Err(self.err(
                &field(&format!("messages[{i}].role")),
                "a system message is only allowed first",
            ));
        }
        Ok(Conversation {
            system,
            tools,
            messages,
        })
    }
}
