//! Serving without HTTP: an [`Engine`] (one base model in memory plus named LoRA adapters) and
//! a continuous-batching [`Scheduler`] over it.
//!
//! # How requests are batched
//!
//! - Every sequence is prefilled **alone** (batch 1, no padding) with its own KV cache, so its
//!   first token is exactly what a single-prompt [`Generator`](crate::Generator) produces.
//! - It then joins the running batch of its adapter ("group") between two decode steps. A
//!   group's KV cache holds one row per sequence, **left-padded** to the longest row: row `r`
//!   with `len_r` cached positions occupies the last `len_r` positions of the shared time axis.
//!   Decode steps pass an attention mask hiding each row's padding and explicit positions
//!   (`len_r`), the same ragged-batch scheme as [`Generator`](crate::Generator) (and
//!   `transformers`' left padding). When no row is padded, no mask is passed at all.
//! - Finished (or cancelled) sequences leave the group after the step that finished them: their
//!   rows are dropped and the time axis is trimmed on the left to the longest remaining row, so
//!   memory follows the live sequences.
//! - Adapters: a [`lmflow_peft::Linear`] applies one active adapter, so sequences are grouped
//!   by adapter and each group's decode step runs with its adapter activated (switching only
//!   flips the active name: the base weights exist once, each adapter's low-rank factors once).
//!   Requests for the same adapter are batched together; different adapters cost one forward
//!   pass per group and step.
//!
//! Admission is bounded by `max_batch` running sequences and by a KV budget: a group of `B`
//! rows whose longest reservation (prompt + `max_new_tokens`) is `R` positions never holds more
//! than `B * R * bytes_per_token` bytes, and the sum over groups stays within the budget.
//! Sequences that do not fit wait in a FIFO queue of bounded length; a full queue rejects new
//! requests ([`ScheduleError::QueueFull`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData, s};
use lmflow_models::{CausalLm, ForwardInput, KvCache, Tokenizer};

use crate::config::GenerationConfig;
use crate::error::{InferError, Result};
use crate::generate::{GenerationOutput, SequenceState, choose};
use crate::processors::LogitsPipeline;
use crate::rng::SeededRng;
use crate::stopping::StopCriteria;
use crate::tensor_io::{float_rows, ids_tensor, int_values};

/// One base model in memory with named LoRA adapters that requests select by name.
pub struct Engine {
    model: CausalLm,
    device: Device,
    adapters: Vec<String>,
    /// Index into `adapters` of the adapter active on the model (`None`: base model).
    active: Option<usize>,
    kv_bytes_per_token: usize,
}

impl Engine {
    /// Wraps a loaded model. Adapters already attached to it (e.g. by
    /// [`load_model`](crate::load_model)) are registered under their names; requests without an
    /// adapter run the base model.
    ///
    /// # Errors
    /// A failing one-token probe forward pass (used to size the KV cache per token).
    pub fn new(mut model: CausalLm, device: &Device) -> Result<Self> {
        let adapters = lmflow_peft::inject::adapter_names(&model);
        lmflow_peft::inject::disable_adapters(&mut model);
        let kv_bytes_per_token = probe_kv_bytes(&model, device)?;
        Ok(Self {
            model,
            device: device.clone(),
            adapters,
            active: None,
            kv_bytes_per_token,
        })
    }

