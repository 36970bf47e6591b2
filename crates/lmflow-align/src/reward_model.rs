//! Reward models: scoring with a trained [`SequenceClassifier`] ([`RewardModelScorer`], a
//! [`RewardFunction`]) and training one as an objective of the shared training loop
//! ([`RewardObjective`], the Bradley-Terry loss of TRL's `RewardTrainer`).
//!
//! A reward model is held as a [`CausalLm`] whose `lm_head` is the one-row `score` head (see
//! [`SequenceClassifier`]), so the loop of `lmflow-train` trains it like any decoder; the
//! weights IO of this module ([`ClassifierWeights`], [`ClassifierLoraWeights`]) write the Hub
//! layout of `*ForSequenceClassification` (`score.weight`) and PEFT's `SEQ_CLS` adapters.

use std::path::Path;

use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, FloatDType, Tensor};
use lmflow_datasets::batch::{collate, collate_pairs};
use lmflow_datasets::tokenize::SampleEncoder;
use lmflow_datasets::{
    ChatTemplate, Conversation, Instance, Message, Role, TokenizeConfig, TokenizedPair,
    TokenizedSample,
};
use lmflow_models::sequence_classification::{last_non_pad_positions, pool_and_score};
use lmflow_models::{CausalLm, ForwardInput, ModelConfig, SequenceClassifier, Tokenizer};
use lmflow_peft::inject::delete_adapter;
use lmflow_peft::trainable::set_trainable_by_path;
use lmflow_peft::{LoraConfig, load_adapter, save_adapter};
use lmflow_train::objective::{MetricSum, Objective, ObjectiveLoss};
use lmflow_train::{TrainError, WeightsIo};

use crate::error::AlignError;
use crate::reward_fn::{RewardFunction, RewardSample};

/// How a `(prompt, response)` pair becomes the text a reward model reads; use the same
/// format as its training data.
#[derive(Debug, Clone)]
pub enum PairFormat {
    /// A two-turn conversation (user: prompt, assistant: response) rendered with a chat
    /// template, as `paired_conversation` samples are.
    Chat(Box<ChatTemplate>),
    /// `prompt + response` (+ EOS), as `paired_text_to_text` samples are.
    Text,
}

/// The instance a pair is tokenized from ([`PairFormat`]).
pub fn pair_instance(format: &PairFormat, prompt: &str, response: &str) -> Instance {
    match format {
        PairFormat::Chat(_) => Instance::Conversation(Conversation {
            system: None,
            tools: Vec::new(),
            messages: vec![
                Message {
                    role: Role::User,
                    content: prompt.to_string(),
                    extra: Default::default(),
                },
                Message {
                    role: Role::Assistant,
                    content: response.to_string(),
                    extra: Default::default(),
                },
            ],
        }),
        PairFormat::Text => Instance::Text2Text {
            input: prompt.to_string(),
            output: response.to_string(),
        },
    }
}

/// A trained reward model as a [`RewardFunction`]: each pair is rendered ([`PairFormat`]),
/// tokenized (cut to `block_size`) and scored in batches.
#[derive(Debug)]
pub struct RewardModelScorer {
    model: SequenceClassifier,
    tokenizer: Tokenizer,
    format: PairFormat,
    tokenize: TokenizeConfig,
    batch_size: usize,
    device: Device,
    name: String,
}

