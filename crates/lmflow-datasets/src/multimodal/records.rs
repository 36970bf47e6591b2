//! Multimodal (image + conversation) data: reading, tokenizing with image tokens, collating.
//!
//! Two file formats are read by [`read_multimodal`]:
//!
//! - **LLaVA's JSON**: a top-level array of records
//!   `{"id": .., "image": "rel/path.png", "conversations": [{"from": "human", "value": "<image>\n.."}, {"from": "gpt", "value": ".."}]}`
//!   (`from` is `human`/`user`, `gpt`/`assistant` or `system`; `image` may be a list of paths
//!   or absent for a text-only record);
//! - **LMFlow's conversation format with images**:
//!   `{"type": "conversation", "instances": [{"messages": [{"role": "user", "content": "<image>\n.."}, ..], "system"?: .., "images": ["rel/path.png"]}]}`.
//!
//! Image paths are resolved against [`MultimodalReadOptions::image_folder`] (default: the
//! JSON file's folder); a missing file is an error naming the JSON file, the record and the
//! field. Each image is placed where its `<image>` marker is in the text (the i-th marker gets
//! the i-th image); the number of markers must equal the number of images.
//!
//! [`MultimodalEncoder`] renders a record with the usual chat template machinery
//! ([`SampleEncoder`]), so the loss mask follows the conversation rules of `docs/datasets.md`
//! (assistant turns trained, the rest masked), then expands every marker to the model's number
//! of image tokens and masks every image token (label `-100`), even inside a trained turn.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::image_processor::{ImageProcessor, PixelValues, read_json, stack_pixel_values};
use super::processor::{LlavaProcessor, expand_markers};
use crate::batch::{BatchData, collate_data};
use crate::error::{DatasetError, Result};
use crate::format::{Conversation, DatasetType, Instance, Message, Role};
use crate::template::Segment;
use crate::tokenize::{IGNORE_INDEX, SampleEncoder, TokenizedSample};

/// The image marker of LLaVA-style data.
pub const IMAGE_MARKER: &str = "<image>";

/// The file format of multimodal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultimodalFormat {
    /// LLaVA's JSON (top-level array with `conversations`).
    Llava,
    /// LMFlow's `conversation` type with an `images` field.
    LmflowConversation,
}

/// Options of [`read_multimodal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultimodalReadOptions {
    /// Folder relative image paths are resolved against (default: the JSON file's folder).
    pub image_folder: Option<PathBuf>,
    /// Check that every image file exists while reading (default true).
    pub check_images: bool,
}

impl Default for MultimodalReadOptions {
    fn default() -> Self {
        Self {
            image_folder: None,
            check_images: true,
        }
    }
}

/// One conversation with its images.
#[derive(Debug, Clone, PartialEq)]
pub struct MultimodalRecord {
    /// The record's `id`, when it has one.
    pub id: Option<String>,
    /// The conversation; `<image>` markers are in the message texts.
    pub conversation: Conversation,
    /// The image files, in marker order (resolved paths).
    pub images: Vec<PathBuf>,
    /// The JSON file the record came from.
    pub source: PathBuf,
    /// The record's 0-based index in that file.
    pub index: usize,
    /// The name of the images field (`image` or `images`), for error messages.
    pub images_field: &'static str,
}

