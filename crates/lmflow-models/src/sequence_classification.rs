//! Sequence classification and reward models: a decoder with a linear `score` head read at the
//! last non-padding token, the layout of `transformers`' `*ForSequenceClassification`
//! (`LlamaForSequenceClassification`, `Qwen2ForSequenceClassification`,
//! `GPT2ForSequenceClassification`, `OPTForSequenceClassification`, ...). A reward model is one
//! with `num_labels = 1`.
//!
//! Checkpoint layout (what `transformers` saves): the base model's tensors under the same names
//! as in the causal LM (`model.*` for the LLaMA family, `transformer.*` for GPT-2,
//! `model.decoder.*` for OPT) without `lm_head`, plus `score.weight` `[num_labels, hidden]`
//! (no bias). `config.json` names the class in `architectures`, the labels in
//! `id2label`/`label2id` (their count is `num_labels`) and the padding token in `pad_token_id`.
//!
//! The pooled position is found as `transformers` finds it: the rightmost token whose id is not
//! `pad_token_id` (so left and right padding both work, and a row made only of padding reads
//! position 0); without `pad_token_id`, the last position, and only batches of one row are
//! accepted ([`last_non_pad_positions`]).
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use lmflow_models::{ForwardInput, ModelConfig, SequenceClassifier};
//!
//! let device = Device::flex();
//! let config = ModelConfig::from_json(
//!     serde_json::json!({
//!         "model_type": "llama", "vocab_size": 32, "hidden_size": 16,
//!         "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
//!         "pad_token_id": 0
//!     }),
//!     "config.json".as_ref(),
//! )?;
//! let model = SequenceClassifier::from_config(&config, 1, &device)?;
//! // Right padding: the second row is scored at its token 2 (position 1).
//! let ids = Tensor::<2, Int>::from_ints([[5, 6, 7], [8, 9, 0]], &device);
//! let rewards = model.rewards(&ForwardInput::new(ids))?;
//! assert_eq!(rewards.dims(), [2]);
//! # Ok::<(), lmflow_models::ModelError>(())
//! ```

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, FloatDType, Int, Tensor, TensorData};
use lmflow_peft::{Linear, LinearVisitor};
use serde_json::{Value, json};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::hub::{
    EmbeddingPaths, HubModule, HubPath, LinearPaths, ParamSlot, TensorVisitor, WeightLayout,
    visit_infallible,
};
use crate::model::{CausalLm, ForwardInput, LoadOptions, copy_tokenizer_files, model_type_row};
use crate::tokenizer::Tokenizer;
use crate::weights::{SINGLE_FILE, WeightSource};

/// Module path (and tensor prefix) of the classification head.
pub const SCORE: &str = "score";

/// The `transformers` class of a sequence classifier over `model_type`, as written to
/// `config.json`'s `architectures` (`None` for a `model_type` this crate does not build).
pub fn sequence_classification_class(model_type: &str) -> Option<&'static str> {
    Some(match model_type {
        "llama" => "LlamaForSequenceClassification",
        "mistral" => "MistralForSequenceClassification",
        "ministral" => "MinistralForSequenceClassification",
        "qwen2" => "Qwen2ForSequenceClassification",
        "qwen3" => "Qwen3ForSequenceClassification",
        "gpt2" => "GPT2ForSequenceClassification",
        "opt" => "OPTForSequenceClassification",
        _ => return None,
    })
}

/// The number of labels a `config.json` declares: the size of `id2label` when present (as
/// `transformers` derives `num_labels`), else the `num_labels` key, else `None`.
///
/// # Errors
/// [`ModelError::Config`] when `id2label` is not an object or `num_labels` not an integer.
pub fn declared_num_labels(config: &ModelConfig) -> Result<Option<usize>, ModelError> {
    match config.get("id2label") {
        Some(Value::Object(map)) => Ok(Some(map.len())),
        Some(other) => Err(ModelError::config(
            &config.path,
            "id2label",
            format!("expected an object mapping label ids to names, found {other}"),
        )),
        None => config.usize_opt("num_labels"),
    }
}

