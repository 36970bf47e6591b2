//! LMFlow's preset chat templates, written in Rust.

use super::{Segment, TemplateTokens, push_segment};
use crate::error::{DatasetError, Result};
use crate::format::{Conversation, Role};

/// Names accepted by [`super::ChatTemplate::preset`].
pub const PRESET_NAMES: &[&str] = &[
    "chatml",
    "deepseek",
    "deepseek_v2",
    "empty",
    "empty_no_special_tokens",
    "gemma",
    "llama2",
    "llama3",
    "mistral",
    "phi3",
    "qwen2",
    "qwen2_5",
    "qwen3",
    "yi",
    "zephyr",
];

/// A turn format: `prefix + content + suffix`. `{bos}` / `{eos}` in prefix and suffix become
/// the tokenizer's special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Turn {
    prefix: &'static str,
    suffix: &'static str,
}

const fn turn(prefix: &'static str, suffix: &'static str) -> Turn {
    Turn { prefix, suffix }
}

/// Where the system prompt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SystemMode {
    /// Its own block before the first turn.
    Block(Turn),
    /// Prepended (formatted) to the content of the first user turn (LLaMA-2).
    FirstUser(Turn),
    /// Prepended as `system + "\n\n"` to the last user turn when it is the last message
    /// (Mistral v0.3; otherwise dropped, as in that template).
    LastUser,
    /// Not supported: a system prompt is an error.
    Unsupported,
}

/// A preset chat template.
///
/// Rendering: `start`, the system prompt (per the preset), then each message; an assistant
/// (or function) turn renders `assistant.prefix` untrained and `content + assistant.suffix`
/// trained, so the end-of-turn marker is trained; user and observation turns are untrained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    name: &'static str,
    start: &'static str,
    system: SystemMode,
    user: Turn,
    /// First user turn when there is no system block (Zephyr drops a leading newline).
    first_user: Option<Turn>,
    assistant: Turn,
    observation: Turn,
    generation_prompt: &'static str,
    /// Appended (trained when the last turn is the model's) unless `add_generation_prompt`.
    end: &'static str,
    trim_user: bool,
    trim_assistant: bool,
    /// Roles must alternate user/assistant (the template raises otherwise).
    strict_alternation: bool,
}

const CHATML_USER: Turn = turn("<|im_start|>user\n", "<|im_end|>\n");
const CHATML_ASSISTANT: Turn = turn("<|im_start|>assistant\n", "<|im_end|>\n");
const CHATML_SYSTEM: Turn = turn("<|im_start|>system\n", "<|im_end|>\n");
const CHATML_TOOL: Turn = turn("<|im_start|>tool\n", "<|im_end|>\n");

const CHATML: Preset = Preset {
    name: "chatml",
    start: "",
    system: SystemMode::Block(CHATML_SYSTEM),
    user: CHATML_USER,
    first_user: None,
    assistant: CHATML_ASSISTANT,
    observation: CHATML_TOOL,
    generation_prompt: "<|im_start|>assistant\n",
    end: "",
    trim_user: false,
    trim_assistant: false,
    strict_alternation: false,
};