    /// Loads the PEFT adapter folder `dir` as adapter `name` (LoRA/DoRA factors only: adapters
    /// with `modules_to_save` would replace base weights for every request and are refused).
    ///
    /// # Errors
    /// A duplicate or empty name, `modules_to_save`, or the adapter's loading errors.
    pub fn load_adapter(&mut self, name: &str, dir: &Path) -> Result<()> {
        if name.is_empty() || self.adapters.iter().any(|a| a == name) {
            return Err(InferError::InvalidConfig {
                field: "adapter",
                reason: format!("adapter name `{name}` is empty or already loaded"),
            });
        }
        let cfg = lmflow_peft::LoraConfig::from_file(&dir.join("adapter_config.json"))?;
        if cfg.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(InferError::InvalidConfig {
                field: "adapter",
                reason: format!(
                    "{}: adapters with modules_to_save replace base weights and cannot be \
                     served next to other adapters; merge it with `lmflow merge` instead",
                    dir.display()
                ),
            });
        }
        lmflow_peft::load_adapter(&mut self.model, dir, name, &self.device)?;
        lmflow_peft::inject::disable_adapters(&mut self.model);
        self.active = None;
        self.adapters.push(name.to_string());
        tracing::info!("loaded adapter {name} from {}", dir.display());
        Ok(())
    }

    /// Names of the loaded adapters.
    pub fn adapters(&self) -> &[String] {
        &self.adapters
    }

    /// The model (with its adapters attached, none active between calls).
    pub fn model(&self) -> &CausalLm {
        &self.model
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Longest sequence (prompt + generated) the model accepts: `max_position_embeddings`.
    pub fn context_len(&self) -> usize {
        self.model.max_position_embeddings()
    }

    /// Bytes of KV cache one position of one sequence takes (all layers, keys and values).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.kv_bytes_per_token
    }

    fn adapter_index(&self, name: &str) -> Option<usize> {
        self.adapters.iter().position(|a| a == name)
    }

    fn activate(&mut self, adapter: Option<usize>) -> Result<()> {
        if self.active == adapter {
            return Ok(());
        }
        match adapter {
            Some(i) => lmflow_peft::inject::set_active_adapter(&mut self.model, &self.adapters[i])?,
            None => lmflow_peft::inject::disable_adapters(&mut self.model),
        }
        self.active = adapter;
        Ok(())
    }

    /// Runs the model and returns the last position's logits `[batch, vocab]`.
    fn last_logits(&self, input: &ForwardInput, cache: &mut KvCache) -> Result<Tensor<2>> {
        let hidden = self.model.forward_hidden(input, Some(cache))?;
        let [batch, seq, _] = hidden.dims();
        let logits = self.model.logits(hidden.slice(s![.., seq - 1..seq, ..]));
        let vocab = logits.dims()[2];
        Ok(logits.reshape([batch, vocab]))
    }
}

/// KV bytes per position: one token through a fresh cache, then the layer shapes it holds.
fn probe_kv_bytes(model: &CausalLm, device: &Device) -> Result<usize> {
    let mut cache = model.new_cache(1);
    model.forward_hidden(
        &ForwardInput::new(ids_tensor(&[vec![0]], device)),
        Some(&mut cache),
    )?;
    let mut bytes = 0;
    for layer in 0..cache.num_layers() {
        if let Some((k, v)) = cache.layer(layer) {
            for t in [k, v] {
                let [_, heads, _, head_dim] = t.dims();
                bytes += heads * head_dim * t.dtype().size();
            }
        }
    }
    Ok(bytes)
}

/// Limits of a [`Scheduler`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences decoded together (over all adapters).
    pub max_batch: usize,
    /// Most sequences waiting for admission; more are rejected with
    /// [`ScheduleError::QueueFull`].
    pub max_waiting: usize,
    /// KV cache budget in bytes over all running sequences (`None`: only `max_batch` bounds).
    pub kv_budget_bytes: Option<usize>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_waiting: 256,
            kv_budget_bytes: None,
        }
    }
}

/// What one request asks for.
#[derive(Clone, Debug)]
pub struct Request {
    /// Prompt token ids (non-empty).
    pub prompt: Vec<u32>,
    /// Decoding settings; `num_return_sequences` sequences are generated (greedy allows more than
    /// one here, giving identical copies), seeded as [`Generator`](crate::Generator) seeds them.
    pub config: GenerationConfig,
    /// Adapter to apply (`None`: the base model).
    pub adapter: Option<String>,
}

/// Identifies a submitted request.
pub type RequestId = u64;