impl MultimodalRecord {
    fn field_err(&self, field: impl Into<String>, message: impl Into<String>) -> DatasetError {
        DatasetError::Field {
            path: self.source.clone(),
            index: self.index,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The name of image `i`'s field (`image`, `image[1]`, `images[0]`).
    pub fn image_field(&self, i: usize) -> String {
        if self.images_field == "image" && self.images.len() == 1 {
            "image".into()
        } else {
            format!("{}[{i}]", self.images_field)
        }
    }

    /// Loads and processes the record's images in order; errors name the JSON file, the
    /// record, the field and the image file.
    pub fn load_pixels(&self, processor: &ImageProcessor) -> Result<Vec<PixelValues>> {
        load_pixels(&self.images, processor, &self.source, self.index, |i| {
            self.image_field(i)
        })
    }
}

fn load_pixels(
    images: &[PathBuf],
    processor: &ImageProcessor,
    source: &Path,
    index: usize,
    field: impl Fn(usize) -> String,
) -> Result<Vec<PixelValues>> {
    images
        .iter()
        .enumerate()
        .map(|(i, p)| {
            processor
                .preprocess_path(p)
                .map_err(|e| DatasetError::Field {
                    path: source.to_path_buf(),
                    index,
                    field: field(i),
                    message: e.to_string(),
                })
        })
        .collect()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Ctx<'a> {
    path: &'a Path,
    index: usize,
    folder: &'a Path,
    check: bool,
}

impl Ctx<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> DatasetError {
        DatasetError::Field {
            path: self.path.to_path_buf(),
            index: self.index,
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn string(&self, v: &Value, field: &str) -> Result<String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.err(field, format!("expected a string, found {}", json_type(v))))
    }

    /// Resolves the image paths of field `key` (a string or an array of strings).
    fn images(&self, obj: &Map<String, Value>, key: &str) -> Result<Vec<PathBuf>> {
        let raw: Vec<(String, String)> = match obj.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![(key.to_string(), s.clone())],
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let f = format!("{key}[{i}]");
                    Ok((f.clone(), self.string(v, &f)?))
                })
                .collect::<Result<_>>()?,
            Some(v) => {
                return Err(self.err(
                    key,
                    format!("expected a path or a list of paths, found {}", json_type(v)),
                ));
            }
        };
        raw.into_iter()
            .map(|(field, rel)| {
                if rel.is_empty() {
                    return Err(self.err(&field, "empty image path"));
                }
                let p = self.folder.join(&rel);
                if self.check && !p.is_file() {
                    return Err(self.err(&field, format!("image file {} not found", p.display())));
                }
                Ok(p)
            })
            .collect()
    }

    fn check_markers(&self, c: &Conversation, n_images: usize, field: &str) -> Result<()> {
        let markers: usize = c
            .messages
            .iter()
            .map(|m| m.content.matches(IMAGE_MARKER).count())
            .sum::<usize>()
            + c.system
                .as_deref()
                .map_or(0, |s| s.matches(IMAGE_MARKER).count());
        if markers != n_images {
            return Err(self.err(
                field,
                format!(
                    "{n_images} image(s) but {markers} {IMAGE_MARKER} marker(s) in the conversation (each image needs one marker where it goes)"
                ),
            ));
        }
        Ok(())
    }

    fn llava(&self, v: &Value) -> Result<MultimodalRecord> {
        let obj = v.as_object().ok_or_else(|| {
            self.err(
                "<record>",
                format!("expected an object, found {}", json_type(v)),
            )
        })?;
        let id = match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(self.err(
                    "id",
                    format!("expected a string, found {}", json_type(other)),
                ));
            }
        };
        let images = self.images(obj, "image")?;
        let turns = obj
            .get("conversations")
            .ok_or_else(|| self.err("conversations", "missing"))?
            .as_array()
            .ok_or_else(|| self.err("conversations", "expected an array"))?;
        let mut system = None;
        let mut messages = Vec::with_capacity(turns.len());
        for (i, t) in turns.iter().enumerate() {
            let f = format!("conversations[{i}]");
            let t = t.as_object().ok_or_else(|| {
                self.err(&f, format!("expected an object, found {}", json_type(t)))
            })?;
            let from = self.string(
                t.get("from")
                    .ok_or_else(|| self.err(&format!("{f}.from"), "missing"))?,
                &format!("{f}.from"),
            )?;
            let value = self.string(
                t.get("value")
                    .ok_or_else(|| self.err(&format!("{f}.value"), "missing"))?,
                &format!("{f}.value"),
            )?;
            let role = match from.as_str() {
                "human" | "user" => Role::User,
                "gpt" | "assistant" => Role::Assistant,
                "system" if i == 0 => {
                    system = Some(value);
                    continue;
                }
                other => {
                    return Err(self.err(
                        &format!("{f}.from"),
                        format!("unknown speaker `{other}` (expected human, gpt, or system first)"),
                    ));
                }
            };
            messages.push(Message {
                role,
                content: value,
                extra: Map::new(),
            });
        }
        match messages.first() {
            None => return Err(self.err("conversations", "no human/gpt turns")),
            Some(m) if m.role != Role::User => {
                return Err(self.err("conversations", "the first turn must be from `human`"));
            }
            _ => {}
        }
        let conversation = Conversation {
            system,
            tools: Vec::new(),
            messages,
        };
        self.check_markers(&conversation, images.len(), "image")?;
        Ok(MultimodalRecord {
            id,
            conversation,
            images,
            source: self.path.to_path_buf(),
            index: self.index,
            images_field: "image",
        })
    }

    fn lmflow(&self, v: &Value) -> Result<MultimodalRecord> {
        let conversation =
            match Instance::from_json(DatasetType::Conversation, v, self.path, self.index)? {
                Instance::Conversation(c) => c,
                _ => return Err(self.err("<instance>", "not a conversation")),
            };
        let obj = v
            .as_object()
            .ok_or_else(|| self.err("<instance>", "expected an object"))?;
        let images = self.images(obj, "images")?;
        self.check_markers(&conversation, images.len(), "images")?;
        let id = obj.get("id").and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        Ok(MultimodalRecord {
            id,
            conversation,
            images,
            source: self.path.to_path_buf(),
            index: self.index,
            images_field: "images",
        })
    }
}