impl RewardModelScorer {
    /// A scorer; batches are padded with the model's `pad_token_id` (required for
    /// `batch_size > 1`).
    ///
    /// # Errors
    /// [`AlignError::Config`] for a model with more than one label, `batch_size == 0`, or
    /// `batch_size > 1` without a padding id.
    pub fn new(
        model: SequenceClassifier,
        tokenizer: Tokenizer,
        format: PairFormat,
        block_size: usize,
        batch_size: usize,
        device: Device,
    ) -> Result<Self, AlignError> {
        if model.num_labels() != 1 {
            return Err(AlignError::Config(format!(
                "a reward model has one label; this classifier has {}",
                model.num_labels()
            )));
        }
        if batch_size == 0 || (batch_size > 1 && model.pad_token_id.is_none()) {
            return Err(AlignError::Config(format!(
                "reward model batch size {batch_size}: must be positive, and 1 when the model \
                 has no pad_token_id"
            )));
        }
        Ok(Self {
            model,
            tokenizer,
            format,
            tokenize: TokenizeConfig {
                block_size,
                ..TokenizeConfig::default()
            },
            batch_size,
            device,
            name: "reward_model".into(),
        })
    }

    /// The tokens a pair is scored on.
    ///
    /// # Errors
    /// Tokenization or template errors.
    pub fn encode(&self, sample: &RewardSample<'_>) -> Result<TokenizedSample, AlignError> {
        let template = match &self.format {
            PairFormat::Chat(t) => Some(t.as_ref()),
            PairFormat::Text => None,
        };
        let encoder = SampleEncoder::new(&self.tokenizer, template, self.tokenize.clone())?;
        let instance = pair_instance(&self.format, sample.prompt, sample.response);
        Ok(encoder.encode_text(&instance)?.sample)
    }

    /// The rewards of tokenized samples.
    ///
    /// # Errors
    /// Model errors.
    pub fn score_tokens(&self, samples: &[TokenizedSample]) -> Result<Vec<f64>, AlignError> {
        let pad = self.model.pad_token_id.unwrap_or(0);
        let mut out = Vec::with_capacity(samples.len());
        for chunk in samples.chunks(self.batch_size) {
            let refs: Vec<&TokenizedSample> = chunk.iter().collect();
            let batch = collate(&refs, pad, &self.device)?;
            let input =
                ForwardInput::new(batch.input_ids).with_attention_mask(batch.attention_mask);
            let r = self.model.rewards(&input)?;
            let v = r
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| AlignError::Config(format!("reading rewards: {e:?}")))?;
            out.extend(v.into_iter().map(f64::from));
        }
        Ok(out)
    }
}

impl RewardFunction for RewardModelScorer {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, samples: &[RewardSample<'_>]) -> Result<Vec<f64>, AlignError> {
        let tokens = samples
            .iter()
            .map(|s| self.encode(s))
            .collect::<Result<Vec<_>, _>>()?;
        self.score_tokens(&tokens)
    }
}

/// Reward-model training as an [`Objective`] of the shared loop: per pair
/// `-log σ(r_chosen - r_rejected - margin)` (the margin only when the data has one), plus
/// `center_rewards_coefficient · (r_chosen + r_rejected)²` when that is non-zero (TRL's
/// `RewardTrainer`). Rewards are read at each row's last non-padding token as `transformers`
/// reads them. Each pair weighs 1.
///
/// Logged metrics: `accuracy` (share of pairs with `r_chosen > r_rejected`),
/// `rewards/chosen`, `rewards/rejected`, `rewards/margins`.
#[derive(Debug, Clone)]
pub struct RewardObjective {
    /// Padding id of batches and of the last-token rule (the model's `pad_token_id`).
    pub pad_id: u32,
    /// TRL's `center_rewards_coefficient` (0: off).
    pub center_rewards_coefficient: f64,
}

impl RewardObjective {
    /// The Bradley-Terry objective with batches padded by `pad_id`.
    pub fn new(pad_id: u32) -> Self {
        Self {
            pad_id,
            center_rewards_coefficient: 0.0,
        }
    }

