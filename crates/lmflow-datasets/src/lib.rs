//! # lmflow-datasets
//!
//! LMFlow's dataset formats, chat templates, loss masks, packing and batching:
//!
//! - [`format`](mod@format): the instance types (`text_only`, `text2text`, `conversation`, paired and
//!   list types, `float_only`) parsed with errors naming file, instance and field;
//! - [`reader`]: LMFlow JSON files, folders of them, streaming JSON Lines; deterministic
//!   shuffling and train/validation splits;
//! - [`template`]: LMFlow's preset chat templates and Jinja `chat_template`s (rendered like
//!   `transformers`' `apply_chat_template`, `{% generation %}` included) into segments that
//!   know whether they are trained;
//! - [`tokenize`]: token ids and labels per format, truncation that reports what it cut;
//! - [`packing`]: best-fit packing with restarting positions and segment ids;
//! - [`batch`]: Burn tensors ([`batch::Batch`]) and a preference-pair collator;
//! - [`inspect`](mod@inspect): the library side of `lmflow data inspect` / `lmflow data stats`;
//! - [`multimodal`]: LLaVA-style image processing, `<image>` expansion and image datasets.
//!
//! See `docs/datasets.md` for the formats and masking rules.
//!
//! # Example
//!
//! ```
//! use lmflow_datasets::format::{Conversation, Message, Role};
//! use lmflow_datasets::template::{ChatTemplate, TemplateTokens};
//!
//! let conversation = Conversation {
//!     system: None,
//!     tools: vec![],
//!     messages: vec![
//!         Message { role: Role::User, content: "Hi".into(), extra: Default::default() },
//!         Message { role: Role::Assistant, content: "Hello!".into(), extra: Default::default() },
//!     ],
//! };
//! let template = ChatTemplate::preset("chatml")?;
//! let segments = template.render(&conversation, &TemplateTokens::default(), false)?;
//! let trained: String = segments.iter().filter(|s| s.trained).map(|s| s.text.as_str()).collect();
//! assert_eq!(trained, "Hello!<|im_end|>\n");
//! # Ok::<(), lmflow_datasets::DatasetError>(())
//! ```

pub mod batch;
pub mod error;
pub mod format;
pub mod inspect;
pub mod multimodal;
pub mod packing;
pub mod reader;
pub mod template;
pub mod tokenize;

pub use batch::{Batch, PairedBatch};
pub use error::{DatasetError, Result};
pub use format::{Conversation, DatasetType, Instance, Message, Role};
pub use inspect::{DatasetStats, InspectOptions, InspectedSample, inspect, stats};
pub use reader::{Dataset, JsonlStream, ReadOptions, read_dataset};
pub use template::{ChatTemplate, Segment, TemplateTokens};
pub use tokenize::{
    IGNORE_INDEX, SampleEncoder, TokenizeConfig, TokenizedPair, TokenizedSample, split_into_blocks,
};
