//! Vision-language (LLaVA) fine-tuning through the shared loop: the objective over token rows
//! with images ([`LlavaSftObjective`]), the two training stages of LLaVA
//! ([`prepare_stage`]) and their weight files ([`ProjectorWeights`], [`LlavaFullWeights`];
//! LoRA runs use [`LoraWeights`](crate::LoraWeights)).
//!
//! - **Stage 1** ([`LlavaStage::Projector`], LLaVA's `--tune_mm_mlp_adapter`): only the
//!   projector (`multi_modal_projector`) trains; the vision tower and the language model are
//!   frozen and stay bit-identical. Saved as `mm_projector.safetensors` (LLaVA's
//!   `mm_projector.bin`, transformers' tensor names) and as a PEFT folder whose only content is
//!   the projector as `modules_to_save` (`target_modules: "dummy-target-modules"`, which PEFT
//!   accepts for exactly this).
//! - **Stage 2** ([`LlavaStage::Lora`]): LoRA on the language model only (a `target_modules`
//!   regex under `model.language_model.`, see
//!   [`language_model_targets`](lmflow_models::llava::language_model_targets)) plus the
//!   projector as `modules_to_save`; or ([`LlavaStage::LanguageModel`]) the projector and the
//!   whole language model. The vision tower is always frozen.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use lmflow_datasets::TokenizedSample;
use lmflow_datasets::batch::collate_data;
use lmflow_datasets::multimodal::{
    ImageProcessor, MultimodalSample, PixelValues, stack_pixel_values,
};
use lmflow_models::llava::saved_name;
use lmflow_models::{ForwardInput, LlavaModel, ModelConfig, WeightSource, save_safetensors};
use lmflow_peft::trainable::set_trainable_by_path;
use lmflow_peft::{LoraConfig, TargetModules, get_peft_model};

use crate::error::{Result, TrainError, io_err};
use crate::loss::causal_lm_loss;
use crate::objective::{Objective, ObjectiveLoss, predicted_tokens};
use crate::trainer::WeightsIo;

/// File name of the stage-1 projector weights (LLaVA's `mm_projector.bin`, as safetensors with
/// transformers' names `multi_modal_projector.linear_{1,2}.{weight,bias}`).
pub const PROJECTOR_FILE: &str = "mm_projector.safetensors";

/// PEFT's placeholder `target_modules` for an adapter made only of `modules_to_save`
/// (`peft.utils.constants.DUMMY_TARGET_MODULES`).
pub const DUMMY_TARGET_MODULES: &str = "dummy-target-modules";

/// The Burn module path (field name) of the projector in [`LlavaModel`].
const PROJECTOR_FIELD: &str = "multi_modal_projector";
/// The Burn module path (field name) of the language model in [`LlavaModel`].
const LANGUAGE_MODEL_FIELD: &str = "language_model";

/// One image of a training item: a file (processed when its batch is built) or pixel values
/// already processed.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemImage {
    /// An image file, processed with the objective's [`ImageProcessor`].
    File(PathBuf),
    /// Processed pixel values `[3, H, W]`.
    Pixels(PixelValues),
}

/// A training row with images: token ids and labels (image tokens expanded and masked) and
/// the images whose features replace the image tokens, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct MultimodalItem {
    /// Token ids and labels.
    pub sample: TokenizedSample,
    /// The images, in the order of their runs of image tokens.
    pub images: Vec<ItemImage>,
    /// Where the item comes from (`file#record`), for error messages.
    pub origin: String,
}

impl MultimodalItem {
    /// An item of pixel values already processed (e.g. drawn images).
    pub fn with_pixels(sample: TokenizedSample, pixels: Vec<PixelValues>) -> Self {
        Self {
            sample,
            images: pixels.into_iter().map(ItemImage::Pixels).collect(),
            origin: String::new(),
        }
    }
}

impl From<MultimodalSample> for MultimodalItem {
    fn from(s: MultimodalSample) -> Self {
        Self {
            origin: format!("{} record {}", s.source.display(), s.index),
            sample: s.sample,
            images: s.images.into_iter().map(ItemImage::File).collect(),
        }
    }
}

/// Next-token cross-entropy of the trained tokens of rows with images (each trained token
/// weighs 1), through [`LlavaModel::forward`]: the loss of LLaVA's visual instruction tuning.
#[derive(Debug, Clone)]
pub struct LlavaSftObjective {
    /// Pad id of batches.
    pub pad_id: u32,
    /// Processes [`ItemImage::File`] images (`None`: items must carry pixel values).
    pub processor: Option<ImageProcessor>,
}

impl LlavaSftObjective {
    /// An objective padding batches with `pad_id`, processing image files with `processor`.
    pub fn new(pad_id: u32, processor: Option<ImageProcessor>) -> Self {
        Self { pad_id, processor }
    }

