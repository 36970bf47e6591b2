//! LLaVA (`model_type: "llava"`, `LlavaForConditionalGeneration`): a CLIP vision tower
//! ([`ClipVisionModel`]), a two-layer projector ([`MultiModalProjector`]) and a LLaMA-family
//! language model ([`CausalLm`]).
//!
//! An image is encoded by the tower; the hidden states of `vision_feature_layer` (−2 by
//! default: the last layer is not used; a list concatenates several layers along the width)
//! lose their class token under `vision_feature_select_strategy: "default"` (kept under
//! `"full"`); the projector maps each remaining position to one language-model embedding. The
//! prompt holds one `<image>` token (`image_token_index`) per such position (the processor
//! expands each `<image>`); their embeddings are replaced by the image features in row-major
//! order (batch row, then position), and the language model runs on the result through
//! [`ForwardInput::inputs_embeds`]. With a KV cache the image is only in the prefill; the
//! following tokens are plain ids.
//!
//! # Tensor names
//! Modules are named as `transformers` 5 names them, which is also what PEFT adapters use:
//! `model.vision_tower.*`, `model.multi_modal_projector.linear_{1,2}`,
//! `model.language_model.*` and `lm_head` ([`LinearVisitor`] paths). Checkpoints are read in
//! every spelling met in practice ([`spellings`]): those names; the layout
//! `save_pretrained` of transformers 5.24 writes (`vision_tower.*`, `multi_modal_projector.*`,
//! `language_model.model.*`, `language_model.lm_head.*`); and the Hub's older
//! `vision_tower.vision_model.*`. Saving writes transformers 5.24's layout ([`saved_name`]).
//!
//! # LoRA on the language model only
//! PEFT matches `target_modules: ["q_proj"]` in the vision tower too (CLIP has `q_proj`). Use
//! [`language_model_targets`] (a regex PEFT applies the same way) to adapt the language model
//! alone.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use lmflow_peft::{Linear, LinearVisitor, TargetModules};
use serde_json::Value;

use crate::activation::Activation;
use crate::attention::position_ids_from_attention_mask;
use crate::cache::KvCache;
use crate::clip::{CLIP_VISION_MODEL_TYPE, ClipVisionConfig, ClipVisionModel};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::hub::{
    EmbeddingPaths, HubModule, HubPath, Init, LinearPaths, ParamSlot, TensorVisitor, WeightLayout,
    lazy_linear, visit_infallible,
};
use crate::model::{
    CausalLm, Family, ForwardInput, ForwardOutput, LoadOptions, copy_tokenizer_files,
    model_type_row, write_single_file,
};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightSource;

/// The `model_type` of a LLaVA configuration.
pub const LLAVA_MODEL_TYPE: &str = "llava";

/// Module-path prefix of the language model (PEFT's names): every linear layer of the LLM
/// starts with it.
pub const LANGUAGE_MODEL_PREFIX: &str = "model.language_model.";

/// Module path of the projector (for `modules_to_save`: `multi_modal_projector`).
pub const PROJECTOR_PATH: &str = "model.multi_modal_projector";

/// Module-path prefix of the vision tower.
pub const VISION_TOWER_PREFIX: &str = "model.vision_tower.";

/// Processor files copied with a saved model (those present), next to
/// [`TOKENIZER_FILES`](crate::model::TOKENIZER_FILES).
pub const PROCESSOR_FILES: &[&str] = &["preprocessor_config.json", "processor_config.json"];

/// A `target_modules` that adapts the named layers of the language model only (not the vision
/// tower or the projector): the PEFT regex
/// `model\.language_model\..*\.(?:q_proj|v_proj)`, honoured by PEFT when the adapter is
/// loaded there.
pub fn language_model_targets(names: &[&str]) -> TargetModules {
    let alternatives: Vec<String> = names.iter().map(|n| regex_escape(n)).collect();
    TargetModules::Pattern(format!(
        r"model\.language_model\..*\.(?:{})",
        alternatives.join("|")
    ))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// Which vision positions become image features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSelect {
    /// `"default"`: drop the class token (one feature per patch).
    Default,
    /// `"full"`: keep it (patches + 1 features per image).
    Full,
}

