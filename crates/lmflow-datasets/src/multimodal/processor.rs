//! `LlavaProcessor`: the image processor plus `<image>` expansion.
//!
//! Each `<image>` marker of a prompt becomes `image_token` repeated once per image feature the
//! model inserts, exactly as transformers' `LlavaProcessor.replace_image_token`:
//!
//! ```text
//! n = (height / patch_size) * (width / patch_size) + num_additional_image_tokens
//!     - (1 if vision_feature_select_strategy == "default")
//! ```
//!
//! where `height` × `width` is the size of the processed pixel values (the crop size for
//! CLIP). For a CLIP ViT-L/14 at 336 px with `num_additional_image_tokens = 1` (the CLS token)
//! and strategy `default`: 24 × 24 + 1 − 1 = 576 tokens.

use std::path::Path;

use image::DynamicImage;
use lmflow_models::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::image_processor::{ImageProcessor, PixelValues, read_json};
use crate::error::{DatasetError, Result};

/// Which vision features the model keeps (`vision_feature_select_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionFeatureSelectStrategy {
    /// `default`: drop the first (CLS) feature.
    Default,
    /// `full`: keep every feature.
    Full,
}

/// The processor-level settings of `processor_config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlavaProcessorConfig {
    /// The placeholder token (`image_token`, default `<image>`).
    pub image_token: String,
    /// The vision tower's patch size (`patch_size`).
    pub patch_size: usize,
    /// Extra tokens of the vision tower's output, e.g. 1 for CLIP's CLS
    /// (`num_additional_image_tokens`, default 0 as in transformers).
    pub num_additional_image_tokens: usize,
    /// `vision_feature_select_strategy` (default `default`).
    pub vision_feature_select_strategy: VisionFeatureSelectStrategy,
}

fn cfg_err(path: &Path, message: impl Into<String>) -> DatasetError {
    DatasetError::Image {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl LlavaProcessorConfig {
    /// Reads `dir/processor_config.json`. A missing or `null` `patch_size` /
    /// `vision_feature_select_strategy` is taken from `dir/config.json`
    /// (`vision_config.patch_size`, `vision_feature_select_strategy`), the values the model uses.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("processor_config.json");
        let value = if path.is_file() {
            read_json(&path)?
        } else {
            Value::Object(Default::default())
        };
        let model_cfg_path = dir.join("config.json");
        let model_cfg = if model_cfg_path.is_file() {
            Some(read_json(&model_cfg_path)?)
        } else {
            None
        };
        Self::from_json(&value, model_cfg.as_ref(), &path)
    }

    /// Parses a processor config object, with the model's `config.json` as a fallback for
    /// `patch_size` and the strategy; `source` names the file in errors.
    pub fn from_json(value: &Value, model_config: Option<&Value>, source: &Path) -> Result<Self> {
        let get = |key: &str| value.get(key).filter(|v| !v.is_null());
        let image_token = match get("image_token") {
            None => "<image>".to_string(),
            Some(v) => v
                .as_str()
                .ok_or_else(|| cfg_err(source, "key `image_token`: expected a string"))?
                .to_string(),
        };
        let patch_size = match get("patch_size") {
            Some(v) => v.as_u64(),
            None => model_config
                .and_then(|m| m.get("vision_config"))
                .and_then(|v| v.get("patch_size"))
                .and_then(Value::as_u64),
        }
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            cfg_err(
                source,
                "key `patch_size`: missing (and no vision_config.patch_size in config.json) or not a positive integer",
            )
        })? as usize;
        let num_additional_image_tokens = match get("num_additional_image_tokens") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                cfg_err(
                    source,
                    "key `num_additional_image_tokens`: expected a non-negative integer",
                )
            })? as usize,
        };
        let strategy = get("vision_feature_select_strategy")
            .or_else(|| model_config.and_then(|m| m.get("vision_feature_select_strategy")))
            .map(|v| v.as_str().unwrap_or(""))
            .unwrap_or("default");
        let vision_feature_select_strategy = match strategy {
            "default" => VisionFeatureSelectStrategy::Default,
            "full" => VisionFeatureSelectStrategy::Full,
            other => {
                return Err(cfg_err(
                    source,
                    format!(
                        "key `vision_feature_select_strategy`: expected \"default\" or \"full\", found {other:?}"
                    ),
                ));
            }
        };
        Ok(Self {
            image_token,
            patch_size,
            num_additional_image_tokens,
            vision_feature_select_strategy,
        })
    }

    /// The number of image tokens for processed pixel values of `height` × `width`.
    pub fn num_image_tokens(&self, height: usize, width: usize) -> usize {
        let n = (height / self.patch_size) * (width / self.patch_size)
            + self.num_additional_image_tokens;
        match self.vision_feature_select_strategy {
            VisionFeatureSelectStrategy::Default => n.saturating_sub(1),
            VisionFeatureSelectStrategy::Full => n,
        }
    }
}

