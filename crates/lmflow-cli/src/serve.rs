//! `lmflow serve`: an OpenAI-compatible HTTP server (chat and text completions, streaming,
//! models list, health) over the continuous-batching [`Scheduler`] of `lmflow-infer`, with
//! per-request LoRA adapters on one base model. See docs/serving.md.
//!
//! The model lives on one dedicated thread that owns the scheduler: handlers send it
//! [`Command`]s over a channel and receive [`Event`]s over per-request channels, so no tensor
//! work ever runs on the async runtime. A handler that is dropped (client gone) cancels its
//! request, which frees its batch slot and KV cache.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream};
use lmflow_datasets::{Conversation, Message, Role};
use lmflow_infer::{
    Engine, Event, FinishReason, GenerationConfig, GenerationOutput, Request, RequestId,
    ScheduleError, Scheduler, SchedulerConfig, load_model,
};
use lmflow_models::{LoadOptions, Tokenizer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::device::{DeviceKind, resolve};
use crate::generate::{Dtype, chat_prompt};

/// Arguments of `lmflow serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model folder (Hub layout with tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter served under a model name, `NAME=DIR` (repeatable); requests select it
    /// with `"model": "NAME"`.
    #[arg(long = "adapter", value_parser = parse_adapter)]
    adapters: Vec<(String, PathBuf)>,
    /// Name of the base model in requests and /v1/models (default: the folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0: any free port; the bound address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Most sequences waiting for a slot; more are answered 429.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    /// KV cache budget in MiB over all running sequences.
    #[arg(long, default_value_t = 2048)]
    kv_budget_mb: usize,
    /// Chat template: "tokenizer" (the model's own) or a preset name.
    #[arg(long, default_value = "tokenizer")]
    chat_template: String,
    /// Weight dtype.
    #[arg(long, value_enum, default_value_t)]
    dtype: Dtype,
    /// Compute device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
}

fn parse_adapter(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!("expected NAME=DIR, got `{s}`")),
    }
}

/// Work for the model thread.
enum Command {
    /// Queue a request; the answer says whether it was accepted.
    Submit {
        request: Request,
        events: tmpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Result<RequestId, ScheduleError>>,
    },
    /// The client is gone.
    Cancel(RequestId),
}

/// Counters the model thread publishes for /health.
#[derive(Default)]
struct Stats {
    running: AtomicUsize,
    waiting: AtomicUsize,
    cancelled: AtomicUsize,
    completed: AtomicUsize,
}

/// What handlers share.
struct AppState {
    commands: std::sync::Mutex<mpsc::Sender<Command>>,
    tokenizer: Tokenizer,
    base_name: String,
    adapters: Vec<String>,
    context: usize,
    chat_template: String,
    max_waiting: usize,
    stats: Arc<Stats>,
    created: u64,
    next_id: AtomicUsize,
}

type Shared = Arc<AppState>;

/// Runs `lmflow serve`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let base_name = match &args.served_model_name {
        Some(n) => n.clone(),
        None => args
            .model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into()),
    };
    if args.adapters.iter().any(|(n, _)| *n == base_name) {
        bail!("adapter name `{base_name}` is the base model's name");
    }
    let stats = Arc::new(Stats::default());
    let (commands, rx) = mpsc::channel::<Command>();
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<(Tokenizer, usize, Vec<String>)>>();
    let thread_stats = stats.clone();
    let model_args = (
        args.model.clone(),
        args.adapters.clone(),
        args.dtype,
        args.device,
        SchedulerConfig {
            max_batch: args.max_batch.max(1),
            max_waiting: args.max_waiting,
            kv_budget_bytes: Some(args.kv_budget_mb.saturating_mul(1 << 20)),
        },
    );
    let model_thread = std::thread::Builder::new()
        .name("lmflow-model".into())
        .spawn(move || model_thread(model_args, rx, ready_tx, thread_stats))
        .context("starting the model thread")?;
    let (tokenizer, context, adapters) = ready_rx
        .recv()
        .context("the model thread stopped while loading")??;
    let state = Arc::new(AppState {
        commands: std::sync::Mutex::new(commands),
        tokenizer,
        base_name,
        adapters,
        context,
        chat_template: args.chat_template.clone(),
        max_waiting: args.max_waiting,
        stats,
        created: unix_time(),
        next_id: AtomicUsize::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        println!("lmflow serve: listening on http://{addr}");
        use std::io::Write;
        std::io::stdout().flush()?;
        tracing::info!("serving {} on http://{addr}", state.base_name);
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("HTTP server")
    })?;
    drop(runtime);
    let _ = model_thread.join();
    Ok(())
}