/// Reads a multimodal JSON file, or every `*.json` file of a folder (sorted by name, all of
/// one format). The format is detected: LLaVA's array or LMFlow's `conversation` object (see
/// the [module docs](self)). Relative image paths resolve against
/// [`MultimodalReadOptions::image_folder`], else against each JSON file's folder.
pub fn read_multimodal(
    path: impl AsRef<Path>,
    options: &MultimodalReadOptions,
) -> Result<(MultimodalFormat, Vec<MultimodalRecord>)> {
    let path = path.as_ref();
    if !path.is_dir() {
        let value = read_json(path)?;
        return parse_multimodal_value(&value, path, options);
    }
    let files: Vec<PathBuf> = crate::reader::dataset_files(path)?
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
        .collect();
    let mut out: Option<(MultimodalFormat, PathBuf, Vec<MultimodalRecord>)> = None;
    for file in files {
        let (format, records) = parse_multimodal_value(&read_json(&file)?, &file, options)?;
        match &mut out {
            None => out = Some((format, file, records)),
            Some((first_format, first, all)) => {
                if *first_format != format {
                    return Err(DatasetError::MixedTypes {
                        path: file,
                        found: format!("{format:?}"),
                        first: first.clone(),
                        expected: format!("{first_format:?}"),
                    });
                }
                all.extend(records);
            }
        }
    }
    out.map(|(format, _, records)| (format, records))
        .ok_or_else(|| DatasetError::Empty {
            path: path.to_path_buf(),
            message: "no *.json files in this folder".into(),
        })
}

