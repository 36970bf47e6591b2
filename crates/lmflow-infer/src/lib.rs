//! # lmflow-infer
//!
//! Text generation for the models of `lmflow-models`: prefill plus incremental decoding with a
//! preallocated KV cache, ragged batches (left padding as `transformers`' `generate`), greedy
//! and seeded sampling with transformers' logits processors (temperature, top-k, top-p, min-p,
//! repetition penalty, `min_new_tokens`), EOS / stop-string stopping, streaming, speculative
//! decoding with a draft model, and evaluation helpers (sliding-window perplexity, accuracy).
//!
//! The model-independent parts are pure functions usable on their own:
//!
//! ```
//! use lmflow_infer::{GenerationConfig, LogitsPipeline, SeededRng, sampler};
//!
//! let config = GenerationConfig { do_sample: true, temperature: 0.7, top_k: 2, ..GenerationConfig::default() };
//! let pipeline = LogitsPipeline::new(&config);
//! let mut scores = vec![1.0f32, 3.0, 2.0, -1.0];
//! pipeline.apply(&mut scores, &[], 0);
//! assert_eq!(scores[0], f32::NEG_INFINITY); // top-k removed the two least likely
//! let mut rng = SeededRng::new(config.seed);
//! let token = sampler::sample(&scores, &mut rng);
//! assert!(token == 1 || token == 2);
//! ```
//!
//! See `docs/inference.md` for the command-line tools and the support matrix.

pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod generate;
pub mod loading;
pub mod processors;
pub mod rng;
pub mod sampler;
pub mod speculative;
pub mod speculative_math;
pub mod stopping;
pub mod tensor_io;

pub use config::GenerationConfig;
pub use engine::{
    Engine, Event, EventSink, Request, RequestId, ScheduleError, Scheduler, SchedulerConfig,
    StepReport,
};
pub use error::{InferError, Result};
pub use generate::{GenerationOutput, Generator, StreamCallback};
pub use loading::{load_model, parse_rope_scaling};
pub use processors::LogitsPipeline;
pub use rng::SeededRng;
pub use speculative::{SpeculativeGenerator, SpeculativeStats};
pub use stopping::{FinishReason, StopCriteria};