type ModelArgs = (
    PathBuf,
    Vec<(String, PathBuf)>,
    Dtype,
    DeviceKind,
    SchedulerConfig,
);

/// Loads the model and runs the scheduler until every command sender is gone.
fn model_thread(
    (model_dir, adapters, dtype, device_kind, config): ModelArgs,
    rx: mpsc::Receiver<Command>,
    ready: mpsc::Sender<anyhow::Result<(Tokenizer, usize, Vec<String>)>>,
    stats: Arc<Stats>,
) {
    let loaded = (|| -> anyhow::Result<(Engine, Tokenizer)> {
        let device = resolve(device_kind)?;
        let dtype = dtype.float();
        let options = LoadOptions {
            dtype: Some(dtype),
            rope_scaling: None,
        };
        let pretrained = load_model(&model_dir, None, &options, &device)
            .with_context(|| format!("loading model {}", model_dir.display()))?;
        let tokenizer = pretrained.tokenizer.clone().with_context(|| {
            format!(
                "{}: no tokenizer.json in the model folder",
                model_dir.display()
            )
        })?;
        let mut engine = Engine::new(pretrained.model, &device)?;
        for (name, dir) in &adapters {
            engine
                .load_adapter(name, dir)
                .with_context(|| format!("loading adapter {name}={}", dir.display()))?;
        }
        Ok((engine, tokenizer))
    })();
    let (engine, tokenizer) = match loaded {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok((
        tokenizer.clone(),
        engine.context_len(),
        engine.adapters().to_vec(),
    )));
    let mut scheduler = Scheduler::new(engine, Some(&tokenizer), config);
    loop {
        let first = if scheduler.is_idle() {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        } else {
            None
        };
        for command in first.into_iter().chain(rx.try_iter()) {
            match command {
                Command::Submit {
                    request,
                    events,
                    reply,
                } => {
                    let sink = Box::new(move |e| events.send(e).is_ok());
                    let _ = reply.send(scheduler.submit(request, sink));
                }
                Command::Cancel(id) => {
                    scheduler.cancel(id);
                }
            }
        }
        let report = scheduler.step();
        stats.running.store(scheduler.running(), Ordering::Relaxed);
        stats.waiting.store(scheduler.waiting(), Ordering::Relaxed);
        stats
            .cancelled
            .store(scheduler.cancelled(), Ordering::Relaxed);
        stats
            .completed
            .fetch_add(report.completed, Ordering::Relaxed);
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                "unknown route",
            )
        })
        .with_state(state)
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        param: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            param,
            code: None,
            message: message.into(),
        }
    }

    fn bad(param: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some(param),
            message,
        )
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        (self.status, axum::Json(body)).into_response()
    }
}