/// For each row of `ids` (`[batch, seq]`, row-major), the position the head reads, exactly as
/// `transformers`: with a padding id, `argmax(arange(seq) * (ids != pad))`, i.e. the rightmost
/// non-padding token (position 0 for a row of padding only); without one, `seq - 1`.
///
/// # Errors
/// [`ModelError::Input`] for more than one row without a padding id (`transformers` refuses
/// them too: the end of each row is unknown), or when `ids.len() != batch * seq`.
pub fn last_non_pad_positions(
    ids: &[i64],
    batch: usize,
    seq: usize,
    pad_token_id: Option<u32>,
) -> Result<Vec<usize>, ModelError> {
    if ids.len() != batch * seq || seq == 0 {
        return Err(ModelError::Input(format!(
            "input_ids hold {} values, expected batch {batch} x seq {seq} (seq > 0)",
            ids.len()
        )));
    }
    match pad_token_id {
        None if batch != 1 => Err(ModelError::Input(
            "cannot find the last token of each row of a batch of more than one row without \
             a padding token: set pad_token_id in config.json (or score one sample at a time)"
                .into(),
        )),
        None => Ok(vec![seq - 1]),
        Some(pad) => Ok(ids
            .chunks(seq)
            .map(|row| {
                row.iter()
                    .rposition(|&id| id != i64::from(pad))
                    .unwrap_or(0)
            })
            .collect()),
    }
}

/// A decoder with a `score` head: `transformers`' `*ForSequenceClassification`.
///
/// The head is held as the decoder's output projection: [`SequenceClassifier::model`] is a
/// [`CausalLm`] whose `lm_head` is the `score` layer (`[num_labels, hidden]`), so its
/// [`CausalLm::logits`] are classification logits at every position, and anything written for
/// `&CausalLm` (training objectives, LoRA injection with `modules_to_save = ["lm_head"]`)
/// works on a classifier. Under Hub names ([`HubModule`], [`LinearVisitor`], saving) the head
/// is `score`.
#[derive(Module, Debug)]
pub struct SequenceClassifier {
    /// The decoder; its `lm_head` is the `score` head.
    pub model: CausalLm,
    /// The padding id used to find each row's last token ([`last_non_pad_positions`]).
    #[module(skip)]
    pub pad_token_id: Option<u32>,
}

/// The output projection of a decoder (`None` when tied to the embedding).
fn head_of(model: &CausalLm) -> Option<&Linear> {
    match model {
        CausalLm::Llama(m) => m.lm_head.as_ref(),
        CausalLm::Gpt2(m) => m.lm_head.as_ref(),
        CausalLm::Opt(m) => m.lm_head.as_ref(),
    }
}

/// Replaces the output projection of a decoder by `head`.
fn with_head(mut model: CausalLm, head: Linear) -> CausalLm {
    match &mut model {
        CausalLm::Llama(m) => m.lm_head = Some(head),
        CausalLm::Gpt2(m) => m.lm_head = Some(head),
        CausalLm::Opt(m) => m.lm_head = Some(head),
    }
    model
}

/// A `score` head `[num_labels, hidden]` drawn from `N(0, std)` (`transformers`' init of a new
/// head: `initializer_range`, default 0.02).
fn new_head(num_labels: usize, hidden: usize, std: f64, device: &Device) -> Linear {
    Linear::from_tensors(
        Tensor::random([num_labels, hidden], Distribution::Normal(0.0, std), device),
        None,
    )
}

/// A decoder without output projection (so that loading reads no `lm_head`).
fn without_head(mut model: CausalLm) -> CausalLm {
    match &mut model {
        CausalLm::Llama(m) => m.lm_head = None,
        CausalLm::Gpt2(m) => m.lm_head = None,
        CausalLm::Opt(m) => m.lm_head = None,
    }
    model
}

fn pad_from_config(config: &ModelConfig) -> Result<Option<u32>, ModelError> {
    Ok(config.usize_opt("pad_token_id")?.map(|p| p as u32))
}

impl SequenceClassifier {
    /// A randomly initialised classifier with `num_labels` outputs (backbone as
    /// [`CausalLm::from_config`], head `N(0, initializer_range)`), reading `pad_token_id` from
    /// `config`.
    ///
    /// # Errors
    /// As [`CausalLm::from_config`]; [`ModelError::Config`] for `num_labels == 0`.
    pub fn from_config(
        config: &ModelConfig,
        num_labels: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        if num_labels == 0 {
            return Err(ModelError::config(
                &config.path,
                "num_labels",
                "a classifier needs at least one label",
            ));
        }
        let backbone = CausalLm::from_config(config, device)?;
        let std = config.f64_opt("initializer_range")?.unwrap_or(0.02);
        let score = new_head(num_labels, backbone.hidden_size(), std, device);
        Ok(Self {
            model: with_head(backbone, score),
            pad_token_id: pad_from_config(config)?,
        })
    }