/// Parses the JSON of a multimodal file; `path` names it in errors and anchors relative
/// image paths when no image folder is given.
pub fn parse_multimodal_value(
    value: &Value,
    path: &Path,
    options: &MultimodalReadOptions,
) -> Result<(MultimodalFormat, Vec<MultimodalRecord>)> {
    let default_folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let folder = options.image_folder.as_deref().unwrap_or(&default_folder);
    let ctx = |index| Ctx {
        path,
        index,
        folder,
        check: options.check_images,
    };
    let (format, records) = match value {
        Value::Array(items) => (
            MultimodalFormat::Llava,
            items
                .iter()
                .enumerate()
                .map(|(i, v)| ctx(i).llava(v))
                .collect::<Result<Vec<_>>>()?,
        ),
        Value::Object(obj) => {
            let ty = obj.get("type").and_then(Value::as_str).ok_or_else(|| DatasetError::Header {
                path: path.to_path_buf(),
                key: "type".into(),
                message: "missing (a multimodal file is a LLaVA JSON array or an LMFlow `conversation` object)".into(),
            })?;
            if ty != "conversation" {
                return Err(DatasetError::Header {
                    path: path.to_path_buf(),
                    key: "type".into(),
                    message: format!("multimodal data must have type `conversation`, found `{ty}`"),
                });
            }
            let instances = obj
                .get("instances")
                .and_then(Value::as_array)
                .ok_or_else(|| DatasetError::Header {
                    path: path.to_path_buf(),
                    key: "instances".into(),
                    message: "missing or not an array".into(),
                })?;
            (
                MultimodalFormat::LmflowConversation,
                instances
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ctx(i).lmflow(v))
                    .collect::<Result<Vec<_>>>()?,
            )
        }
        other => {
            return Err(DatasetError::Header {
                path: path.to_path_buf(),
                key: "<root>".into(),
                message: format!(
                    "expected a LLaVA JSON array or an LMFlow object, found {}",
                    json_type(other)
                ),
            });
        }
    };
    if records.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_path_buf(),
            message: "no records".into(),
        });
    }
    Ok((format, records))
}

/// A tokenized multimodal sample: image tokens expanded, labels masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultimodalSample {
    /// Token ids and labels (`-100` on prompts and on every image token).
    pub sample: TokenizedSample,
    /// The image files in the order of their token runs.
    pub images: Vec<PathBuf>,
    /// The record's images field (`image` or `images`), for error messages.
    pub images_field: &'static str,
    /// Image tokens per image.
    pub tokens_per_image: usize,
    /// The JSON file of the record.
    pub source: PathBuf,
    /// The record index.
    pub index: usize,
}

impl MultimodalSample {
    /// Loads and processes the sample's images (errors name the JSON file, record and image).
    pub fn load_pixels(&self, processor: &ImageProcessor) -> Result<Vec<PixelValues>> {
        let single = self.images_field == "image" && self.images.len() == 1;
        load_pixels(&self.images, processor, &self.source, self.index, |i| {
            if single {
                "image".to_string()
            } else {
                format!("{}[{i}]", self.images_field)
            }
        })
    }
}

/// Tokenizes [`MultimodalRecord`]s for a LLaVA model.
#[derive(Debug, Clone)]
pub struct MultimodalEncoder<'a> {
    encoder: &'a SampleEncoder<'a>,
    processor: &'a LlavaProcessor,
}

impl<'a> MultimodalEncoder<'a> {
    /// An encoder from a text [`SampleEncoder`] (tokenizer, chat template, block size,
    /// `train_on_prompt`) and the model's [`LlavaProcessor`].
    pub fn new(encoder: &'a SampleEncoder<'a>, processor: &'a LlavaProcessor) -> Self {
        Self { encoder, processor }
    }