async fn health(State(state): State<Shared>) -> Response {
    let s = &state.stats;
    axum::Json(json!({
        "status": "ok",
        "running": s.running.load(Ordering::Relaxed),
        "waiting": s.waiting.load(Ordering::Relaxed),
        "cancelled": s.cancelled.load(Ordering::Relaxed),
        "completed": s.completed.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn models(State(state): State<Shared>) -> Response {
    let mut data = vec![json!({
        "id": state.base_name, "object": "model", "created": state.created,
        "owned_by": "lmflow", "root": state.base_name, "parent": null,
    })];
    for a in &state.adapters {
        data.push(json!({
            "id": a, "object": "model", "created": state.created,
            "owned_by": "lmflow", "root": a, "parent": state.base_name,
        }));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `stop`: one string or a list.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Deserialize, Debug, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Parameters common to both completion endpoints.
#[derive(Deserialize, Debug)]
struct CommonParams {
    model: Option<String>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<i64>,
    stop: Option<StopField>,
    seed: Option<i64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    /// vLLM extension: do not stop at EOS (benchmarks).
    #[serde(default)]
    ignore_eos: bool,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    echo: Option<bool>,
    best_of: Option<i64>,
    suffix: Option<String>,
    tools: Option<Vec<Value>>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<Value>,
}

#[derive(Deserialize, Debug)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    params: CommonParams,
}

#[derive(Deserialize, Debug)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize, Debug)]
struct CompletionRequest {
    prompt: Value,
    #[serde(flatten)]
    params: CommonParams,
}

/// Parses a JSON body into `T`; malformed JSON or wrong types are a 400.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            format!("invalid request body: {e}"),
        )
    })
}

/// A request checked and translated: what to submit and how to answer.
struct Prepared {
    request: Request,
    model: String,
    stream: bool,
    include_usage: bool,
    stops: Vec<String>,
}

/// Validates the parameters and builds the engine request for `prompt`.
fn prepare(
    state: &AppState,
    params: CommonParams,
    prompt: Vec<u32>,
    chat: bool,
) -> Result<Prepared, ApiError> {
    let unsupported = |param: &'static str| {
        Err(ApiError::bad(
            param,
            format!("`{param}` is not supported by this server"),
        ))
    };
    if params
        .logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && *v != json!(false))
    {
        return unsupported("logprobs");
    }
    if params.top_logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return unsupported("top_logprobs");
    }
    if params.echo == Some(true) {
        return unsupported("echo");
    }
    if params.best_of.is_some_and(|b| b != 1) {
        return unsupported("best_of");
    }
    if params.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return unsupported("suffix");
    }
    if params.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return unsupported("tools");
    }
    if params.presence_penalty.is_some_and(|p| p != 0.0) {
        return unsupported("presence_penalty");
    }
    if params.frequency_penalty.is_some_and(|p| p != 0.0) {
        return unsupported("frequency_penalty");
    }
    if params
        .logit_bias
        .as_ref()
        .is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty()))
    {
        return unsupported("logit_bias");
    }
    let Some(model) = params.model else {
        return Err(ApiError::bad("model", "you must provide a model parameter"));
    };
    let adapter = if model == state.base_name {
        None
    } else if state.adapters.contains(&model) {
        Some(model.clone())
    } else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model"),
            format!("The model `{model}` does not exist"),
        )
        .code("model_not_found"));
    };
    let temperature = params.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad(
            "temperature",
            format!("temperature must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = params.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let n = params.n.unwrap_or(1);
    let most = state.max_waiting.clamp(1, 128) as i64;
    if !(1..=most).contains(&n) {
        // More choices than the queue holds could never be admitted: a 400, not a 429.
        return Err(ApiError::bad(
            "n",
            format!("n must be in [1, {most}], got {n}"),
        ));
    }
    let stops = match params.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stops.len() > 4 || stops.iter().any(String::is_empty) {
        return Err(ApiError::bad(
            "stop",
            "stop must be up to 4 non-empty strings",
        ));
    }
    let seed = match params.seed {
        Some(s) if s >= 0 => s as u64,
        Some(s) => return Err(ApiError::bad("seed", format!("seed must be >= 0, got {s}"))),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    if prompt.is_empty() {
        return Err(ApiError::bad("prompt", "the prompt is empty"));
    }
    if prompt.len() >= state.context {
        return Err(ApiError::bad(
            if chat { "messages" } else { "prompt" },
            format!(
                "This model's maximum context length is {} tokens, but the prompt has {} tokens",
                state.context,
                prompt.len()
            ),
        )
        .code("context_length_exceeded"));
    }
    let room = state.context - prompt.len();
    let max_tokens = match params.max_completion_tokens.or(params.max_tokens) {
        Some(m) if m < 1 => {
            return Err(ApiError::bad(
                "max_tokens",
                format!("max_tokens must be at least 1, got {m}"),
            ));
        }
        Some(m) if m as u64 > room as u64 => {
            return Err(ApiError::bad(
                "max_tokens",
                format!(
                    "This model's maximum context length is {} tokens; the prompt has {} \
                     tokens and max_tokens is {m}",
                    state.context,
                    prompt.len()
                ),
            )
            .code("context_length_exceeded"));
        }
        Some(m) => m as usize,
        // OpenAI's defaults: 16 for completions, the rest of the context for chat.
        None if chat => room,
        None => room.min(16),
    };
    let eos = state.tokenizer.eos_token_ids().to_vec();
    let config = GenerationConfig {
        max_new_tokens: max_tokens,
        do_sample: temperature > 0.0,
        temperature: if temperature > 0.0 { temperature } else { 1.0 },
        top_k: 0,
        top_p,
        num_return_sequences: n as usize,
        seed,
        pad_token_id: state
            .tokenizer
            .pad_token_id()
            .or(eos.first().copied())
            .unwrap_or(0),
        eos_token_ids: if params.ignore_eos { Vec::new() } else { eos },
        stop_strings: stops.clone(),
        ..GenerationConfig::default()
    };
    Ok(Prepared {
        request: Request {
            prompt,
            config,
            adapter,
        },
        model,
        stream: params.stream,
        include_usage: params.stream_options.unwrap_or_default().include_usage,
        stops,
    })
}

fn chat_conversation(messages: Vec<ChatMessage>) -> Result<Conversation, ApiError> {
    let mut system: Option<String> = None;
    let mut turns = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        let content = match m.content {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => text.push_str(t),
                        _ => {
                            return Err(ApiError::bad(
                                "messages",
                                format!("messages[{i}]: only text content parts are supported"),
                            ));
                        }
                    }
                }
                text
            }
            Some(_) => {
                return Err(ApiError::bad(
                    "messages",
                    format!("messages[{i}].content must be a string or a list of text parts"),
                ));
            }
        };
        let role = match m.role.as_str() {
            "system" | "developer" if turns.is_empty() => {
                match &mut system {
                    Some(s) => {
                        s.push('\n');
                        s.push_str(&content);
                    }
                    None => system = Some(content),
                }
                continue;
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" | "function" => Role::Observation,
            other => {
                return Err(ApiError::bad(
                    "messages",
                    format!("messages[{i}]: unsupported role `{other}`"),
                ));
            }
        };
        turns.push(Message {
            role,
            content,
            extra: Default::default(),
        });
    }
    if turns.is_empty() {
        return Err(ApiError::bad("messages", "no user message"));
    }
    Ok(Conversation {
        system,
        tools: Vec::new(),
        messages: turns,
    })
}