    /// Model input, labels and stacked pixel values (`None` when no row has an image) of a
    /// batch.
    ///
    /// # Errors
    /// Unreadable images (naming the item and the file), images of different sizes, or an
    /// image file without a processor.
    pub fn input(
        &self,
        batch: &[&MultimodalItem],
        device: &Device,
    ) -> Result<(ForwardInput, Tensor<2, Int>, Option<Tensor<4>>)> {
        let rows: Vec<&TokenizedSample> = batch.iter().map(|i| &i.sample).collect();
        let data = collate_data(&rows, self.pad_id, None)?;
        let shape = [data.batch, data.seq];
        let t = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, shape), device);
        let input = ForwardInput::new(t(data.input_ids))
            .with_attention_mask(t(data.attention_mask))
            .with_position_ids(t(data.position_ids));
        let labels = t(data.labels);
        let mut pixels = Vec::new();
        for item in batch {
            for image in &item.images {
                pixels.push(match image {
                    ItemImage::Pixels(p) => p.clone(),
                    ItemImage::File(path) => {
                        let processor = self.processor.as_ref().ok_or_else(|| {
                            TrainError::Config(format!(
                                "{}: image {} given as a file, but the objective has no image \
                                 processor",
                                item.origin,
                                path.display()
                            ))
                        })?;
                        processor.preprocess_path(path)?
                    }
                });
            }
        }
        let pixel_values = if pixels.is_empty() {
            None
        } else {
            let (values, dims) = stack_pixel_values(&pixels)?;
            Some(Tensor::<4>::from_data(
                TensorData::new(values, dims),
                device,
            ))
        };
        Ok((input, labels, pixel_values))
    }
}

impl Objective<LlavaModel> for LlavaSftObjective {
    type Item = MultimodalItem;

    fn weight(&self, item: &MultimodalItem) -> f64 {
        predicted_tokens(&item.sample.labels) as f64
    }

    fn tokens(&self, item: &MultimodalItem) -> usize {
        predicted_tokens(&item.sample.labels)
    }

    fn loss(
        &self,
        model: &LlavaModel,
        batch: &[&MultimodalItem],
        device: &Device,
    ) -> Result<ObjectiveLoss> {
        let (input, labels, pixels) = self.input(batch, device)?;
        let out = model.forward(input, pixels, None)?;
        Ok(ObjectiveLoss {
            sum: causal_lm_loss(out.logits, labels).sum,
            metrics: Vec::new(),
        })
    }
}

/// What a LLaVA run trains (the vision tower never trains).
#[derive(Debug, Clone)]
pub enum LlavaStage {
    /// Stage 1: the projector only.
    Projector,
    /// Stage 2 with LoRA: adapter `name` on the language model (`config.target_modules` must
    /// select language-model layers only; see
    /// [`language_model_targets`](lmflow_models::llava::language_model_targets)) and the
    /// projector as `modules_to_save`.
    Lora(Box<LoraConfig>),
    /// Stage 2 in full: the projector and every language-model weight.
    LanguageModel,
}

/// Sets which parameters of `model` train for `stage` (injecting the LoRA adapter `"default"`
/// for [`LlavaStage::Lora`], with `multi_modal_projector` added to its `modules_to_save`).
/// Returns the model and, for LoRA, the configuration to save the adapter with.
///
/// # Errors
/// A LoRA configuration that selects a vision-tower layer, or adapter errors.
pub fn prepare_stage(
    model: LlavaModel,
    stage: &LlavaStage,
) -> Result<(LlavaModel, Option<LoraConfig>)> {
    match stage {
        LlavaStage::Projector => Ok((
            set_trainable_by_path(model, |path| Some(in_field(path, PROJECTOR_FIELD))),
            None,
        )),
        LlavaStage::LanguageModel => Ok((
            set_trainable_by_path(model, |path| {
                Some(in_field(path, PROJECTOR_FIELD) || in_field(path, LANGUAGE_MODEL_FIELD))
            }),
            None,
        )),
        LlavaStage::Lora(cfg) => {
            let mut cfg = (**cfg).clone();
            let mut keep = cfg.modules_to_save.take().unwrap_or_default();
            if !keep.iter().any(|m| m == PROJECTOR_FIELD) {
                keep.push(PROJECTOR_FIELD.into());
            }
            cfg.modules_to_save = Some(keep);
            let (model, report) = get_peft_model(model, &cfg, "default")?;
            if let Some(path) = report
                .adapted
                .iter()
                .find(|p| !p.starts_with(lmflow_models::llava::LANGUAGE_MODEL_PREFIX))
            {
                return Err(TrainError::Config(format!(
                    "LoRA target_modules select `{path}`, outside the language model; LLaVA's \
                     stage 2 adapts the language model only (use a regex such as \
                     `model\\.language_model\\..*\\.(q_proj|v_proj)`)"
                )));
            }
            Ok((model, Some(cfg)))
        }
    }
}

/// Whether Burn parameter path `path` lies under the top-level field `field`.
fn in_field(path: &str, field: &str) -> bool {
    path == field || path.starts_with(&format!("{field}."))
}