impl Preset {
    /// The preset called `name` (the Jinja presets `qwen2_5`/`qwen3` are built by
    /// [`super::ChatTemplate::preset`]).
    pub fn from_name(name: &str) -> Result<Self> {
        let p = match name {
            "chatml" => CHATML,
            "qwen2" => Preset {
                name: "qwen2",
                ..CHATML
            },
            "yi" => Preset {
                name: "yi",
                ..CHATML
            },
            "llama3" => Preset {
                name: "llama3",
                start: "{bos}",
                system: SystemMode::Block(turn(
                    "<|start_header_id|>system<|end_header_id|>\n\n",
                    "<|eot_id|>",
                )),
                user: turn("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
                first_user: None,
                assistant: turn(
                    "<|start_header_id|>assistant<|end_header_id|>\n\n",
                    "<|eot_id|>",
                ),
                observation: turn("<|start_header_id|>tool<|end_header_id|>\n\n", "<|eot_id|>"),
                generation_prompt: "<|start_header_id|>assistant<|end_header_id|>\n\n",
                end: "",
                trim_user: true,
                trim_assistant: true,
                strict_alternation: false,
            },
            "llama2" => Preset {
                name: "llama2",
                start: "",
                system: SystemMode::FirstUser(turn("<<SYS>>\n", "\n<</SYS>>\n\n")),
                user: turn("{bos}[INST] ", " [/INST]"),
                first_user: None,
                assistant: turn("", "{eos}"),
                observation: turn("{bos}[INST] ", " [/INST]"),
                generation_prompt: "",
                end: "",
                trim_user: false,
                trim_assistant: false,
                strict_alternation: false,
            },
            "mistral" => Preset {
                name: "mistral",
                start: "{bos}",
                system: SystemMode::LastUser,
                user: turn("[INST] ", "[/INST]"),
                first_user: None,
                assistant: turn(" ", "{eos}"),
                observation: turn("[TOOL_RESULTS] ", "[/TOOL_RESULTS]"),
                generation_prompt: "",
                end: "",
                trim_user: false,
                trim_assistant: true,
                strict_alternation: true,
            },
            "gemma" => Preset {
                name: "gemma",
                start: "{bos}",
                system: SystemMode::Block(turn("", "")),
                user: turn("<start_of_turn>user\n", "<end_of_turn>\n"),
                first_user: None,
                assistant: turn("<start_of_turn>model\n", "<end_of_turn>\n"),
                observation: turn("<start_of_turn>user\n", "<end_of_turn>\n"),
                generation_prompt: "<start_of_turn>model\n",
                end: "",
                trim_user: true,
                trim_assistant: true,
                strict_alternation: true,
            },
            "phi3" => Preset {
                name: "phi3",
                start: "",
                system: SystemMode::Block(turn("<|system|>\n", "<|end|>\n")),
                user: turn("<|user|>\n", "<|end|>\n"),
                first_user: None,
                assistant: turn("<|assistant|>\n", "<|end|>\n"),
                observation: turn("<|user|>\n", "<|end|>\n"),
                generation_prompt: "<|assistant|>\n",
                end: "{eos}",
                trim_user: false,
                trim_assistant: false,
                strict_alternation: false,
            },
            "zephyr" => Preset {
                name: "zephyr",
                start: "",
                system: SystemMode::Block(turn("<|system|>\n", "{eos}")),
                user: turn("\n<|user|>\n", "{eos}"),
                first_user: Some(turn("<|user|>\n", "{eos}")),
                assistant: turn("\n<|assistant|>\n", "{eos}"),
                observation: turn("\n<|user|>\n", "{eos}"),
                generation_prompt: "\n<|assistant|>\n",
                end: "",
                trim_user: false,
                trim_assistant: false,
                strict_alternation: false,
            },
            "deepseek" | "deepseek_v2" => Preset {
                name: if name == "deepseek" {
                    "deepseek"
                } else {
                    "deepseek_v2"
                },
                start: "{bos}",
                system: SystemMode::Block(turn("", "\n\n")),
                user: turn("User: ", "\n\n"),
                first_user: None,
                assistant: turn("Assistant: ", "{eos}"),
                observation: turn("User: ", "\n\n"),
                generation_prompt: "Assistant:",
                end: "",
                trim_user: false,
                trim_assistant: false,
                strict_alternation: false,
            },
            "empty" => Preset {
                name: "empty",
                start: "",
                system: SystemMode::Unsupported,
                user: turn("{bos}", ""),
                first_user: None,
                assistant: turn("", "{eos}"),
                observation: turn("", ""),
                generation_prompt: "",
                end: "",
                trim_user: false,
                trim_assistant: false,
                strict_alternation: false,
            },
            "empty_no_special_tokens" => Preset {
                name: "empty_no_special_tokens",
                start: "",
                system: SystemMode::Unsupported,
                user: turn("", ""),
                first_user: None,
                assistant: turn("", ""),
                observation: turn("", ""),
                generation_prompt: "",
                end: "",
                trim_user: false,
                trim_assistant: false,
                strict_alternation: false,
            },
            other => return Err(DatasetError::UnknownTemplate(other.to_string())),
        };
        Ok(p)
    }

    /// The preset's name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// Renders a conversation (see the type's documentation for what is trained).
    pub fn render(
        &self,
        conversation: &Conversation,
        tokens: &TemplateTokens,
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>> {
        let bos = tokens.bos_token.as_deref().unwrap_or("");
        let eos = tokens.eos_token.as_deref().unwrap_or("");
        let fill = |s: &str| s.replace("{bos}", bos).replace("{eos}", eos);
        let err = |m: &str| DatasetError::Template {
            name: self.name.to_string(),
            message: m.to_string(),
        };
        let messages = &conversation.messages;
        if messages.first().map(|m| m.role) != Some(Role::User) {
            return Err(DatasetError::Conversation(
                "a conversation must start with a user turn".into(),
            ));
        }
        if self.strict_alternation {
            let mut expect_user = true;
            for m in messages {
                let is_user = m.role == Role::User;
                if m.role == Role::Observation || m.role == Role::Function {
                    continue;
                }
                if is_user != expect_user {
                    return Err(err(
                        "Conversation roles must alternate user/assistant/user/assistant/...",
                    ));
                }
                expect_user = !expect_user;
            }
        }
        let system = conversation
            .system
            .as_deref()
            .filter(|s| !s.trim().is_empty());
        let mut out = Vec::new();
        push_segment(&mut out, &fill(self.start), false);
        let mut has_system_block = false;
        if let Some(s) = system {
            match self.system {
                SystemMode::Block(t) => {
                    let s = if self.trim_user { s.trim() } else { s };
                    push_segment(
                        &mut out,
                        &format!("{}{s}{}", fill(t.prefix), fill(t.suffix)),
                        false,
                    );
                    has_system_block = true;
                }
                SystemMode::Unsupported => {
                    return Err(err("this template has no place for a system prompt"));
                }
                SystemMode::FirstUser(_) | SystemMode::LastUser => {}
            }
        }
        let last = messages.len() - 1;
        for (i, m) in messages.iter().enumerate() {
            match m.role {
                Role::User => {
                    let t = match self.first_user {
                        Some(f) if i == 0 && !has_system_block => f,
                        _ => self.user,
                    };
                    let content = if self.trim_user {
                        m.content.trim()
                    } else {
                        m.content.as_str()
                    };
                    let content = match (self.system, system) {
                        (SystemMode::FirstUser(st), Some(s)) if i == 0 => {
                            format!("{}{s}{}{content}", fill(st.prefix), fill(st.suffix))
                        }
                        (SystemMode::LastUser, Some(s)) if i == last => {
                            format!("{s}\n\n{content}")
                        }
                        _ => content.to_string(),
                    };
                    push_segment(
                        &mut out,
                        &format!("{}{content}{}", fill(t.prefix), fill(t.suffix)),
                        false,
                    );
                }
                Role::Assistant | Role::Function => {
                    let content = if self.trim_assistant {
                        m.content.trim()
                    } else {
                        m.content.as_str()
                    };
                    push_segment(&mut out, &fill(self.assistant.prefix), false);
                    push_segment(
                        &mut out,
                        &format!("{content}{}", fill(self.assistant.suffix)),
                        true,
                    );
                }
                Role::Observation => {
                    let t = self.observation;
                    push_segment(
                        &mut out,
                        &format!("{}{}{}", fill(t.prefix), m.content, fill(t.suffix)),
                        false,
                    );
                }
                Role::System => {
                    return Err(DatasetError::Conversation(
                        "a system message is only allowed first".into(),
                    ));
                }
            }
        }
        if add_generation_prompt {
            push_segment(&mut out, &fill(self.generation_prompt), false);
        } else {
            let trained = messages[last].role.is_model_output();
            push_segment(&mut out, &fill(self.end), trained);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Message;

    fn conv(turns: &[(Role, &str)]) -> Conversation {
        Conversation {
            system: None,
            tools: vec![],
            messages: turns
                .iter()
                .map(|(r, c)| Message {
                    role: *r,
                    content: c.to_string(),
                    extra: Default::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn every_preset_trains_assistant_and_end_of_turn_only() {
        let tokens = TemplateTokens {
            bos_token: Some("<s>".into()),
            eos_token: Some("</s>".into()),
            ..Default::default()
        };
        let c = conv(&[(Role::User, "USERTEXT"), (Role::Assistant, "BOTTEXT")]);
        for name in PRESET_NAMES {
            if *name == "qwen2_5" || *name == "qwen3" {
                continue;
            }
            let p = Preset::from_name(name).unwrap();
            let segs = p.render(&c, &tokens, false).unwrap();
            let trained: String = segs
                .iter()
                .filter(|s| s.trained)
                .map(|s| s.text.as_str())
                .collect();
            let untrained: String = segs
                .iter()
                .filter(|s| !s.trained)
                .map(|s| s.text.as_str())
                .collect();
            assert!(trained.starts_with("BOTTEXT"), "{name}: {trained:?}");
            assert!(!trained.contains("USERTEXT"), "{name}");
            assert!(untrained.contains("USERTEXT"), "{name}");
            if *name != "empty_no_special_tokens" {
                assert!(
                    trained.len() > "BOTTEXT".len(),
                    "{name}: end-of-turn must be trained"
                );
            }
        }
    }
}