    /// A classifier from a decoder whose `lm_head` is the `score` head (e.g. the model a
    /// training loop returns).
    ///
    /// # Errors
    /// [`ModelError::Input`] when the decoder has no separate head (tied embeddings).
    pub fn from_model(model: CausalLm, pad_token_id: Option<u32>) -> Result<Self, ModelError> {
        if head_of(&model).is_none() {
            return Err(ModelError::Input(
                "a sequence classifier needs a score head; this decoder's output projection is \
                 tied to its embedding"
                    .into(),
            ));
        }
        Ok(Self {
            model,
            pad_token_id,
        })
    }

    /// The `score` head (`None` only if [`SequenceClassifier::model`] was replaced by a decoder
    /// with tied embeddings).
    pub fn score(&self) -> Option<&Linear> {
        head_of(&self.model)
    }

    /// Number of outputs (`score` rows).
    pub fn num_labels(&self) -> usize {
        head_of(&self.model).map_or(0, |h| h.dims().1)
    }

    /// Sets the padding id used to find each row's last token.
    pub fn with_pad_token_id(mut self, pad_token_id: Option<u32>) -> Self {
        self.pad_token_id = pad_token_id;
        self
    }

    /// The positions the head reads for `input_ids` ([`last_non_pad_positions`]).
    ///
    /// # Errors
    /// As [`last_non_pad_positions`].
    pub fn pooled_positions(&self, input_ids: &Tensor<2, Int>) -> Result<Vec<usize>, ModelError> {
        let [b, s] = input_ids.dims();
        let ids: Vec<i64> = input_ids
            .to_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| ModelError::Input(format!("input_ids: {e:?}")))?;
        last_non_pad_positions(&ids, b, s, self.pad_token_id)
    }

    /// Classification logits at each row's last non-padding token.
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]` -> `[batch, num_labels]`
    ///
    /// # Errors
    /// As [`CausalLm::forward`] and [`last_non_pad_positions`]; [`ModelError::Input`] when
    /// the decoder has no head.
    pub fn forward(&self, input: &ForwardInput) -> Result<Tensor<2>, ModelError> {
        if head_of(&self.model).is_none() {
            return Err(ModelError::Input("the classifier has no score head".into()));
        }
        let positions = self.pooled_positions(&input.input_ids)?;
        let hidden = self.model.forward_hidden(input, None)?;
        Ok(pool_and_score(&self.model, hidden, &positions))
    }

    /// The scalar reward of each row (`num_labels` must be 1).
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]` -> `[batch]`
    ///
    /// # Errors
    /// [`ModelError::Input`] when the model has more than one label; as
    /// [`SequenceClassifier::forward`].
    pub fn rewards(&self, input: &ForwardInput) -> Result<Tensor<1>, ModelError> {
        if self.num_labels() != 1 {
            return Err(ModelError::Input(format!(
                "a reward is one number: this classifier has {} labels",
                self.num_labels()
            )));
        }
        let logits = self.forward(input)?;
        let [b, _] = logits.dims();
        Ok(logits.reshape([b]))
    }

    /// Every parameter under its Hub tensor name (backbone, then `score.weight`).
    pub fn state_dict(&self) -> Vec<(String, TensorData)> {
        crate::hub::state_dict(self)
    }

    /// `config` as `transformers` saves a sequence classifier: `architectures` names the
    /// class, `id2label`/`label2id` hold `num_labels` labels (`LABEL_i`, kept when the count
    /// already matches), `pad_token_id` is set, and the dtype key records `dtype`.
    pub fn hub_config(&self, config: &ModelConfig, dtype: &str) -> ModelConfig {
        let mut config = config.clone();
        if let Some(class) = sequence_classification_class(&config.model_type) {
            config.set("architectures", json!([class]));
        }
        let n = self.num_labels();
        let keep = matches!(config.get("id2label"), Some(Value::Object(m)) if m.len() == n)
            && matches!(config.get("label2id"), Some(Value::Object(m)) if m.len() == n);
        if !keep {
            let id2label: serde_json::Map<String, Value> = (0..n)
                .map(|i| (i.to_string(), Value::String(format!("LABEL_{i}"))))
                .collect();
            let label2id: serde_json::Map<String, Value> =
                (0..n).map(|i| (format!("LABEL_{i}"), json!(i))).collect();
            config.set("id2label", Value::Object(id2label));
            config.set("label2id", Value::Object(label2id));
        }
        config.raw.remove("num_labels");
        config.set(
            "pad_token_id",
            self.pad_token_id.map_or(Value::Null, |p| json!(p)),
        );
        let key = if config.raw.contains_key("torch_dtype") {
            "torch_dtype"
        } else {
            "dtype"
        };
        config.set(key, Value::String(dtype.to_string()));
        config
    }

    /// Writes `dir/model.safetensors` (Hub names, current dtype) and `dir/config.json`
    /// ([`SequenceClassifier::hub_config`]): a folder
    /// `AutoModelForSequenceClassification.from_pretrained` loads. Creates `dir`.
    ///
    /// Adapters are not merged here; merge them first to save a plain model.
    pub fn save(&self, dir: &Path, config: &ModelConfig) -> Result<(), ModelError> {
        let dtype = crate::model::write_single_file(dir, &self.state_dict())?;
        self.hub_config(config, dtype).save(dir)
    }
}