async fn chat_completions(State(state): State<Shared>, body: Bytes) -> Response {
    let result = async {
        let req: ChatRequest = parse_body(&body)?;
        let conversation = chat_conversation(req.messages)?;
        let prompt = chat_prompt(&state.tokenizer, &state.chat_template, &conversation)
            .map_err(|e| ApiError::bad("messages", format!("{e:#}")))?;
        let prepared = prepare(&state, req.params, prompt, true)?;
        answer(state.clone(), prepared, Kind::Chat).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(state): State<Shared>, body: Bytes) -> Response {
    let result = async {
        let req: CompletionRequest = parse_body(&body)?;
        let prompt = match &req.prompt {
            Value::String(s) => Some(s.clone()),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().map(str::to_string)
            }
            _ => None,
        };
        let ids = match prompt {
            Some(text) => state
                .tokenizer
                .encode(&text, true)
                .map_err(|e| ApiError::bad("prompt", format!("{e}")))?,
            None => match req.prompt.as_array() {
                Some(a) if !a.is_empty() && a.iter().all(Value::is_u64) => a
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|v| v as u32)
                    .collect(),
                _ => {
                    return Err(ApiError::bad(
                        "prompt",
                        "prompt must be a string, a list of one string, or a list of token ids",
                    ));
                }
            },
        };
        let prepared = prepare(&state, req.params, ids, false)?;
        answer(state.clone(), prepared, Kind::Completion).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Which endpoint answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// Cancels the request on the model thread when dropped before it finished (client gone).
struct CancelGuard {
    state: Shared,
    id: RequestId,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done
            && let Ok(tx) = self.state.commands.lock()
        {
            let _ = tx.send(Command::Cancel(self.id));
        }
    }
}

/// Holds back text that may be the start of a stop string; cuts at the first stop string
/// (OpenAI does not include it in the output).
struct StopFilter {
    stops: Vec<String>,
    text: String,
    sent: usize,
    stopped: bool,
}

impl StopFilter {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds decoded text; returns what can be released now.
    fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.text.push_str(piece);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[self.sent..]
                    .find(s.as_str())
                    .map(|p| p + self.sent)
            })
            .min();
        let end = match first_stop {
            Some(p) => {
                self.stopped = true;
                p
            }
            None => {
                // Longest suffix of the text that is a proper prefix of a stop string.
                let mut hold = 0;
                for s in &self.stops {
                    for k in (1..s.len()).rev() {
                        if k <= self.text.len() - self.sent
                            && s.is_char_boundary(k)
                            && self.text.ends_with(&s[..k])
                        {
                            hold = hold.max(k);
                            break;
                        }
                    }
                }
                self.text.len() - hold
            }
        };
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// Releases what was held back at the end of the sequence.
    fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }
}