/// Configuration of a [`LlavaModel`], read from a LLaVA `config.json`.
#[derive(Debug, Clone)]
pub struct LlavaConfig {
    /// The vision tower (`vision_config`).
    pub vision: ClipVisionConfig,
    /// The language model's configuration (`text_config`, as its own [`ModelConfig`]).
    pub text: ModelConfig,
    /// The token whose embeddings image features replace (`image_token_index` /
    /// `image_token_id`, default 32000).
    pub image_token_id: u32,
    /// The tower hidden states used, as non-negative indices into
    /// [`ClipVisionModel::hidden_states`] (`vision_feature_layer`, one or several).
    pub vision_feature_layers: Vec<usize>,
    /// `vision_feature_select_strategy`.
    pub select_strategy: FeatureSelect,
    /// The projector's activation (`projector_hidden_act`, default `gelu`, erf form).
    pub projector_act: Activation,
    /// Whether the projector's layers have a bias (`multimodal_projector_bias`, default true).
    pub projector_bias: bool,
    /// The file it was read from.
    pub path: PathBuf,
}

impl LlavaConfig {
    /// Reads a LLaVA `config.json`.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the key that is missing or unsupported (a vision tower
    /// other than CLIP, a text model outside the LLaMA family, an unknown strategy or a feature
    /// layer outside the tower).
    pub fn from_hf(config: &ModelConfig) -> Result<Self, ModelError> {
        let path = &config.path;
        let err = |key: &str, msg: String| ModelError::config(path, key, msg);
        if config.model_type != LLAVA_MODEL_TYPE {
            return Err(err(
                "model_type",
                format!("`{}` is not `{LLAVA_MODEL_TYPE}`", config.model_type),
            ));
        }
        let sub = |key: &str, default_type: &str| -> Result<ModelConfig, ModelError> {
            let Some(Value::Object(map)) = config.get(key) else {
                return Err(err(key, "missing or not an object".into()));
            };
            let mut map = map.clone();
            map.entry("model_type")
                .or_insert_with(|| Value::String(default_type.into()));
            ModelConfig::from_json(Value::Object(map), path)
        };
        let vision = ClipVisionConfig::from_hf(&sub("vision_config", CLIP_VISION_MODEL_TYPE)?)?;
        let mut text = sub("text_config", "llama")?;
        if !matches!(
            model_type_row(&text.model_type).map(|r| r.family),
            Some(Family::Llama(_))
        ) {
            return Err(err(
                "text_config.model_type",
                format!(
                    "`{}` is not supported as LLaVA's language model (supported: the LLaMA \
                     family: llama, mistral, ministral, qwen2, qwen3)",
                    text.model_type
                ),
            ));
        }
        if text.get("tie_word_embeddings").is_none()
            && let Some(tie) = config.get("tie_word_embeddings")
        {
            text.set("tie_word_embeddings", tie.clone());
        }
        let image_token_id = match config.usize_opt("image_token_index")? {
            Some(id) => id,
            None => config.usize_opt("image_token_id")?.unwrap_or(32000),
        } as u32;
        let layers = vision.num_hidden_layers as i64;
        let raw_layers: Vec<i64> = match config.get("vision_feature_layer") {
            None => vec![-2],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_i64().ok_or_else(|| {
                        err(
                            "vision_feature_layer",
                            format!("expected integers, found {v}"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(v) => vec![v.as_i64().ok_or_else(|| {
                err(
                    "vision_feature_layer",
                    format!("expected an integer or a list, found {v}"),
                )
            })?],
        };
        if raw_layers.is_empty() {
            return Err(err("vision_feature_layer", "empty list".into()));
        }
        let vision_feature_layers = raw_layers
            .iter()
            .map(|&i| {
                // Python indexing into the `layers + 1` hidden states.
                let idx = if i < 0 { layers + 1 + i } else { i };
                if (0..=layers).contains(&idx) {
                    Ok(idx as usize)
                } else {
                    Err(err(
                        "vision_feature_layer",
                        format!(
                            "{i} is outside the {} hidden states of a {layers}-layer tower",
                            layers + 1
                        ),
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        let select_strategy = match config
            .str_opt("vision_feature_select_strategy")?
            .unwrap_or("default")
        {
            "default" => FeatureSelect::Default,
            "full" => FeatureSelect::Full,
            other => {
                return Err(err(
                    "vision_feature_select_strategy",
                    format!("unsupported `{other}` (supported: default, full)"),
                ));
            }
        };
        let act = config.str_opt("projector_hidden_act")?.unwrap_or("gelu");
        let projector_act = Activation::from_hf_name(act).ok_or_else(|| {
            err(
                "projector_hidden_act",
                format!(
                    "unsupported activation `{act}` (supported: {})",
                    Activation::SUPPORTED
                ),
            )
        })?;
        Ok(Self {
            vision,
            text,
            image_token_id,
            vision_feature_layers,
            select_strategy,
            projector_act,
            projector_bias: config
                .bool_opt("multimodal_projector_bias")?
                .unwrap_or(true),
            path: path.clone(),
        })
    }

    /// Image features (and `<image>` tokens) per image: the patches, plus the class token
    /// under [`FeatureSelect::Full`].
    pub fn image_tokens_per_image(&self) -> usize {
        self.vision.num_patches()
            + match self.select_strategy {
                FeatureSelect::Default => 0,
                FeatureSelect::Full => 1,
            }
    }

    /// A randomly initialised model (weights drawn lazily, on first use).
    ///
    /// # Errors
    /// The text model's configuration errors.
    pub fn init(&self, device: &Device) -> Result<LlavaModel, ModelError> {
        let language_model = CausalLm::from_config(&self.text, device)?;
        let text_hidden = language_model.hidden_size();
        let vision_width = self.vision.hidden_size * self.vision_feature_layers.len();
        let lin = |i: usize, o: usize| {
            let k = 1.0 / (i as f64).sqrt();
            let init = Init::Random(Distribution::Uniform(-k, k));
            lazy_linear(i, o, device, init, self.projector_bias.then_some(init))
        };
        Ok(LlavaModel {
            vision_tower: self.vision.init(device),
            multi_modal_projector: MultiModalProjector {
                linear_1: lin(vision_width, text_hidden),
                linear_2: lin(text_hidden, text_hidden),
                act: self.projector_act,
            },
            language_model,
            config: self.clone(),
        })
    }
}

/// `linear_2(act(linear_1(x)))`: vision width (times the number of feature layers) to the
/// language model's width.
#[derive(Module, Debug)]
pub struct MultiModalProjector {
    /// `linear_1` `[text_hidden, vision_hidden * feature_layers]`.
    pub linear_1: Linear,
    /// `linear_2` `[text_hidden, text_hidden]`.
    pub linear_2: Linear,
    /// `projector_hidden_act`.
    #[module(skip)]
    pub act: Activation,
}

impl MultiModalProjector {
    /// Projects vision features.
    ///
    /// # Shapes
    /// - x: `[images, tokens, vision_hidden * feature_layers]` -> `[images, tokens, text_hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.linear_2
            .forward(self.act.forward(self.linear_1.forward(x)))
    }
}

impl HubModule for MultiModalProjector {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        v.linear(
            &path.pp("linear_1"),
            &mut self.linear_1,
            WeightLayout::OutIn,
        )?;
        v.linear(
            &path.pp("linear_2"),
            &mut self.linear_2,
            WeightLayout::OutIn,
        )
    }
}

/// `LlavaForConditionalGeneration`.
#[derive(Module, Debug)]
pub struct LlavaModel {
    /// The CLIP vision tower (`model.vision_tower`).
    pub vision_tower: ClipVisionModel,
    /// The projector (`model.multi_modal_projector`).
    pub multi_modal_projector: MultiModalProjector,
    /// The language model (`model.language_model` and `lm_head`); LLaMA family.
    pub language_model: CausalLm,
    /// The configuration.
    #[module(skip)]
    pub config: LlavaConfig,
}

impl LlavaModel {
    /// A randomly initialised model for a LLaVA `config.json` (weights drawn lazily).
    ///
    /// # Errors
    /// As [`LlavaConfig::from_hf`].
    pub fn from_config(config: &ModelConfig, device: &Device) -> Result<Self, ModelError> {
        LlavaConfig::from_hf(config)?.init(device)
    }

    /// Loads a model from `weights`, accepting every checkpoint spelling ([`spellings`]).
    ///
    /// # Errors
    /// As [`LlavaModel::from_config`]; [`ModelError::MissingTensor`] /
    /// [`ModelError::Shape`] naming the file and the tensor (in transformers' saved spelling).
    pub fn load(config: &ModelConfig, weights: &WeightSource) -> Result<Self, ModelError> {
        let mut model = Self::from_config(config, weights.device())?;
        let mut loader = crate::hub::Loader::new(weights);
        model.visit_tensors(
            &HubPath::root(),
            &mut SpelledAs {
                inner: &mut loader,
                name: &|canonical: &str| stored_spelling(canonical, weights),
            },
        )?;
        Ok(model)
    }

    /// Like [`LlavaModel::load`], handing every linear layer to `on_linear` with its module
    /// (PEFT) path as soon as it is read: e.g. to quantise the language model to NF4 while
    /// loading (`|path, l| if path.starts_with(LANGUAGE_MODEL_PREFIX) { l.quantize_nf4(&cfg) }`).
    ///
    /// # Errors
    /// As [`LlavaModel::load`].
    pub fn load_with_linear_hook(
        config: &ModelConfig,
        weights: &WeightSource,
        on_linear: &mut dyn FnMut(&str, &mut Linear),
    ) -> Result<Self, ModelError> {
        let mut model = Self::from_config(config, weights.device())?;
        let mut loader = crate::hub::Loader::new(weights);
        let mut spelled = SpelledAs {
            inner: &mut loader,
            name: &|canonical: &str| stored_spelling(canonical, weights),
        };
        model.visit_tensors(
            &HubPath::root(),
            &mut HookAfter {
                inner: &mut spelled,
                hook: on_linear,
            },
        )?;
        Ok(model)
    }

    /// Replaces the projector's weights by those of `weights` (a file with
    /// `multi_modal_projector.linear_{1,2}.*` in any spelling [`LlavaModel::load`] accepts, e.g.
    /// one written by [`LlavaModel::projector_state_dict`] + [`crate::save_safetensors`]).
    ///
    /// # Errors
    /// Missing or mis-shaped tensors, naming the file and tensor.
    pub fn load_projector(&mut self, weights: &WeightSource) -> Result<(), ModelError> {
        let mut loader = crate::hub::Loader::new(weights);
        self.multi_modal_projector.visit_tensors(
            &HubPath::root().pp(PROJECTOR_PATH),
            &mut SpelledAs {
                inner: &mut loader,
                name: &|canonical: &str| stored_spelling(canonical, weights),
            },
        )
    }

    /// The projector's tensors under transformers' saved names
    /// (`multi_modal_projector.linear_1.weight`, ...), in their current dtype.
    pub fn projector_state_dict(&self) -> Vec<(String, TensorData)> {
        let mut visitor = crate::hub::StateDict::default();
        let mut projector = self.multi_modal_projector.clone();
        let result = projector.visit_tensors(
            &HubPath::root().pp(PROJECTOR_PATH),
            &mut SpelledAs {
                inner: &mut visitor,
                name: &saved_name,
            },
        );
        debug_assert!(result.is_ok(), "{result:?}");
        visitor.tensors
    }

    /// Every parameter under the name transformers' `save_pretrained` writes, in its current
    /// dtype (adapters not included; merge them first).
    pub fn state_dict(&self) -> Vec<(String, TensorData)> {
        let mut visitor = crate::hub::StateDict::default();
        visit_infallible(
            &mut self.clone(),
            &mut SpelledAs {
                inner: &mut visitor,
                name: &saved_name,
            },
        );
        visitor.tensors
    }

    /// Writes `dir/model.safetensors` (transformers 5.24's layout, current dtype) and
    /// `dir/config.json` (`config` with `dtype` set). Creates `dir`.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn save(&self, dir: &Path, config: &ModelConfig) -> Result<(), ModelError> {
        let dtype = write_single_file(dir, &self.state_dict())?;
        let mut config = config.clone();
        let key = if config.raw.contains_key("torch_dtype") {
            "torch_dtype"
        } else {
            "dtype"
        };
        config.set(key, Value::String(dtype.to_string()));
        config.save(dir)
    }

    /// Image features, one row per `<image>` token of each image.
    ///
    /// # Shapes
    /// - pixel_values `[images, channels, image_size, image_size]` ->
    ///   `[images, tokens_per_image, text_hidden]`
    ///
    /// # Errors
    /// [`ModelError::Input`] for pixel values of another shape.
    pub fn image_features(&self, pixel_values: Tensor<4>) -> Result<Tensor<3>, ModelError> {
        let layers = &self.config.vision_feature_layers;
        let deepest = layers.iter().copied().max().unwrap_or(0);
        let states = self.vision_tower.hidden_states(pixel_values, deepest)?;
        let selected: Vec<Tensor<3>> = layers
            .iter()
            .map(|&i| {
                let s = states[i].clone();
                match self.config.select_strategy {
                    FeatureSelect::Default => {
                        let len = s.dims()[1];
                        s.narrow(1, 1, len - 1)
                    }
                    FeatureSelect::Full => s,
                }
            })
            .collect();
        Ok(self.multi_modal_projector.forward(Tensor::cat(selected, 2)))
    }

    /// Input embeddings: the token embeddings of `input_ids` with the image features of
    /// `pixel_values` in place of the image tokens, in row-major order (row 0's image tokens
    /// take the first features). Without images, plain token embeddings.
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]`, pixel_values `[images, channels, size, size]` ->
    ///   `[batch, seq, text_hidden]`
    ///
    /// # Errors
    /// [`ModelError::Input`] when the number of image tokens differs from the number of image
    /// features (naming both), or for ids outside the vocabulary.
    pub fn embed(
        &self,
        input_ids: &Tensor<2, Int>,
        pixel_values: Option<Tensor<4>>,
    ) -> Result<Tensor<3>, ModelError> {
        crate::input::check_ids(input_ids, self.language_model.vocab_size(), "input_ids")?;
        let CausalLm::Llama(lm) = &self.language_model else {
            return Err(ModelError::Input(
                "LLaVA's language model must be of the LLaMA family".into(),
            ));
        };
        let embeds = lm.embed_tokens.forward(input_ids.clone());
        let Some(pixel_values) = pixel_values else {
            return Ok(embeds);
        };
        let features = self.image_features(pixel_values)?;
        self.merge_image_features(input_ids, embeds, features)
    }

    /// Scatters `features` over the image tokens of `input_ids` in `embeds`, row-major.
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]`, embeds `[batch, seq, hidden]`,
    ///   features `[images, tokens_per_image, hidden]` -> `[batch, seq, hidden]`
    ///
    /// # Errors
    /// [`ModelError::Input`] when the image-token count differs from the feature count.
    pub fn merge_image_features(
        &self,
        input_ids: &Tensor<2, Int>,
        embeds: Tensor<3>,
        features: Tensor<3>,
    ) -> Result<Tensor<3>, ModelError> {
        let [b, s, h] = embeds.dims();
        let [images, per_image, fh] = features.dims();
        let ids = input_ids
            .clone()
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| ModelError::Input(format!("input_ids could not be read: {e:?}")))?;
        let image_token = i64::from(self.config.image_token_id);
        let positions: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == image_token)
            .map(|(i, _)| i)
            .collect();
        if positions.len() != images * per_image || fh != h {
            return Err(ModelError::Input(format!(
                "image tokens and image features do not match: input_ids hold {} image tokens \
                 (id {}), the images give {} features ({images} images x {per_image} tokens of \
                 width {fh}); each image needs {} `<image>` tokens (expand the prompt with the \
                 processor)",
                positions.len(),
                self.config.image_token_id,
                images * per_image,
                self.config.image_tokens_per_image()
            )));
        }
        let rows = b * s;
        let mut index: Vec<i64> = (0..rows as i64).collect();
        for (k, &p) in positions.iter().enumerate() {
            index[p] = (rows + k) as i64;
        }
        let device = embeds.device();
        let dtype = embeds.dtype();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows]), &device);
        let table = Tensor::cat(
            vec![
                embeds.reshape([rows, h]),
                features.cast(dtype).reshape([images * per_image, h]),
            ],
            0,
        );
        Ok(table.select(0, index).reshape([b, s, h]))
    }

