//! Jinja chat templates rendered with `minijinja`, the way `transformers` renders them.
//!
//! Environment as in `transformers`' `apply_chat_template`: `trim_blocks` and
//! `lstrip_blocks` on, loop controls, Python string/dict methods (`minijinja-contrib`'s
//! `pycompat`), `raise_exception(msg)`, `strftime_now(fmt)` and a `tojson` filter with
//! Python's `json.dumps(ensure_ascii=False)` output (`", "` / `": "` separators, `indent`,
//! `sort_keys`). Variables: `messages`, `tools` (none when empty), `add_generation_prompt`,
//! `bos_token`, `eos_token`, `pad_token`, `unk_token` (undefined when the tokenizer has none).
//!
//! `{% generation %}...{% endgeneration %}` (the assistant-mask extension) is rewritten into
//! two empty filter blocks emitting private-use marker characters, so whitespace control
//! behaves as for a block tag; the markers split the output into trained segments.

use std::sync::Arc;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{Map, Value as Json};

use super::{Segment, TemplateTokens, push_segment};
use crate::error::{DatasetError, Result};
use crate::format::Conversation;

const GEN_START: char = '\u{E000}';
const GEN_END: char = '\u{E001}';
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled Jinja chat template.
#[derive(Clone)]
pub struct JinjaTemplate {
    name: String,
    source: String,
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish()
    }
}

/// Template instructions one rendering may execute. Chat templates arrive inside downloaded
/// model folders and are untrusted: a runaway loop stops here (well under a second) instead of
/// running for minutes. Real templates use a few dozen instructions per message.
pub const MAX_TEMPLATE_FUEL: u64 = 20_000_000;

/// Bytes one rendering may produce (64 MiB); a template emitting more is stopped with an error
/// instead of exhausting memory.
pub const MAX_TEMPLATE_OUTPUT: usize = 64 << 20;

fn template_err(name: &str, e: &Error) -> DatasetError {
    // `raise_exception` messages are reported as they are; other errors with their details.
    let message = match e.kind() {
        ErrorKind::InvalidOperation => e.detail().unwrap_or_default().to_string(),
        ErrorKind::OutOfFuel => format!(
            "rendering stopped after {MAX_TEMPLATE_FUEL} template instructions (a runaway \
             loop?); chat templates come from model folders and are run with limits"
        ),
        _ => format!("{e:#}"),
    };
    DatasetError::Template {
        name: name.to_string(),
        message,
    }
}

/// Rewrites `{% generation %}` / `{% endgeneration %}` (with any whitespace-control
/// modifiers) into marker-emitting filter blocks.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let Some(end) = tail.find("%}") else {
            out.push_str(tail);
            return out;
        };
        let inner = &tail[2..end];
        let (lmod, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, rmod) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        let marker = match body.trim() {
            "generation" => Some("__lmflow_generation_start"),
            "endgeneration" => Some("__lmflow_generation_end"),
            _ => None,
        };
        match marker {
            Some(filter) => {
                out.push_str(&format!(
                    "{{%{lmod} filter {filter} %}}{{% endfilter {rmod}%}}"
                ));
            }
            None => out.push_str(&tail[..end + 2]),
        }
        rest = &tail[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Python `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
pub(crate) fn python_json(value: &Json, indent: Option<usize>, sort_keys: bool) -> String {
    fn write(v: &Json, indent: Option<usize>, sort: bool, depth: usize, out: &mut String) {
        let (item_sep, key_sep) = match indent {
            Some(_) => (",", ": "),
            None => (", ", ": "),
        };
        let newline = |out: &mut String, depth: usize| {
            if let Some(n) = indent {
                out.push('\n');
                out.push_str(&" ".repeat(n * depth));
            }
        };
        match v {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => {
                if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                    if f.is_finite() && f == f.trunc() && f.abs() < 1e16 {
                        out.push_str(&format!("{f:.1}"));
                    } else {
                        out.push_str(&n.to_string());
                    }
                } else {
                    out.push_str(&n.to_string());
                }
            }
            Json::String(s) => {
                out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()))
            }
            Json::Array(a) => {
                if a.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    newline(out, depth + 1);
                    write(x, indent, sort, depth + 1, out);
                }
                newline(out, depth);
                out.push(']');
            }
            Json::Object(o) => {
                if o.is_empty() {
                    out.push_str("{}");
                    return;
                }
                let mut entries: Vec<(&String, &Json)> = o.iter().collect();
                if sort {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, x)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    newline(out, depth + 1);
                    out.push_str(&serde_json::to_string(k).unwrap_or_default());
                    out.push_str(key_sep);
                    write(x, indent, sort, depth + 1, out);
                }
                newline(out, depth);
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    write(value, indent, sort_keys, 0, &mut out);
    out
}

fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(python_json(
        &json,
        indent,
        sort_keys.unwrap_or(false),
    )))
}

/// `strftime_now(fmt)`: the current UTC time formatted with `%Y %m %d %H %M %S %b %B %a %A
/// %y %e %j %%` (other directives are kept literally).
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, &fmt)
}