    /// Rewards of the chosen and rejected sides of `batch` (`[batch]` each), computed in one
    /// forward pass over both sides; and the margins when every pair has one.
    ///
    /// # Errors
    /// Collation and model errors.
    pub fn rewards(
        &self,
        model: &CausalLm,
        batch: &[&TokenizedPair],
        device: &Device,
    ) -> lmflow_train::Result<(Tensor<1>, Tensor<1>, Option<Tensor<1>>)> {
        let b = batch.len();
        let paired = collate_pairs(batch, self.pad_id, device)?;
        let ids = Tensor::cat(vec![paired.chosen.input_ids, paired.rejected.input_ids], 0);
        let mask = Tensor::cat(
            vec![paired.chosen.attention_mask, paired.rejected.attention_mask],
            0,
        );
        let [rows, seq] = ids.dims();
        let host: Vec<i64> = ids
            .to_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| TrainError::Config(format!("reading input ids: {e:?}")))?;
        let positions = last_non_pad_positions(&host, rows, seq, Some(self.pad_id))?;
        let input = ForwardInput::new(ids).with_attention_mask(mask);
        let hidden = model.forward_hidden(&input, None)?;
        let scores = pool_and_score(model, hidden, &positions);
        let [_, labels] = scores.dims();
        if labels != 1 {
            return Err(TrainError::Config(format!(
                "a reward model has one output; this head has {labels}"
            )));
        }
        let scores = scores.reshape([rows]);
        let chosen = scores.clone().narrow(0, 0, b);
        let rejected = scores.narrow(0, b, b);
        Ok((chosen, rejected, paired.margin))
    }
}

fn to_f64(t: Tensor<1>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map(|v| v.into_iter().map(f64::from).collect())
        .unwrap_or_default()
}

impl Objective for RewardObjective {
    type Item = TokenizedPair;

    fn weight(&self, _item: &TokenizedPair) -> f64 {
        1.0
    }

    fn tokens(&self, item: &TokenizedPair) -> usize {
        item.chosen.len() + item.rejected.len()
    }

    fn loss(
        &self,
        model: &CausalLm,
        batch: &[&TokenizedPair],
        device: &Device,
    ) -> lmflow_train::Result<ObjectiveLoss> {
        let n = batch.len() as f64;
        let (chosen, rejected, margin) = self.rewards(model, batch, device)?;
        let mut diff = chosen.clone() - rejected.clone();
        if let Some(m) = margin {
            diff = diff - m;
        }
        let mut sum = log_sigmoid(diff).neg().sum();
        if self.center_rewards_coefficient != 0.0 {
            let center = (chosen.clone() + rejected.clone()).powi_scalar(2).sum();
            sum = sum + center.mul_scalar(self.center_rewards_coefficient);
        }
        let (c, r) = (to_f64(chosen.detach()), to_f64(rejected.detach()));
        let correct = c.iter().zip(&r).filter(|(a, b)| a > b).count() as f64;
        let margins: f64 = c.iter().zip(&r).map(|(a, b)| a - b).sum();
        Ok(ObjectiveLoss {
            sum,
            metrics: vec![
                MetricSum::new("accuracy", correct, n),
                MetricSum::new("rewards/chosen", c.iter().sum(), n),
                MetricSum::new("rewards/rejected", r.iter().sum(), n),
                MetricSum::new("rewards/margins", margins, n),
            ],
        })
    }
}

/// Share of pairs a reward model orders correctly (`r_chosen > r_rejected`), batched.
///
/// # Errors
/// Collation and model errors.
pub fn pairwise_accuracy(
    model: &SequenceClassifier,
    pairs: &[TokenizedPair],
    batch_size: usize,
    device: &Device,
) -> Result<f64, AlignError> {
    if pairs.is_empty() {
        return Err(AlignError::Config("no pairs to evaluate".into()));
    }
    let pad = model
        .pad_token_id
        .ok_or_else(|| AlignError::Config("the reward model has no pad_token_id".into()))?;
    let objective = RewardObjective::new(pad);
    let mut correct = 0usize;
    for chunk in pairs.chunks(batch_size.max(1)) {
        let refs: Vec<&TokenizedPair> = chunk.iter().collect();
        let (c, r, _) = objective.rewards(&model.model, &refs, device)?;
        correct += to_f64(c)
            .iter()
            .zip(to_f64(r))
            .filter(|(a, b)| **a > *b)
            .count();
    }
    Ok(correct as f64 / pairs.len() as f64)
}