    /// Runs the model: with `pixel_values`, their features replace the image tokens of
    /// `input.input_ids` ([`LlavaModel::embed`]); without, the language model runs on the ids
    /// (decode steps after an image prefill, text-only prompts). The cache, mask and positions
    /// behave as in [`CausalLm::forward`].
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]`, pixel_values `[images, channels, size, size]` ->
    ///   logits `[batch, seq, vocab]`
    ///
    /// # Errors
    /// As [`LlavaModel::embed`] and [`CausalLm::forward`].
    pub fn forward(
        &self,
        input: ForwardInput,
        pixel_values: Option<Tensor<4>>,
        cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput, ModelError> {
        let hidden_states = self.forward_hidden(input, pixel_values, cache)?;
        Ok(ForwardOutput {
            logits: self.logits(hidden_states.clone()),
            hidden_states,
        })
    }

    /// Final hidden states of the language model only (skips the vocabulary projection: chunked
    /// losses); [`LlavaModel::logits`] finishes the pass.
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]`, pixel_values `[images, channels, size, size]` ->
    ///   `[batch, seq, text_hidden]`
    ///
    /// # Errors
    /// As [`LlavaModel::forward`].
    pub fn forward_hidden(
        &self,
        input: ForwardInput,
        pixel_values: Option<Tensor<4>>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let input = match pixel_values {
            Some(pixels) => {
                let embeds = self.embed(&input.input_ids, Some(pixels))?;
                input.with_inputs_embeds(embeds)
            }
            None => input,
        };
        self.language_model.forward_hidden(&input, cache)
    }

    /// Projects hidden states to the vocabulary.
    ///
    /// # Shapes
    /// - hidden `[batch, seq, text_hidden]` -> `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.language_model.logits(hidden)
    }

    /// The image token id (`image_token_index`).
    pub fn image_token_id(&self) -> u32 {
        self.config.image_token_id
    }

    /// `<image>` tokens (and features) per image.
    pub fn image_tokens_per_image(&self) -> usize {
        self.config.image_tokens_per_image()
    }

    /// The language model.
    pub fn language_model(&self) -> &CausalLm {
        &self.language_model
    }

    /// An empty KV cache for the language model holding up to `max_len` positions.
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        self.language_model.new_cache(max_len)
    }

    /// Greedy decoding with the KV cache: the prompt (with its images) is the prefill, then one
    /// id per step. `attention_mask` `[batch, seq]` supports left-padded batches (positions
    /// from the mask, as `transformers`' `generate`). A row stops at the first id of `eos`
    /// (included in its output); decoding ends when every row has stopped or after
    /// `max_new_tokens`.
    ///
    /// # Shapes
    /// - input_ids `[batch, seq]` -> `batch` lists of new ids
    ///
    /// # Errors
    /// As [`LlavaModel::forward`].
    pub fn greedy_generate(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        pixel_values: Option<Tensor<4>>,
        max_new_tokens: usize,
        eos: &[u32],
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let mask = attention_mask.unwrap_or_else(|| Tensor::ones([b, s], &device));
        let positions = position_ids_from_attention_mask(mask.clone());
        let mut next_pos = positions
            .clone()
            .narrow(1, s - 1, 1)
            .add_scalar(1)
            .reshape([b, 1]);
        let mut cache = self.new_cache(s + max_new_tokens);
        let input = ForwardInput::new(input_ids)
            .with_attention_mask(mask.clone())
            .with_position_ids(positions);
        let mut logits = self.forward(input, pixel_values, Some(&mut cache))?.logits;
        let mut mask = mask;
        let mut out = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for step in 0..max_new_tokens {
            let len = logits.dims()[1];
            let next: Tensor<2, Int> = logits.narrow(1, len - 1, 1).argmax(2).reshape([b, 1]);
            let ids = next
                .clone()
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .map_err(|e| ModelError::Input(format!("generated ids unreadable: {e:?}")))?;
            for (row, &id) in ids.iter().enumerate() {
                if !done[row] {
                    out[row].push(id as u32);
                    done[row] = eos.contains(&(id as u32));
                }
            }
            if done.iter().all(|&d| d) || step + 1 == max_new_tokens {
                break;
            }
            mask = Tensor::cat(vec![mask, Tensor::ones([b, 1], &device)], 1);
            let input = ForwardInput::new(next)
                .with_attention_mask(mask.clone())
                .with_position_ids(next_pos.clone());
            next_pos = next_pos.add_scalar(1);
            logits = self.language_model.forward(input, Some(&mut cache))?.logits;
        }
        Ok(out)
    }
}