/// Progress of a request, delivered to its [`EventSink`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Sequence `sequence` generated `token`; `text` is the newly completed text (may be empty
    /// while a multi-byte character or word piece is incomplete).
    Token {
        /// Index of the sequence within the request (`0..num_return_sequences`).
        sequence: usize,
        /// The generated id.
        token: u32,
        /// Newly decoded text.
        text: String,
    },
    /// Sequence `sequence` finished.
    Finished {
        /// Index of the sequence within the request.
        sequence: usize,
        /// Its full output (finish reason, ids, text).
        output: GenerationOutput,
    },
    /// The request failed (e.g. a model error); no more events follow.
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// Receives a request's events; returning `false` (the receiver is gone, e.g. the client
/// disconnected) cancels the request and frees its slots.
pub type EventSink = Box<dyn FnMut(Event) -> bool + Send>;

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The waiting queue is full (HTTP 429).
    #[error("the waiting queue is full ({limit} sequences); retry later")]
    QueueFull {
        /// The queue limit.
        limit: usize,
    },
    /// The request names an adapter that is not loaded.
    #[error("unknown adapter `{name}`")]
    UnknownAdapter {
        /// The requested name.
        name: String,
    },
    /// One sequence of the request alone needs more KV cache than the budget.
    #[error("one sequence needs {needed} bytes of KV cache, more than the budget of {budget}")]
    ExceedsBudget {
        /// Bytes one sequence reserves.
        needed: usize,
        /// The budget.
        budget: usize,
    },
    /// Invalid prompt or settings.
    #[error(transparent)]
    Invalid(#[from] InferError),
}

/// What one [`Scheduler::step`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Sequences prefilled and admitted.
    pub admitted: usize,
    /// Tokens generated (prefill first tokens included).
    pub tokens: usize,
    /// Sequences that finished or were cancelled.
    pub retired: usize,
    /// Requests whose every sequence finished.
    pub completed: usize,
}

/// Per-request state shared by its sequences.
struct RequestState {
    config: GenerationConfig,
    pipeline: LogitsPipeline,
    stop: StopCriteria,
    sink: EventSink,
    /// Sequences not finished yet.
    remaining: usize,
    cancelled: bool,
}

/// A sequence waiting for admission.
struct Pending {
    request: RequestId,
    sequence: usize,
    prompt: Vec<u32>,
    rng: SeededRng,
    adapter: Option<usize>,
    reserve: usize,
}

/// A running sequence: one row of its group's cache.
struct Slot<'t> {
    request: RequestId,
    sequence: usize,
    state: SequenceState<'t>,
    /// Positions of this row in the cache (prompt + fed tokens).
    len: usize,
    /// The token to feed next.
    last: u32,
    /// Positions reserved: prompt + `max_new_tokens`.
    reserve: usize,
}

/// Running sequences of one adapter, sharing a left-padded KV cache.
struct Group<'t> {
    adapter: Option<usize>,
    slots: Vec<Slot<'t>>,
    cache: Option<KvCache>,
}

impl Group<'_> {
    fn time_len(&self) -> usize {
        self.cache.as_ref().map_or(0, KvCache::len)
    }

    fn max_reserve(&self) -> usize {
        self.slots.iter().map(|s| s.reserve).max().unwrap_or(0)
    }
}

/// Continuous batching over an [`Engine`]: [`submit`](Scheduler::submit) requests at any time,
/// call [`step`](Scheduler::step) repeatedly; each step admits waiting sequences, decodes one
/// token for every running sequence and retires finished ones. See the module docs.
pub struct Scheduler<'t> {
    engine: Engine,
    tokenizer: Option<&'t Tokenizer>,
    config: SchedulerConfig,
    waiting: VecDeque<Pending>,
    requests: HashMap<RequestId, RequestState>,
    groups: Vec<Group<'t>>,
    next_id: RequestId,
    cancelled: usize,
    completed_since_step: usize,
}