/// Full-model checkpoints of a reward model: the Hub layout of `*ForSequenceClassification`
/// (`score.weight`, `architectures`, `id2label`, `pad_token_id`), loadable by `transformers`.
#[derive(Debug)]
pub struct ClassifierWeights {
    config: ModelConfig,
    pad_token_id: Option<u32>,
    device: Device,
}

impl ClassifierWeights {
    /// Checkpoints of a classifier of `config` with `pad_token_id`, restored onto `device`.
    pub fn new(config: ModelConfig, pad_token_id: Option<u32>, device: Device) -> Self {
        Self {
            config,
            pad_token_id,
            device,
        }
    }
}

impl WeightsIo for ClassifierWeights {
    fn save(&self, model: &CausalLm, dir: &Path) -> lmflow_train::Result<()> {
        let classifier = SequenceClassifier::from_model(model.clone(), self.pad_token_id)?;
        classifier.save(dir, &self.config)?;
        Ok(())
    }

    fn load(&self, model: CausalLm, dir: &Path) -> lmflow_train::Result<CausalLm> {
        drop(model);
        let loaded = lmflow_models::load_sequence_classifier(
            dir,
            &self.device,
            &lmflow_models::LoadOptions {
                dtype: Some(FloatDType::F32),
                rope_scaling: None,
            },
            Some(1),
        )?;
        Ok(loaded.model.model)
    }
}

/// LoRA checkpoints of a reward model: a PEFT adapter folder with the `score` head as a
/// module to save (PEFT's `task_type = "SEQ_CLS"`, `modules_to_save = ["score"]`).
#[derive(Debug)]
pub struct ClassifierLoraWeights {
    config: LoraConfig,
    name: String,
    pad_token_id: Option<u32>,
    device: Device,
}

impl ClassifierLoraWeights {
    /// Adapter `name` configured by `config` (its `modules_to_save` should name `score`).
    pub fn new(
        config: LoraConfig,
        name: impl Into<String>,
        pad_token_id: Option<u32>,
        device: Device,
    ) -> Self {
        Self {
            config,
            name: name.into(),
            pad_token_id,
            device,
        }
    }
}

impl WeightsIo for ClassifierLoraWeights {
    fn save(&self, model: &CausalLm, dir: &Path) -> lmflow_train::Result<()> {
        let mut view = SequenceClassifier::from_model(model.clone(), self.pad_token_id)?;
        save_adapter(&mut view, &self.config, &self.name, dir)?;
        Ok(())
    }

    fn load(&self, model: CausalLm, dir: &Path) -> lmflow_train::Result<CausalLm> {
        let mut view = SequenceClassifier::from_model(model, self.pad_token_id)?;
        delete_adapter(&mut view, &self.name)?;
        load_adapter(&mut view, dir, &self.name, &self.device)?;
        // The adapter and the score head train again; everything else keeps its flag.
        let model = set_trainable_by_path(view.model, |path| {
            (path.contains("adapters.") || path.contains("lm_head")).then_some(true)
        });
        Ok(model)
    }
}

/// Tokenizes preference instances for reward modelling or DPO.
///
/// # Errors
/// [`AlignError::Dataset`] naming the instance that fails.
pub fn encode_pairs(
    instances: &[Instance],
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    block_size: usize,
) -> Result<Vec<TokenizedPair>, AlignError> {
    let encoder = SampleEncoder::new(
        tokenizer,
        template,
        TokenizeConfig {
            block_size,
            ..TokenizeConfig::default()
        },
    )?;
    instances
        .iter()
        .map(|i| encoder.encode_pair(i).map_err(AlignError::from))
        .collect()
}