/// Reads `hidden` (`[batch, seq, hidden]`) at one position per row and projects it with the
/// decoder's head: `[batch, num_labels]`. Differentiable (a row `select`), for training
/// objectives that hold the classifier as a [`CausalLm`].
pub fn pool_and_score(model: &CausalLm, hidden: Tensor<3>, positions: &[usize]) -> Tensor<2> {
    let [b, s, h] = hidden.dims();
    let device = hidden.device();
    let rows: Vec<i64> = positions
        .iter()
        .enumerate()
        .map(|(i, &p)| (i * s + p) as i64)
        .collect();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &device);
    let pooled = hidden
        .reshape([b * s, h])
        .select(0, rows)
        .reshape([b, 1, h]);
    let logits = model.logits(pooled);
    let [_, _, n] = logits.dims();
    logits.reshape([b, n])
}

/// Passes every tensor on with `lm_head` renamed `score`.
struct HeadAsScore<'v>(&'v mut dyn TensorVisitor);

fn rename(path: &HubPath) -> HubPath {
    match path.as_str().strip_prefix("lm_head") {
        Some(rest) => HubPath::root().pp(format!("{SCORE}{rest}")),
        None => path.clone(),
    }
}

impl TensorVisitor for HeadAsScore<'_> {
    fn param(&mut self, name: &HubPath, param: ParamSlot<'_>) -> Result<(), ModelError> {
        self.0.param(&rename(name), param)
    }

    fn linear(
        &mut self,
        path: &HubPath,
        linear: &mut Linear,
        layout: WeightLayout,
    ) -> Result<(), ModelError> {
        self.0.linear(&rename(path), linear, layout)
    }

    fn embedding(
        &mut self,
        path: &HubPath,
        table: &mut Param<Tensor<2>>,
    ) -> Result<(), ModelError> {
        self.0.embedding(&rename(path), table)
    }
}

impl HubModule for SequenceClassifier {
    /// The backbone's tensors, with the head as `score`.
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        self.model.visit_tensors(path, &mut HeadAsScore(v))
    }
}

impl LinearVisitor for SequenceClassifier {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
        let mut each = |path: &str, linear: &mut Linear| f(path, linear);
        visit_infallible(&mut self.clone(), &mut LinearPaths(&mut each));
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
        visit_infallible(self, &mut LinearPaths(f));
    }

    fn visit_embeddings_mut(&mut self, f: &mut dyn FnMut(&str, &mut Param<Tensor<2>>)) {
        visit_infallible(self, &mut EmbeddingPaths(f));
    }
}

/// A loaded sequence-classifier folder.
#[derive(Debug)]
pub struct PretrainedClassifier {
    /// The model.
    pub model: SequenceClassifier,
    /// The tokenizer, when the folder has `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    /// The parsed `config.json`.
    pub config: ModelConfig,
    /// The folder it was loaded from.
    pub dir: PathBuf,
    /// Whether `score` was newly initialised (the folder held a causal LM, not a classifier).
    pub new_head: bool,
}

impl PretrainedClassifier {
    /// Saves the model ([`SequenceClassifier::save`]) and copies the tokenizer files of the
    /// source folder into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        self.model.save(dir, &self.config)?;
        copy_tokenizer_files(&self.dir, dir)
    }
}