fn finish_reason(output: &GenerationOutput) -> &'static str {
    match output.finish_reason {
        FinishReason::Eos | FinishReason::StopString => "stop",
        FinishReason::Length => "length",
    }
}

/// Submits the request to the model thread and answers (streamed or not).
async fn answer(state: Shared, prepared: Prepared, kind: Kind) -> Result<Response, ApiError> {
    let (events, mut rx) = tmpsc::unbounded_channel();
    let (reply, reply_rx) = oneshot::channel();
    let prompt_tokens = prepared.request.prompt.len();
    let n = prepared.request.config.num_return_sequences;
    let server_error = |m: &str| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            m.to_string(),
        )
    };
    state
        .commands
        .lock()
        .map_err(|_| server_error("model thread lock poisoned"))?
        .send(Command::Submit {
            request: prepared.request,
            events,
            reply,
        })
        .map_err(|_| server_error("the model thread has stopped"))?;
    let id = match reply_rx.await {
        Ok(Ok(id)) => id,
        Ok(Err(ScheduleError::QueueFull { limit })) => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                None,
                format!("the server is busy ({limit} sequences waiting); retry later"),
            ));
        }
        Ok(Err(ScheduleError::UnknownAdapter { name })) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                format!("The model `{name}` does not exist"),
            )
            .code("model_not_found"));
        }
        Ok(Err(e @ ScheduleError::ExceedsBudget { .. })) => {
            return Err(ApiError::bad("max_tokens", e.to_string()));
        }
        Ok(Err(ScheduleError::Invalid(e))) => return Err(ApiError::bad("request", e.to_string())),
        Err(_) => return Err(server_error("the model thread has stopped")),
    };
    let guard = CancelGuard {
        state: state.clone(),
        id,
        done: false,
    };
    let serial = state.next_id.fetch_add(1, Ordering::Relaxed);
    let response_id = match kind {
        Kind::Chat => format!("chatcmpl-{serial}"),
        Kind::Completion => format!("cmpl-{serial}"),
    };
    let created = unix_time();
    let filters: Vec<StopFilter> = (0..n)
        .map(|_| StopFilter::new(prepared.stops.clone()))
        .collect();
    if prepared.stream {
        let meta = StreamMeta {
            id: response_id,
            created,
            model: prepared.model,
            kind,
            include_usage: prepared.include_usage,
            prompt_tokens,
        };
        let stream = sse_stream(rx, guard, filters, meta);
        return Ok(Sse::new(stream).into_response());
    }
    let mut guard = guard;
    let mut filters = filters;
    let mut texts = vec![String::new(); n];
    let mut outputs: Vec<Option<GenerationOutput>> = vec![None; n];
    let mut remaining = n;
    while remaining > 0 {
        match rx.recv().await {
            Some(Event::Token { sequence, text, .. }) => {
                texts[sequence].push_str(&filters[sequence].push(&text));
            }
            Some(Event::Finished { sequence, output }) => {
                texts[sequence].push_str(&filters[sequence].finish());
                outputs[sequence] = Some(output);
                remaining -= 1;
            }
            Some(Event::Failed { message }) => return Err(server_error(&message)),
            None => return Err(server_error("the request was dropped")),
        }
    }
    guard.done = true;
    let outputs: Vec<GenerationOutput> = outputs.into_iter().flatten().collect();
    let completion_tokens: usize = outputs.iter().map(|o| o.new_ids.len()).sum();
    let choices: Vec<Value> = outputs
        .iter()
        .zip(texts)
        .enumerate()
        .map(|(i, (o, text))| match kind {
            Kind::Chat => json!({
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish_reason(o),
            }),
            Kind::Completion => json!({
                "index": i,
                "text": text,
                "logprobs": null,
                "finish_reason": finish_reason(o),
            }),
        })
        .collect();
    let object = match kind {
        Kind::Chat => "chat.completion",
        Kind::Completion => "text_completion",
    };
    Ok(axum::Json(json!({
        "id": response_id,
        "object": object,
        "created": created,
        "model": prepared.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response())
}

/// Fixed fields of every chunk of a streamed answer.
struct StreamMeta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    include_usage: bool,
    prompt_tokens: usize,
}

impl StreamMeta {
    fn chunk(&self, choices: Vec<Value>) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        json!({
            "id": self.id, "object": object, "created": self.created,
            "model": self.model, "choices": choices,
        })
    }

    fn choice(&self, index: usize, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => json!({
                "index": index, "text": text.unwrap_or(""), "logprobs": null,
                "finish_reason": finish,
            }),
        }
    }
}