pub(crate) fn strftime(unix_secs: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let is_leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let doy = CUM[(m - 1) as usize] + d + i64::from(is_leap && m > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('j') => out.push_str(&format!("{doy:03}")),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Collects rendered output, failing once it would exceed [`MAX_TEMPLATE_OUTPUT`].
struct LimitedOutput {
    buf: Vec<u8>,
    exceeded: bool,
}

impl std::io::Write for LimitedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > MAX_TEMPLATE_OUTPUT {
            self.exceeded = true;
            return Err(std::io::Error::other("template output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(MAX_TEMPLATE_FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_filter("__lmflow_generation_start", |_: String| {
        GEN_START.to_string()
    });
    env.add_filter("__lmflow_generation_end", |_: String| GEN_END.to_string());
    env
}

impl JinjaTemplate {
    /// Compiles `source`; `name` is used in error messages.
    pub fn new(name: &str, source: &str) -> Result<Self> {
        let mut env = new_environment();
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|e| template_err(name, &e))?;
        Ok(Self {
            name: name.to_string(),
            source: source.to_string(),
            env: Arc::new(env),
        })
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template marks trained spans with `{% generation %}`.
    pub fn has_generation_markers(&self) -> bool {
        rewrite_generation_tags(&self.source) != self.source
    }

    /// Renders the template with messages given as JSON objects (`{role, content, ...}`) and
    /// `tools` (none when `None`); returns the output with the generation markers in place.
    fn render_raw(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        tokens: &TemplateTokens,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_err(&self.name, &e))?;
        let mut ctx = Map::new();
        ctx.insert("messages".into(), Json::Array(messages.to_vec()));
        ctx.insert(
            "tools".into(),
            tools.map_or(Json::Null, |t| Json::Array(t.to_vec())),
        );
        ctx.insert("documents".into(), Json::Null);
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(add_generation_prompt),
        );
        for (key, v) in [
            ("bos_token", &tokens.bos_token),
            ("eos_token", &tokens.eos_token),
            ("pad_token", &tokens.pad_token),
            ("unk_token", &tokens.unk_token),
        ] {
            if let Some(s) = v {
                ctx.insert(key.into(), Json::String(s.clone()));
            }
        }
        let mut out = LimitedOutput {
            buf: Vec::new(),
            exceeded: false,
        };
        let rendered = template
            .render_captured_to(Value::from_serialize(&ctx), &mut out)
            .map(drop);
        if out.exceeded {
            return Err(DatasetError::Template {
                name: self.name.clone(),
                message: format!(
                    "rendering stopped: the output exceeds {} MiB; chat templates come from \
                     model folders and are run with limits",
                    MAX_TEMPLATE_OUTPUT >> 20
                ),
            });
        }
        rendered.map_err(|e| template_err(&self.name, &e))?;
        String::from_utf8(out.buf).map_err(|e| DatasetError::Template {
            name: self.name.clone(),
            message: format!("output is not UTF-8: {e}"),
        })
    }

    /// Renders JSON messages (Hub style `[{role, content}]`) to text, as
    /// `apply_chat_template(messages, tokenize=False)` does.
    pub fn render_messages(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        tokens: &TemplateTokens,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let raw = self.render_raw(messages, tools, tokens, add_generation_prompt)?;
        Ok(raw.replace([GEN_START, GEN_END], ""))
    }

    /// Renders a conversation into segments: text inside `{% generation %}` blocks is
    /// trained, the rest is not.
    pub fn render(
        &self,
        conversation: &Conversation,
        tokens: &TemplateTokens,
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>> {
        let mut messages = Vec::with_capacity(conversation.messages.len() + 1);
        if let Some(s) = &conversation.system {
            messages.push(serde_json::json!({"role": "system", "content": s}));
        }
        for m in &conversation.messages {
            if m.content.contains([GEN_START, GEN_END]) {
                return Err(DatasetError::Conversation(
                    "message content contains the private-use characters U+E000/U+E001".into(),
                ));
            }
            let mut o = Map::new();
            o.insert("role".into(), Json::String(m.role.as_str().into()));
            o.insert("content".into(), Json::String(m.content.clone()));
            for (k, v) in &m.extra {
                o.insert(k.clone(), v.clone());
            }
            messages.push(Json::Object(o));
        }
        let tools = (!conversation.tools.is_empty()).then_some(conversation.tools.as_slice());
        if !self.has_generation_markers() {
            return self.render_by_prefixes(&messages, tools, tokens, add_generation_prompt);
        }
        let raw = self.render_raw(&messages, tools, tokens, add_generation_prompt)?;
        let mut out = Vec::new();
        let mut trained = false;
        let mut current = String::new();
        for c in raw.chars() {
            match c {
                GEN_START | GEN_END => {
                    push_segment(&mut out, &current, trained);
                    current.clear();
                    trained = c == GEN_START;
                }
                _ => current.push(c),
            }
        }
        push_segment(&mut out, &current, trained);
        Ok(out)
    }
}

impl JinjaTemplate {
    /// Segments of a template without `{% generation %}` markers (most Hub templates).
    ///
    /// Each assistant turn's span is found by rendering the conversation up to the turn with
    /// `add_generation_prompt = true` (the prompt the model sees) and up to the end of the turn:
    /// when the first is a prefix of the second, the difference is the model's output (content
    /// plus the template's end-of-turn text) and is trained. This is what a model generates at
    /// inference, so the end-of-turn token is always learned. A template whose renderings are
    /// not prefix-consistent is an error rather than a silently wrong mask.
    fn render_by_prefixes(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        tokens: &TemplateTokens,
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>> {
        let full = self.render_messages(messages, tools, tokens, add_generation_prompt)?;
        let mut out = Vec::new();
        let mut done = 0usize; // bytes of `full` already assigned to segments
        for (i, m) in messages.iter().enumerate() {
            if m.get("role").and_then(Json::as_str) != Some("assistant") {
                continue;
            }
            let prompt = self.render_messages(&messages[..i], tools, tokens, true)?;
            let through = self.render_messages(&messages[..=i], tools, tokens, false)?;
            let consistent =
                through.starts_with(&prompt) && full.starts_with(&through) && prompt.len() >= done;
            if !consistent {
                return Err(DatasetError::Conversation(format!(
                    "chat template `{}` has no {{% generation %}} markers and its renderings of \
                     prefixes of the conversation are not prefixes of each other (turn {i}); \
                     use a preset template (--template NAME)",
                    self.name
                )));
            }
            push_segment(&mut out, &full[done..prompt.len()], false);
            push_segment(&mut out, &through[prompt.len()..], true);
            done = through.len();
        }
        push_segment(&mut out, &full[done..], false);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_matches_json_dumps() {
        let v = serde_json::json!({"b": [1, 2.0, "é\n"], "a": {"x": null, "y": true}, "c": {}});
        assert_eq!(
            python_json(&v, None, false),
            r#"{"b": [1, 2.0, "é\n"], "a": {"x": null, "y": true}, "c": {}}"#
        );
        assert_eq!(
            python_json(&v, Some(2), true),
            "{\n  \"a\": {\n    \"x\": null,\n    \"y\": true\n  },\n  \"b\": [\n    1,\n    2.0,\n    \"é\\n\"\n  ],\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 13:05:09 UTC (a Friday)
        assert_eq!(
            strftime(1_722_000_309, "%d %b %Y %H:%M:%S %a %j"),
            "26 Jul 2024 13:25:09 Fri 208"
        );
        assert_eq!(strftime(0, "%Y-%m-%d %A"), "1970-01-01 Thursday");
        assert_eq!(strftime(951_782_400, "%Y-%m-%d"), "2000-02-29");
    }

    #[test]
    fn generation_tags_are_rewritten_with_modifiers() {
        let s = rewrite_generation_tags("a{%- generation -%}b{% endgeneration %}c{% if x %}");
        assert_eq!(
            s,
            "a{%- filter __lmflow_generation_start %}{% endfilter -%}b{% filter __lmflow_generation_end %}{% endfilter %}c{% if x %}"
        );
    }

    #[test]
    fn untrusted_templates_stop_at_the_fuel_and_output_limits() {
        let messages = [serde_json::json!({"role": "user", "content": "hi"})];
        let tokens = TemplateTokens::default();
        let started = std::time::Instant::now();
        let spin = JinjaTemplate::new(
            "spin",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let err = spin
            .render_messages(&messages, None, &tokens, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`spin`") && err.contains("instructions"),
            "{err}"
        );
        assert!(started.elapsed().as_secs() < 30);
        // 100 x 10 MB: a gigabyte of output.
        let flood = JinjaTemplate::new(
            "flood",
            "{% for i in range(100) %}{{ 'x' * 10000000 }}{% endfor %}",
        )
        .unwrap();
        let err = flood
            .render_messages(&messages, None, &tokens, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`flood`") && err.contains("MiB"), "{err}");
        let fine = JinjaTemplate::new("fine", "{% for m in messages %}{{ m.content }}{% endfor %}")
            .unwrap();
        assert_eq!(
            fine.render_messages(&messages, None, &tokens, false)
                .unwrap(),
            "hi"
        );
    }
}