    /// Renders, expands and tokenizes a record.
    ///
    /// Errors (naming the file, record and field): marker/image count mismatch, an image
    /// processor without a fixed output size, a tokenizer that splits the image token, or a
    /// `block_size` that cuts through the image tokens.
    pub fn encode(&self, record: &MultimodalRecord) -> Result<MultimodalSample> {
        let per_image = self.processor.num_image_tokens().ok_or_else(|| {
            record.field_err(
                record.images_field,
                "the image processor has no fixed output size (enable do_center_crop or an exact size)",
            )
        })?;
        let segments = self
            .encoder
            .render_conversation(&record.conversation)
            .map_err(|e| e.at(&record.source, record.index))?;
        let n_images = record.images.len();
        let total_markers: usize = segments
            .iter()
            .map(|s| s.text.matches(IMAGE_MARKER).count())
            .sum();
        if total_markers != n_images {
            return Err(record.field_err(
                record.images_field,
                format!(
                    "the rendered conversation has {total_markers} {IMAGE_MARKER} marker(s) but the record has {n_images} image(s) (does the chat template add markers?)"
                ),
            ));
        }
        let token = self.processor.image_token();
        let expanded: Vec<Segment> = segments
            .iter()
            .map(|s| {
                let k = s.text.matches(IMAGE_MARKER).count();
                let text = if token == IMAGE_MARKER {
                    expand_markers(&s.text, IMAGE_MARKER, &vec![per_image; k])?
                } else {
                    let replacement = token.repeat(per_image);
                    s.text.replace(IMAGE_MARKER, &replacement)
                };
                Ok(Segment {
                    text,
                    trained: s.trained,
                })
            })
            .collect::<Result<_>>()?;
        let mut sample = self.encoder.encode_segments(&expanded)?;
        let id = self.processor.image_token_id();
        let expected = n_images * per_image;
        let kept = sample.input_ids.iter().filter(|&&t| t == id).count();
        if !sample.truncated && kept != expected {
            return Err(record.field_err(
                "messages",
                format!(
                    "expected {expected} image tokens (id {id}) after tokenizing, found {kept}: the tokenizer does not keep {token:?} as one token, or the text contains it already"
                ),
            ));
        }
        if sample.truncated && kept != expected {
            return Err(record.field_err(
                "messages",
                format!(
                    "block_size {} cuts the image tokens ({kept} of {expected} kept, sample has {} tokens); raise block_size or shorten the record",
                    self.encoder.config().block_size,
                    sample.original_len
                ),
            ));
        }
        for (t, l) in sample.input_ids.iter().zip(sample.labels.iter_mut()) {
            if *t == id {
                *l = IGNORE_INDEX;
            }
        }
        Ok(MultimodalSample {
            sample,
            images: record.images.clone(),
            images_field: record.images_field,
            tokens_per_image: per_image,
            source: record.source.clone(),
            index: record.index,
        })
    }
}

/// A collated multimodal batch (plain data).
#[derive(Debug, Clone, PartialEq)]
pub struct MultimodalBatchData {
    /// The token rows (right-padded; see [`crate::batch::BatchData`]).
    pub text: BatchData,
    /// The images of all rows, row by row, in token order: `[n_images, 3, H, W]` row-major.
    pub pixel_values: Vec<f32>,
    /// `[n_images, 3, H, W]`; `n_images` is 0 when no row has an image.
    pub pixel_shape: [usize; 4],
}

/// Pads the samples' tokens (as [`collate_data`]) and stacks their images in order (the
/// i-th run of image tokens in row-major order is image i). `pixels[r]` are the processed
/// images of sample `r`; their counts must match the samples' image counts.
pub fn collate_multimodal(
    samples: &[&MultimodalSample],
    pixels: &[Vec<PixelValues>],
    pad_id: u32,
) -> Result<MultimodalBatchData> {
    if samples.len() != pixels.len() {
        return Err(DatasetError::Config(format!(
            "{} samples but pixel values for {}",
            samples.len(),
            pixels.len()
        )));
    }
    for (s, p) in samples.iter().zip(pixels) {
        if s.images.len() != p.len() {
            return Err(DatasetError::Field {
                path: s.source.clone(),
                index: s.index,
                field: "images".into(),
                message: format!(
                    "{} images but {} pixel values given",
                    s.images.len(),
                    p.len()
                ),
            });
        }
    }
    let rows: Vec<&TokenizedSample> = samples.iter().map(|s| &s.sample).collect();
    let text = collate_data(&rows, pad_id, None)?;
    let all: Vec<PixelValues> = pixels.iter().flatten().cloned().collect();
    let (pixel_values, pixel_shape) = if all.is_empty() {
        (Vec::new(), [0, 3, 0, 0])
    } else {
        stack_pixel_values(&all)?
    };
    Ok(MultimodalBatchData {
        text,
        pixel_values,
        pixel_shape,
    })
}