/// The stage-1 adapter configuration PEFT loads: no LoRA layer, the projector as
/// `modules_to_save`.
pub fn projector_adapter_config(base_model: Option<&Path>) -> LoraConfig {
    let mut cfg = LoraConfig::new(8, 16.0, TargetModules::Pattern(DUMMY_TARGET_MODULES.into()));
    cfg.modules_to_save = Some(vec![PROJECTOR_FIELD.into()]);
    cfg.task_type = Some("CAUSAL_LM".into());
    cfg.base_model_name_or_path = base_model.map(|p| p.display().to_string());
    cfg
}

/// Writes the projector of `model` into `dir`: [`PROJECTOR_FILE`] and a PEFT adapter folder
/// (`adapter_config.json` + `adapter_model.safetensors`, the projector as `modules_to_save`).
///
/// # Errors
/// I/O errors naming the file.
pub fn save_projector(model: &LlavaModel, dir: &Path, base_model: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tensors = model.projector_state_dict();
    let f32_tensors: Vec<(String, TensorData)> = tensors
        .into_iter()
        .map(|(name, data)| (name, data.convert::<f32>()))
        .collect();
    save_safetensors(&dir.join(PROJECTOR_FILE), &f32_tensors)?;
    // PEFT's keys: `base_model.model.` + the module name (`model.multi_modal_projector...`).
    let peft: Vec<(String, TensorData)> = f32_tensors
        .into_iter()
        .map(|(name, data)| {
            let canonical = format!("model.{name}");
            debug_assert_eq!(saved_name(&canonical), name);
            (format!("{}{canonical}", lmflow_peft::io::PREFIX), data)
        })
        .collect();
    save_safetensors(&dir.join(lmflow_peft::io::WEIGHTS_FILE), &peft)?;
    let mut cfg = projector_adapter_config(base_model);
    cfg.inference_mode = true;
    cfg.save(&dir.join(lmflow_peft::io::CONFIG_FILE))?;
    Ok(())
}

/// Replaces the projector of `model` by the one in `path`: a [`PROJECTOR_FILE`] (or any
/// safetensors file with `multi_modal_projector.*` tensors in a spelling
/// [`LlavaModel::load`] accepts), or a folder holding one. Trainability flags are kept.
///
/// # Errors
/// Missing files or tensors, naming them.
pub fn load_projector(mut model: LlavaModel, path: &Path, device: &Device) -> Result<LlavaModel> {
    let file = if path.is_dir() {
        path.join(PROJECTOR_FILE)
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        return Err(TrainError::Config(format!(
            "{}: no projector weights (expected {PROJECTOR_FILE} written by stage 1)",
            file.display()
        )));
    }
    let source =
        WeightSource::from_files(path, std::slice::from_ref(&file), device, FloatDType::F32)?;
    let flags = trainable_paths(&model);
    model.load_projector(&source)?;
    Ok(set_trainable_by_path(model, |p| Some(flags.contains(p))))
}

/// Burn paths of the parameters that require gradients.
fn trainable_paths<M: Module>(model: &M) -> std::collections::HashSet<String> {
    lmflow_peft::trainable::float_params(model)
        .into_iter()
        .filter(|(_, _, _, g)| *g)
        .map(|(p, ..)| p)
        .collect()
}

/// Stage-1 checkpoints: the projector only ([`save_projector`]); resuming reloads it.
#[derive(Debug, Clone)]
pub struct ProjectorWeights {
    device: Device,
    base_model: Option<PathBuf>,
}

impl ProjectorWeights {
    /// Projector checkpoints restored onto `device`; `base_model` is recorded in the PEFT
    /// configuration.
    pub fn new(device: Device, base_model: Option<PathBuf>) -> Self {
        Self { device, base_model }
    }
}

impl WeightsIo<LlavaModel> for ProjectorWeights {
    fn save(&self, model: &LlavaModel, dir: &Path) -> Result<()> {
        save_projector(model, dir, self.base_model.as_deref())
    }

    fn load(&self, model: LlavaModel, dir: &Path) -> Result<LlavaModel> {
        load_projector(model, dir, &self.device)
    }
}

/// Full checkpoints of a LLaVA model (stage 2 without LoRA): `config.json` +
/// `model.safetensors` in transformers' layout.
#[derive(Debug, Clone)]
pub struct LlavaFullWeights {
    config: ModelConfig,
    device: Device,
}

impl LlavaFullWeights {
    /// Full-model checkpoints of a model of `config`, restored onto `device`.
    pub fn new(config: ModelConfig, device: Device) -> Self {
        Self { config, device }
    }
}

impl WeightsIo<LlavaModel> for LlavaFullWeights {
    fn save(&self, model: &LlavaModel, dir: &Path) -> Result<()> {
        model.save(dir, &self.config)?;
        Ok(())
    }

    fn load(&self, model: LlavaModel, dir: &Path) -> Result<LlavaModel> {
        let flags = trainable_paths(&model);
        drop(model);
        let source = WeightSource::open(dir, &self.device, FloatDType::F32)?;
        let model = LlavaModel::load(&self.config, &source)?;
        Ok(set_trainable_by_path(model, |p| Some(flags.contains(p))))
    }
}