impl HubModule for LlavaModel {
    /// Canonical (PEFT) names: `model.vision_tower.*`, `model.multi_modal_projector.*`,
    /// `model.language_model.*`, `lm_head`.
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        let model = path.pp("model");
        self.vision_tower
            .visit_tensors(&model.pp("vision_tower"), v)?;
        self.multi_modal_projector
            .visit_tensors(&model.pp("multi_modal_projector"), v)?;
        let language_model = model.pp("language_model");
        // The text model names itself `model.*` and `lm_head`.
        let rename = |p: &str| match p.strip_prefix("model.") {
            Some(rest) => language_model.pp(rest).to_string(),
            None => path.pp(p).to_string(),
        };
        self.language_model.visit_tensors(
            &HubPath::root(),
            &mut SpelledAs {
                inner: v,
                name: &rename,
            },
        )
    }
}

impl LinearVisitor for LlavaModel {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear)) {
        // Visiting needs `&mut`; a clone shares every tensor.
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

/// Passes every tensor on under another name (`name` maps the full tensor or module path).
struct SpelledAs<'v, 'f> {
    inner: &'v mut dyn TensorVisitor,
    name: &'f dyn Fn(&str) -> String,
}

impl SpelledAs<'_, '_> {
    fn map(&self, path: &HubPath) -> HubPath {
        HubPath::root().pp((self.name)(path.as_str()))
    }
}

impl TensorVisitor for SpelledAs<'_, '_> {
    fn param(&mut self, name: &HubPath, param: ParamSlot<'_>) -> Result<(), ModelError> {
        let name = self.map(name);
        self.inner.param(&name, param)
    }