/// Loads a Hub-layout sequence classifier (`*ForSequenceClassification`), or a causal LM folder
/// as the start of one: without `score.weight` in the checkpoint a new head is drawn from
/// `N(0, initializer_range)` with `num_labels` rows (`transformers`'
/// `AutoModelForSequenceClassification.from_pretrained(dir, num_labels=n)`), and `lm_head` is
/// ignored.
///
/// `num_labels`: `None` takes the folder's (`id2label`, else the rows of `score.weight`, else
/// 1 for a new head); a value that differs from a stored head is an error. `pad_token_id` comes
/// from `config.json`; when it has none, the tokenizer's padding token is used (as TRL's
/// `RewardTrainer` sets it) and recorded on save.
///
/// # Errors
/// A [`ModelError`] naming the file and key or tensor at fault.
pub fn load_sequence_classifier(
    dir: &Path,
    device: &Device,
    opts: &LoadOptions,
    num_labels: Option<usize>,
) -> Result<PretrainedClassifier, ModelError> {
    let config = ModelConfig::from_dir(dir)?;
    if model_type_row(&config.model_type).is_none() {
        // CausalLm::from_config reports the supported types.
        CausalLm::from_config(&config, device)?;
    }
    let weights = WeightSource::open(dir, device, opts.dtype.unwrap_or(FloatDType::F32))?;
    // The backbone without its language-model head (the checkpoint's `lm_head`, if any, is
    // not read); the score head is read or drawn below.
    let mut backbone = crate::hub::load(
        without_head(CausalLm::from_config(&config, device)?),
        &weights,
    )?;
    if let Some(scaling) = &opts.rope_scaling {
        match &mut backbone {
            CausalLm::Llama(m) => m.set_rope_scaling(scaling.clone()),
            CausalLm::Gpt2(_) | CausalLm::Opt(_) => {
                return Err(ModelError::config(
                    &config.path,
                    "rope_scaling",
                    "a rope_scaling override was given, but this architecture has learned \
                     absolute positions, not rotary embeddings",
                ));
            }
        }
    }
    let hidden = backbone.hidden_size();
    let score_name = format!("{SCORE}.weight");
    let declared = declared_num_labels(&config)?;
    let (score, new_head) = match weights.shape(&score_name).map(<[usize]>::to_vec) {
        Some(shape) => {
            let rows = shape.first().copied().unwrap_or(0);
            if let Some(want) = num_labels
                && want != rows
            {
                return Err(ModelError::Shape {
                    path: dir.join(SINGLE_FILE),
                    name: score_name,
                    expected: vec![want, hidden],
                    found: shape,
                });
            }
            let weight = weights.tensor::<2>(&score_name, [rows, hidden])?;
            (Linear::from_tensors(weight, None), false)
        }
        None => {
            let n = num_labels.or(declared).unwrap_or(1);
            if n == 0 {
                return Err(ModelError::config(
                    &config.path,
                    "num_labels",
                    "a classifier needs at least one label",
                ));
            }
            let std = config.f64_opt("initializer_range")?.unwrap_or(0.02);
            tracing::info!(
                "{}: no `{score_name}` in the checkpoint; new {n}-label head drawn from \
                 N(0, {std})",
                dir.display()
            );
            let head = new_head(n, hidden, std, device);
            // The head is created in the loaded weights' dtype.
            let head = match opts.dtype {
                Some(dt) => Linear::from_tensors(head.weight.val().cast(dt), None),
                None => head,
            };
            (head, true)
        }
    };
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Some(Tokenizer::from_dir(dir)?)
    } else {
        None
    };
    let pad_token_id = match pad_from_config(&config)? {
        Some(p) => Some(p),
        None => tokenizer.as_ref().and_then(Tokenizer::pad_token_id),
    };
    let unused: Vec<String> = weights
        .unused()
        .into_iter()
        .filter(|n| {
            !n.ends_with("rotary_emb.inv_freq")
                && !n.starts_with("lm_head.")
                && !(config.model_type == "gpt2"
                    && (n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias")))
        })
        .collect();
    if !unused.is_empty() {
        tracing::warn!(
            "{}: {} checkpoint tensors not used by the classifier: {}",
            dir.display(),
            unused.len(),
            unused.join(", ")
        );
    }
    Ok(PretrainedClassifier {
        model: SequenceClassifier {
            model: with_head(backbone, score),
            pad_token_id,
        },
        tokenizer,
        config,
        dir: dir.to_path_buf(),
        new_head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_token_follows_transformers() {
        // Right padding, left padding, a pad id inside the text, a row of padding only.
        let ids = [
            5, 6, 0, 0, /**/ 0, 0, 7, 8, /**/ 0, 9, 0, 3, /**/ 0, 0, 0, 0,
        ];
        assert_eq!(
            last_non_pad_positions(&ids, 4, 4, Some(0)).unwrap(),
            vec![1, 3, 3, 0]
        );
        assert_eq!(
            last_non_pad_positions(&[1, 2, 3], 1, 3, None).unwrap(),
            vec![2]
        );
        assert!(last_non_pad_positions(&ids, 4, 4, None).is_err());
        assert!(last_non_pad_positions(&ids, 3, 4, Some(0)).is_err());
    }

    #[test]
    fn classes_cover_every_model_type() {
        for t in crate::supported_model_types() {
            assert!(sequence_classification_class(t).is_some(), "{t}");
        }
    }
}