/// Replaces the `i`-th `marker` of `text` by `marker` repeated `counts[i]` times; the number of
/// markers must equal `counts.len()`.
pub fn expand_markers(text: &str, marker: &str, counts: &[usize]) -> Result<String> {
    let found = text.matches(marker).count();
    if found != counts.len() {
        return Err(DatasetError::Config(format!(
            "the text has {found} {marker} marker(s) but {} image(s) were given",
            counts.len()
        )));
    }
    let mut out = String::with_capacity(text.len() + counts.iter().sum::<usize>() * marker.len());
    let mut rest = text;
    for &n in counts {
        // `found == counts.len()` guarantees a next marker.
        let Some(at) = rest.find(marker) else { break };
        out.push_str(&rest[..at]);
        for _ in 0..n {
            out.push_str(marker);
        }
        rest = &rest[at + marker.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// transformers' `LlavaProcessor`: a CLIP [`ImageProcessor`], the [`LlavaProcessorConfig`] and
/// the image token's id in the tokenizer.
#[derive(Debug, Clone)]
pub struct LlavaProcessor {
    image_processor: ImageProcessor,
    config: LlavaProcessorConfig,
    image_token_id: u32,
}

impl LlavaProcessor {
    /// Combines the parts; the tokenizer must encode `config.image_token` as one token.
    pub fn new(
        image_processor: ImageProcessor,
        config: LlavaProcessorConfig,
        tokenizer: &Tokenizer,
    ) -> Result<Self> {
        let image_token_id = match tokenizer.token_to_id(&config.image_token) {
            Some(id) => id,
            None => {
                let ids = tokenizer.encode(&config.image_token, false)?;
                match ids.as_slice() {
                    [id] => *id,
                    _ => {
                        return Err(DatasetError::Config(format!(
                            "the tokenizer does not have the image token {:?} as a single token (it encodes to {} tokens); add it as a special token",
                            config.image_token,
                            ids.len()
                        )));
                    }
                }
            }
        };
        Ok(Self {
            image_processor,
            config,
            image_token_id,
        })
    }

    /// Reads the image processor ([`ImageProcessor::from_dir`]) and processor
    /// ([`LlavaProcessorConfig::from_dir`]) configs of a model folder.
    pub fn from_dir(dir: impl AsRef<Path>, tokenizer: &Tokenizer) -> Result<Self> {
        let dir = dir.as_ref();
        Self::new(
            ImageProcessor::from_dir(dir)?,
            LlavaProcessorConfig::from_dir(dir)?,
            tokenizer,
        )
    }

    /// The image processor.
    pub fn image_processor(&self) -> &ImageProcessor {
        &self.image_processor
    }

    /// The processor settings.
    pub fn config(&self) -> &LlavaProcessorConfig {
        &self.config
    }

    /// The placeholder string (`<image>`).
    pub fn image_token(&self) -> &str {
        &self.config.image_token
    }

    /// The placeholder's token id.
    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// Image tokens per image when the processed size is fixed by the config (crop size);
    /// `None` when it depends on the input.
    pub fn num_image_tokens(&self) -> Option<usize> {
        self.image_processor
            .output_size()
            .map(|(h, w)| self.config.num_image_tokens(h, w))
    }

    /// Image tokens for processed pixel values.
    pub fn num_image_tokens_for(&self, pixels: &PixelValues) -> usize {
        self.config
            .num_image_tokens(pixels.height(), pixels.width())
    }

    /// Expands every `<image>` of `text` for images processed to `sizes` (`(height, width)`
    /// each, in order); the count of markers must equal `sizes.len()`.
    pub fn expand_image_tokens(&self, text: &str, sizes: &[(usize, usize)]) -> Result<String> {
        let counts: Vec<usize> = sizes
            .iter()
            .map(|&(h, w)| self.config.num_image_tokens(h, w))
            .collect();
        expand_markers(text, &self.config.image_token, &counts)
    }

    /// A prompt for generation, as `processor(text=..., images=...)`: processes the images,
    /// expands `<image>` markers and tokenizes (`add_special_tokens` as the tokenizer's
    /// `__call__`, true in transformers).
    pub fn encode_prompt(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        images: &[DynamicImage],
        add_special_tokens: bool,
    ) -> Result<(Vec<u32>, Vec<PixelValues>)> {
        let pixels = images
            .iter()
            .map(|i| self.image_processor.preprocess(i))
            .collect::<Result<Vec<_>>>()?;
        let sizes: Vec<_> = pixels.iter().map(|p| (p.height(), p.width())).collect();
        let expanded = self.expand_image_tokens(text, &sizes)?;
        let ids = tokenizer.encode(&expanded, add_special_tokens)?;
        Ok((ids, pixels))
    }
}