    fn linear(
        &mut self,
        path: &HubPath,
        linear: &mut Linear,
        layout: WeightLayout,
    ) -> Result<(), ModelError> {
        let path = self.map(path);
        self.inner.linear(&path, linear, layout)
    }

    fn embedding(
        &mut self,
        path: &HubPath,
        table: &mut Param<Tensor<2>>,
    ) -> Result<(), ModelError> {
        let path = self.map(path);
        self.inner.embedding(&path, table)
    }
}

/// Passes every tensor on, then hands each linear layer to `hook` under the path it was
/// visited with (the module name, before any respelling).
struct HookAfter<'v, 'h> {
    inner: &'v mut dyn TensorVisitor,
    hook: &'h mut dyn FnMut(&str, &mut Linear),
}

impl TensorVisitor for HookAfter<'_, '_> {
    fn param(&mut self, name: &HubPath, param: ParamSlot<'_>) -> Result<(), ModelError> {
        self.inner.param(name, param)
    }

    fn linear(
        &mut self,
        path: &HubPath,
        linear: &mut Linear,
        layout: WeightLayout,
    ) -> Result<(), ModelError> {
        self.inner.linear(path, linear, layout)?;
        (self.hook)(path.as_str(), linear);
        Ok(())
    }

    fn embedding(
        &mut self,
        path: &HubPath,
        table: &mut Param<Tensor<2>>,
    ) -> Result<(), ModelError> {
        self.inner.embedding(path, table)
    }
}

/// The name transformers 5.24's `save_pretrained` writes for a canonical (module) name:
/// `model.vision_tower.X` -> `vision_tower.X`, `model.multi_modal_projector.X` ->
/// `multi_modal_projector.X`, `model.language_model.X` -> `language_model.model.X`,
/// `lm_head.X` -> `language_model.lm_head.X`.
pub fn saved_name(canonical: &str) -> String {
    if let Some(rest) = canonical.strip_prefix("model.language_model.") {
        format!("language_model.model.{rest}")
    } else if canonical == "lm_head" || canonical.starts_with("lm_head.") {
        format!("language_model.{canonical}")
    } else if let Some(rest) = canonical.strip_prefix("model.") {
        rest.to_string()
    } else {
        canonical.to_string()
    }
}

/// Every name a canonical module or tensor name is stored under in LLaVA checkpoints, most
/// likely first: the canonical name (`model.vision_tower.X`, transformers 4.52+ and PEFT),
/// [`saved_name`] (transformers 5.24's `save_pretrained`), and for the vision tower the Hub's
/// older `vision_tower.vision_model.X` and `model.vision_tower.vision_model.X`.
pub fn spellings(canonical: &str) -> Vec<String> {
    let mut out = vec![canonical.to_string(), saved_name(canonical)];
    if let Some(rest) = canonical.strip_prefix(VISION_TOWER_PREFIX) {
        out.push(format!("vision_tower.vision_model.{rest}"));
        out.push(format!("model.vision_tower.vision_model.{rest}"));
    }
    out
}

/// The spelling of `canonical` (a tensor name, or a linear module whose `.weight` is looked
/// for) present in `weights`; transformers' saved name when none is (so the error names it).
fn stored_spelling(canonical: &str, weights: &WeightSource) -> String {
    for name in spellings(canonical) {
        if weights.contains(&name) || weights.contains(&format!("{name}.weight")) {
            return name;
        }
    }
    saved_name(canonical)
}

/// A loaded LLaVA folder.
#[derive(Debug)]
pub struct PretrainedLlava {
    /// The model.
    pub model: LlavaModel,
    /// The tokenizer, when the folder has `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    /// The parsed `config.json`.
    pub config: ModelConfig,
    /// The folder it was loaded from.
    pub dir: PathBuf,
}

impl PretrainedLlava {
    /// Saves the model ([`LlavaModel::save`]) and copies the tokenizer files
    /// ([`TOKENIZER_FILES`](crate::model::TOKENIZER_FILES)) and processor files ([`PROCESSOR_FILES`]) of the source folder,
    /// giving a folder `transformers` loads with `LlavaForConditionalGeneration` and
    /// `AutoProcessor`.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        self.model.save(dir, &self.config)?;
        copy_tokenizer_files(&self.dir, dir)?;
        copy_processor_files(&self.dir, dir)
    }
}