impl<'t> Scheduler<'t> {
    /// A scheduler over `engine`; `tokenizer` decodes streamed text and stop strings.
    pub fn new(engine: Engine, tokenizer: Option<&'t Tokenizer>, config: SchedulerConfig) -> Self {
        Self {
            engine,
            tokenizer,
            config,
            waiting: VecDeque::new(),
            requests: HashMap::new(),
            groups: Vec::new(),
            next_id: 0,
            cancelled: 0,
            completed_since_step: 0,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The limits.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Sequences waiting for admission.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences being decoded.
    pub fn running(&self) -> usize {
        self.groups.iter().map(|g| g.slots.len()).sum()
    }

    /// Requests cancelled so far ([`Scheduler::cancel`] or a gone receiver).
    pub fn cancelled(&self) -> usize {
        self.cancelled
    }

    /// Whether nothing waits or runs.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running() == 0
    }

    /// KV bytes the running sequences may use at most (see the module docs).
    pub fn kv_reserved_bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.slots.len() * g.max_reserve())
            .sum::<usize>()
            * self.engine.kv_bytes_per_token
    }

    /// Queues a request; its events go to `sink` from later [`step`](Scheduler::step)s.
    ///
    /// # Errors
    /// [`ScheduleError`]: invalid settings (as [`GenerationConfig::validate`], plus
    /// `max_new_tokens` ≥ 1 and stop strings needing a tokenizer), an empty prompt or one whose
    /// prompt + `max_new_tokens` exceeds the context, an unknown adapter, a sequence larger than
    /// the KV budget, or a full queue.
    pub fn submit(
        &mut self,
        request: Request,
        sink: EventSink,
    ) -> Result<RequestId, ScheduleError> {
        let config = request.config;
        let n = config.num_return_sequences;
        GenerationConfig {
            num_return_sequences: 1,
            ..config.clone()
        }
        .validate()?;
        let invalid = |field: &'static str, reason: String| {
            ScheduleError::Invalid(InferError::InvalidConfig { field, reason })
        };
        if n == 0 {
            return Err(invalid("num_return_sequences", "must be at least 1".into()));
        }
        if config.max_new_tokens == 0 {
            return Err(invalid("max_new_tokens", "must be at least 1".into()));
        }
        if !config.stop_strings.is_empty() && self.tokenizer.is_none() {
            return Err(invalid(
                "stop_strings",
                "stop strings need a tokenizer to decode the generated text".into(),
            ));
        }
        if request.prompt.is_empty() {
            return Err(InferError::InvalidInput {
                index: 0,
                reason: "empty prompt".into(),
            }
            .into());
        }
        let reserve = request.prompt.len() + config.max_new_tokens;
        let context = self.engine.context_len();
        if reserve > context {
            return Err(InferError::InvalidInput {
                index: 0,
                reason: format!(
                    "prompt ({} tokens) + max_new_tokens ({}) exceeds the model's context of \
                     {context} positions",
                    request.prompt.len(),
                    config.max_new_tokens
                ),
            }
            .into());
        }
        let adapter = match &request.adapter {
            Some(name) => Some(
                self.engine
                    .adapter_index(name)
                    .ok_or_else(|| ScheduleError::UnknownAdapter { name: name.clone() })?,
            ),
            None => None,
        };
        if let Some(budget) = self.config.kv_budget_bytes {
            let needed = reserve * self.engine.kv_bytes_per_token;
            if needed > budget {
                return Err(ScheduleError::ExceedsBudget { needed, budget });
            }
        }
        if self.waiting.len() + n > self.config.max_waiting {
            return Err(ScheduleError::QueueFull {
                limit: self.config.max_waiting,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut master = SeededRng::new(config.seed);
        for sequence in 0..n {
            self.waiting.push_back(Pending {
                request: id,
                sequence,
                prompt: request.prompt.clone(),
                rng: master.fork(),
                adapter,
                reserve,
            });
        }
        self.requests.insert(
            id,
            RequestState {
                pipeline: LogitsPipeline::new(&config),
                stop: StopCriteria::new(
                    config.eos_token_ids.clone(),
                    config.stop_strings.clone(),
                    config.max_new_tokens,
                ),
                config,
                sink,
                remaining: n,
                cancelled: false,
            },
        );
        Ok(id)
    }

    /// Cancels a request: its waiting sequences are dropped now, its running ones at the next
    /// step. Returns whether the request was known.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let Some(state) = self.requests.get_mut(&id) else {
            return false;
        };
        if !state.cancelled {
            self.cancelled += 1;
        }
        state.cancelled = true;
        self.waiting.retain(|p| p.request != id);
        if !self
            .groups
            .iter()
            .any(|g| g.slots.iter().any(|s| s.request == id))
        {
            self.requests.remove(&id);
        }
        true
    }

    /// One scheduling round: admit what fits, decode one token for every running sequence,
    /// retire finished and cancelled ones. Model errors fail the affected requests (their sinks
    /// get [`Event::Failed`]) instead of stopping the scheduler.
    pub fn step(&mut self) -> StepReport {
        let mut report = StepReport::default();
        self.admit(&mut report);
        for g in 0..self.groups.len() {
            if self.groups[g].slots.is_empty() {
                continue;
            }
            if let Err(e) = self.decode_group(g, &mut report) {
                let message = e.to_string();
                tracing::error!("decode step failed: {message}");
                let ids: HashSet<RequestId> =
                    self.groups[g].slots.iter().map(|s| s.request).collect();
                for id in ids {
                    self.fail(id, &message);
                }
            }
        }
        self.retire(&mut report);
        report.completed = std::mem::take(&mut self.completed_since_step);
        report
    }

    /// Submits `requests` (bypassing nothing: they must fit the queue) and steps until all are
    /// done; returns each request's outputs in sequence order.
    ///
    /// # Errors
    /// A rejected submission or a failed request.
    pub fn run(
        &mut self,
        requests: Vec<Request>,
    ) -> Result<Vec<Vec<GenerationOutput>>, ScheduleError> {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Event)>();
        let mut counts = Vec::with_capacity(requests.len());
        for (i, request) in requests.into_iter().enumerate() {
            counts.push(request.config.num_return_sequences);
            let tx = tx.clone();
            self.submit(request, Box::new(move |e| tx.send((i, e)).is_ok()))?;
        }
        drop(tx);
        while !self.is_idle() {
            self.step();
        }
        let mut outputs: Vec<Vec<Option<GenerationOutput>>> =
            counts.iter().map(|&n| vec![None; n]).collect();
        for (i, event) in rx.try_iter() {
            match event {
                Event::Finished { sequence, output } => outputs[i][sequence] = Some(output),
                Event::Failed { message } => {
                    return Err(InferError::InvalidInput {
                        index: i,
                        reason: message,
                    }
                    .into());
                }
                Event::Token { .. } => {}
            }
        }
        outputs
            .into_iter()
            .enumerate()
            .map(|(i, seqs)| {
                seqs.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
                    InferError::InvalidInput {
                        index: i,
                        reason: "a sequence did not finish".into(),
                    }
                    .into()
                })
            })
            .collect()
    }

    /// Sends an event; a gone receiver cancels the request.
    fn emit(&mut self, id: RequestId, event: Event) {
        if let Some(state) = self.requests.get_mut(&id)
            && !state.cancelled
            && !(state.sink)(event)
        {
            tracing::debug!(id, "receiver gone: cancelling request");
            self.cancel(id);
        }
    }

    fn fail(&mut self, id: RequestId, message: &str) {
        self.emit(
            id,
            Event::Failed {
                message: message.to_string(),
            },
        );
        self.cancel(id);
    }

    /// Prefills waiting sequences that fit, each alone, and merges them into their groups.
    fn admit(&mut self, report: &mut StepReport) {
        let mut joined: Vec<(Slot<'t>, KvCache, Option<usize>)> = Vec::new();
        while let Some(front) = self.waiting.front() {
            let running = self.running() + joined.len();
            if running >= self.config.max_batch.max(1) {
                break;
            }
            if let Some(budget) = self.config.kv_budget_bytes
                && running > 0
                && self.reserved_with(&joined, front.adapter, front.reserve) > budget
            {
                break;
            }
            let Some(pending) = self.waiting.pop_front() else {
                break;
            };
            let id = pending.request;
            match self.prefill(pending, report) {
                Ok(Some((slot, cache, adapter))) => joined.push((slot, cache, adapter)),
                Ok(None) => {}
                Err(e) => self.fail(id, &e.to_string()),
            }
        }
        // Sequences whose request was cancelled while prefilling others never join.
        joined.retain(|(slot, _, _)| {
            self.requests
                .get(&slot.request)
                .is_some_and(|r| !r.cancelled)
        });
        let mut by_group: HashMap<Option<usize>, Vec<(Slot<'t>, KvCache)>> = HashMap::new();
        for (slot, cache, adapter) in joined {
            by_group.entry(adapter).or_default().push((slot, cache));
        }
        for (adapter, rows) in by_group {
            let g = match self.groups.iter().position(|g| g.adapter == adapter) {
                Some(g) => g,
                None => {
                    self.groups.push(Group {
                        adapter,
                        slots: Vec::new(),
                        cache: None,
                    });
                    self.groups.len() - 1
                }
            };
            let ids: Vec<RequestId> = rows.iter().map(|(s, _)| s.request).collect();
            if let Err(e) = append_rows(&mut self.groups[g], rows) {
                for id in ids {
                    self.fail(id, &e.to_string());
                }
            }
        }
    }

    /// The KV reservation if a sequence of `reserve` positions joined `adapter`'s group, with
    /// `joined` admitted this round.
    fn reserved_with(
        &self,
        joined: &[(Slot<'t>, KvCache, Option<usize>)],
        adapter: Option<usize>,
        reserve: usize,
    ) -> usize {
        let mut per_group: HashMap<Option<usize>, (usize, usize)> = HashMap::new();
        for g in &self.groups {
            let e = per_group.entry(g.adapter).or_default();
            e.0 += g.slots.len();
            e.1 = e.1.max(g.max_reserve());
        }
        for (slot, _, a) in joined {
            let e = per_group.entry(*a).or_default();
            e.0 += 1;
            e.1 = e.1.max(slot.reserve);
        }
        let e = per_group.entry(adapter).or_default();
        e.0 += 1;
        e.1 = e.1.max(reserve);
        per_group.values().map(|(rows, r)| rows * r).sum::<usize>() * self.engine.kv_bytes_per_token
    }

    /// Prefills one sequence alone; returns its slot and cache unless it already finished.
    #[allow(clippy::type_complexity)]
    fn prefill(
        &mut self,
        pending: Pending,
        report: &mut StepReport,
    ) -> Result<Option<(Slot<'t>, KvCache, Option<usize>)>> {
        let Some(request) = self.requests.get(&pending.request) else {
            return Ok(None);
        };
        if request.cancelled {
            return Ok(None);
        }
        self.engine.activate(pending.adapter)?;
        let device = self.engine.device.clone();
        let mut cache = self.engine.model.new_cache(pending.reserve);
        let row: Vec<i64> = pending.prompt.iter().map(|&t| i64::from(t)).collect();
        let input = ForwardInput::new(ids_tensor(&[row], &device));
        let logits = self.engine.last_logits(&input, &mut cache)?;
        let len = pending.prompt.len();
        let mut slot = Slot {
            request: pending.request,
            sequence: pending.sequence,
            state: SequenceState::new(0, pending.prompt, pending.rng, self.tokenizer),
            len,
            last: 0,
            reserve: pending.reserve,
        };
        report.admitted += 1;
        let token = pick_tokens(logits, std::slice::from_mut(&mut slot), &self.requests)?[0];
        let done = self.push_token(&mut slot, token)?;
        report.tokens += 1;
        if done {
            report.retired += 1;
            Ok(None)
        } else {
            Ok(Some((slot, cache, pending.adapter)))
        }
    }

    /// Appends `token` to the slot's sequence, emits its events; returns whether it finished.
    fn push_token(&mut self, slot: &mut Slot<'t>, token: u32) -> Result<bool> {
        let Some(request) = self.requests.get(&slot.request) else {
            return Ok(true);
        };
        let stop = request.stop.clone();
        let mut text = String::new();
        slot.state
            .push(slot.sequence, token, &stop, &mut |_, piece| {
                text.push_str(piece)
            })?;
        slot.last = token;
        self.emit(
            slot.request,
            Event::Token {
                sequence: slot.sequence,
                token,
                text,
            },
        );
        if slot.state.finished.is_none() {
            return Ok(false);
        }
        let state = std::mem::replace(
            &mut slot.state,
            SequenceState::new(0, Vec::new(), SeededRng::new(0), None),
        );
        let output = state.into_output(self.tokenizer)?;
        self.emit(
            slot.request,
            Event::Finished {
                sequence: slot.sequence,
                output,
            },
        );
        if let Some(r) = self.requests.get_mut(&slot.request) {
            r.remaining = r.remaining.saturating_sub(1);
            if r.remaining == 0 {
                self.requests.remove(&slot.request);
                self.completed_since_step += 1;
            }
        }
        Ok(true)
    }

    /// One decode step of group `g`.
    fn decode_group(&mut self, g: usize, report: &mut StepReport) -> Result<()> {
        let adapter = self.groups[g].adapter;
        self.engine.activate(adapter)?;
        let device = self.engine.device.clone();
        let group = &mut self.groups[g];
        let width = group.time_len();
        let ids: Vec<Vec<i64>> = group
            .slots
            .iter()
            .map(|s| vec![i64::from(s.last)])
            .collect();
        let mut input = ForwardInput::new(ids_tensor(&ids, &device));
        if group.slots.iter().any(|s| s.len != width) {
            let mask: Vec<Vec<i64>> = group
                .slots
                .iter()
                .map(|s| {
                    let mut row = vec![0i64; width - s.len];
                    row.resize(width + 1, 1);
                    row
                })
                .collect();
            let positions: Vec<Vec<i64>> = group.slots.iter().map(|s| vec![s.len as i64]).collect();
            input = input
                .with_attention_mask(ids_tensor(&mask, &device))
                .with_position_ids(ids_tensor(&positions, &device));
        }
        let cache = group
            .cache
            .as_mut()
            .ok_or_else(|| InferError::InvalidInput {
                index: 0,
                reason: "running group without a cache".into(),
            })?;
        let logits = self.engine.last_logits(&input, cache)?;
        let tokens = pick_tokens(logits, &mut self.groups[g].slots, &self.requests)?;
        let mut slots = std::mem::take(&mut self.groups[g].slots);
        for (slot, token) in slots.iter_mut().zip(tokens) {
            slot.len += 1;
            if slot.state.finished.is_some() {
                continue;
            }
            if self.requests.get(&slot.request).is_none_or(|r| r.cancelled) {
                continue;
            }
            if let Err(e) = self.push_token(slot, token) {
                self.fail(slot.request, &e.to_string());
            }
            report.tokens += 1;
        }
        self.groups[g].slots = slots;
        Ok(())
    }

    /// Drops finished and cancelled rows from every group.
    fn retire(&mut self, report: &mut StepReport) {
        for g in 0..self.groups.len() {
            let keep: Vec<bool> = self.groups[g]
                .slots
                .iter()
                .map(|s| {
                    s.state.finished.is_none()
                        && self.requests.get(&s.request).is_some_and(|r| !r.cancelled)
                })
                .collect();
            let dropped = keep.iter().filter(|k| !**k).count();
            if dropped == 0 {
                continue;
            }
            report.retired += dropped;
            if let Err(e) = retain_rows(&mut self.groups[g], &keep) {
                let ids: HashSet<RequestId> =
                    self.groups[g].slots.iter().map(|s| s.request).collect();
                self.groups[g].slots.clear();
                self.groups[g].cache = None;
                for id in ids {
                    self.fail(id, &e.to_string());
                }
            }
        }
        // Requests cancelled with rows running are forgotten once their rows are gone.
        let running: HashSet<RequestId> = self
            .groups
            .iter()
            .flat_map(|g| g.slots.iter().map(|s| s.request))
            .collect();
        let waiting: HashSet<RequestId> = self.waiting.iter().map(|p| p.request).collect();
        self.requests
            .retain(|id, r| !r.cancelled || running.contains(id) || waiting.contains(id));
        self.groups.retain(|g| !g.slots.is_empty());
    }
}

/// Picks each row's next token from its logits `[rows, vocab]` with its request's settings
/// (argmax on the device when every row decodes greedily with an identity pipeline).
fn pick_tokens(
    logits: Tensor<2>,
    slots: &mut [Slot<'_>],
    requests: &HashMap<RequestId, RequestState>,
) -> Result<Vec<u32>> {
    let greedy_on_device = slots.iter().all(|s| {
        requests
            .get(&s.request)
            .is_none_or(|r| r.pipeline.is_identity_for_greedy())
    });
    if greedy_on_device {
        return int_values(logits.argmax(1), "next tokens");
    }
    let mut rows = float_rows(logits, "logits")?;
    Ok(slots
        .iter_mut()
        .zip(rows.iter_mut())
        .map(|(slot, scores)| match requests.get(&slot.request) {
            Some(r) => choose(&r.pipeline, &r.config, scores, &mut slot.state),
            None => 0,
        })
        .collect())
}

/// Drops the rows of `group` whose `keep` is false and trims the shared time axis on the left
/// to the longest remaining row.
fn retain_rows(group: &mut Group<'_>, keep: &[bool]) -> Result<()> {
    let kept: Vec<usize> = (0..keep.len()).filter(|&i| keep[i]).collect();
    let mut slots = std::mem::take(&mut group.slots);
    let mut i = 0;
    slots.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    group.slots = slots;
    let Some(cache) = group.cache.take() else {
        return Ok(());
    };
    if kept.is_empty() {
        return Ok(());
    }
    let width = cache.len();
    let new_width = group.slots.iter().map(|s| s.len).max().unwrap_or(0);
    let rows: Vec<i64> = kept.iter().map(|&r| r as i64).collect();
    let first = cache
        .layer(0)
        .ok_or_else(|| InferError::InvalidInput {
            index: 0,
            reason: "running group with an empty cache".into(),
        })?
        .0;
    let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [kept.len()]), &first.device());
    let mut layers = Vec::with_capacity(cache.num_layers());
    for l in 0..cache.num_layers() {
        let (k, v) = cache.layer(l).ok_or_else(|| InferError::InvalidInput {
            index: l,
            reason: "KV cache layer missing".into(),
        })?;
        let pick = |t: Tensor<4>| {
            t.select(0, index.clone())
                .slice(s![.., .., width - new_width..width, ..])
        };
        layers.push((pick(k), pick(v)));
    }
    group.cache = Some(KvCache::from_layers(layers, group.max_reserve())?);
    Ok(())
}

/// Left-pads `t` `[batch, heads, len, dim]` with zeros to `width` positions.
fn pad_left(t: Tensor<4>, width: usize) -> Tensor<4> {
    let [b, h, len, d] = t.dims();
    if len >= width {
        return t;
    }
    let zeros = Tensor::zeros([b, h, width - len, d], (&t.device(), t.dtype()));
    Tensor::cat(vec![zeros, t], 2)
}

/// Adds prefilled sequences (each with its own batch-1 cache) to `group`, left-padding every
/// row to the longest.
fn append_rows<'t>(group: &mut Group<'t>, rows: Vec<(Slot<'t>, KvCache)>) -> Result<()> {
    let old = group.cache.take();
    let width = rows
        .iter()
        .map(|(s, _)| s.len)
        .chain(old.as_ref().map(KvCache::len))
        .max()
        .unwrap_or(0);
    let num_layers = rows
        .first()
        .map(|(_, c)| c.num_layers())
        .or(old.as_ref().map(KvCache::num_layers))
        .unwrap_or(0);
    let mut layers = Vec::with_capacity(num_layers);
    for l in 0..num_layers {
        let mut keys = Vec::with_capacity(rows.len() + 1);
        let mut values = Vec::with_capacity(rows.len() + 1);
        for cache in old.iter().chain(rows.iter().map(|(_, c)| c)) {
            let (k, v) = cache.layer(l).ok_or_else(|| InferError::InvalidInput {
                index: l,
                reason: "KV cache layer missing".into(),
            })?;
            keys.push(pad_left(k, width));
            values.push(pad_left(v, width));
        }
        layers.push((Tensor::cat(keys, 0), Tensor::cat(values, 0)));
    }
    group.slots.extend(rows.into_iter().map(|(s, _)| s));
    group.cache = Some(KvCache::from_layers(layers, group.max_reserve())?);
    Ok(())
}