/// State of a streamed answer.
struct StreamState {
    rx: tmpsc::UnboundedReceiver<Event>,
    guard: CancelGuard,
    filters: Vec<StopFilter>,
    meta: StreamMeta,
    remaining: usize,
    completion_tokens: usize,
    /// Chunks ready to send.
    queue: std::collections::VecDeque<String>,
    finished: bool,
}

fn sse_stream(
    rx: tmpsc::UnboundedReceiver<Event>,
    guard: CancelGuard,
    filters: Vec<StopFilter>,
    meta: StreamMeta,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let n = filters.len();
    let mut queue = std::collections::VecDeque::new();
    if meta.kind == Kind::Chat {
        // The first chunk of each choice carries the role, as OpenAI's.
        for i in 0..n {
            queue.push_back(
                meta.chunk(vec![meta.choice(i, Some(""), true, None)])
                    .to_string(),
            );
        }
    }
    let state = StreamState {
        rx,
        guard,
        filters,
        meta,
        remaining: n,
        completion_tokens: 0,
        queue,
        finished: false,
    };
    stream::unfold(state, |mut st| async move {
        loop {
            if let Some(data) = st.queue.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), st));
            }
            if st.finished {
                return None;
            }
            if st.remaining == 0 {
                st.guard.done = true;
                if st.meta.include_usage {
                    let mut usage = st.meta.chunk(Vec::new());
                    usage["usage"] = json!({
                        "prompt_tokens": st.meta.prompt_tokens,
                        "completion_tokens": st.completion_tokens,
                        "total_tokens": st.meta.prompt_tokens + st.completion_tokens,
                    });
                    st.queue.push_back(usage.to_string());
                }
                st.queue.push_back("[DONE]".into());
                st.finished = true;
                continue;
            }
            match st.rx.recv().await {
                Some(Event::Token { sequence, text, .. }) => {
                    let out = st.filters[sequence].push(&text);
                    if !out.is_empty() {
                        let choice = st.meta.choice(sequence, Some(&out), false, None);
                        st.queue.push_back(st.meta.chunk(vec![choice]).to_string());
                    }
                }
                Some(Event::Finished { sequence, output }) => {
                    let out = st.filters[sequence].finish();
                    if !out.is_empty() {
                        let choice = st.meta.choice(sequence, Some(&out), false, None);
                        st.queue.push_back(st.meta.chunk(vec![choice]).to_string());
                    }
                    st.completion_tokens += output.new_ids.len();
                    let text = (st.meta.kind == Kind::Completion).then_some("");
                    let choice =
                        st.meta
                            .choice(sequence, text, false, Some(finish_reason(&output)));
                    st.queue.push_back(st.meta.chunk(vec![choice]).to_string());
                    st.remaining -= 1;
                }
                Some(Event::Failed { message }) => {
                    st.guard.done = true;
                    let err = json!({"error": {"message": message, "type": "server_error",
                        "param": null, "code": null}});
                    st.queue.push_back(err.to_string());
                    st.queue.push_back("[DONE]".into());
                    st.finished = true;
                }
                None => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    fn run(stops: &[&str], pieces: &[&str]) -> String {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out: String = pieces.iter().map(|p| f.push(p)).collect();
        out.push_str(&f.finish());
        out
    }

    #[test]
    fn stop_filter_cuts_at_the_first_stop_and_releases_held_text() {
        assert_eq!(run(&["END"], &["ab", "cE", "N", "Dxx"]), "abc");
        assert_eq!(run(&["END"], &["ab", "cE", "Nx"]), "abcENx");
        assert_eq!(run(&["END"], &["abE"]), "abE");
        assert_eq!(run(&["\n\n", "X"], &["a\n", "b", "X", "c"]), "a\nb");
        assert_eq!(run(&[], &["a", "b"]), "ab");
    }
}