/// Copies the [`PROCESSOR_FILES`] present in `from` into `to`.
///
/// # Errors
/// I/O errors naming the file.
pub fn copy_processor_files(from: &Path, to: &Path) -> Result<(), ModelError> {
    if from == to {
        return Ok(());
    }
    for name in PROCESSOR_FILES {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).map_err(|e| ModelError::io(&src, e))?;
        }
    }
    Ok(())
}

/// Whether `dir/config.json` declares `model_type: "llava"`.
pub fn is_llava_dir(dir: &Path) -> bool {
    ModelConfig::from_dir(dir).is_ok_and(|c| c.model_type == LLAVA_MODEL_TYPE)
}

/// Loads a LLaVA folder: `config.json`, `model.safetensors` (or shards) in any spelling
/// [`LlavaModel::load`] accepts, and the tokenizer when present. `opts.dtype` sets the float
/// dtype; `opts.rope_scaling` is not supported here.
///
/// # Errors
/// A [`ModelError`] naming the file and key or tensor at fault.
pub fn load_llava(
    dir: &Path,
    device: &Device,
    opts: &LoadOptions,
) -> Result<PretrainedLlava, ModelError> {
    let config = ModelConfig::from_dir(dir)?;
    if opts.rope_scaling.is_some() {
        return Err(ModelError::config(
            &config.path,
            "rope_scaling",
            "a rope_scaling override is not supported for LLaVA models",
        ));
    }
    let dtype = opts.dtype.unwrap_or(burn::tensor::FloatDType::F32);
    crate::weights::check_fits_in_memory(dir, device, dtype)?;
    let weights = WeightSource::open(dir, device, dtype)?;
    let model = LlavaModel::load(&config, &weights)?;
    let unused: Vec<String> = weights
        .unused()
        .into_iter()
        .filter(|n| !n.ends_with("position_ids") && !n.ends_with("rotary_emb.inv_freq"))
        .collect();
    if !unused.is_empty() {
        tracing::warn!(
            "{}: {} checkpoint tensors not used by llava: {}",
            dir.display(),
            unused.len(),
            unused.join(", ")
        );
    }
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Some(Tokenizer::from_dir(dir)?)
    } else {
        None
    };
    Ok(PretrainedLlava {
        model,
        tokenizer,
        config,
        dir: dir.to_path_buf(),
    })
}
