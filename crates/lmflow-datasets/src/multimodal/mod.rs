//! Multimodal (LLaVA-style) data: CLIP image processing, `<image>` expansion and
//! image + conversation datasets.
//!
//! - [`image_processor`]: transformers' CLIP image processor (Pillow-exact resize, centre crop,
//!   rescale, normalise) producing plain `[3, H, W]` `f32` [`PixelValues`];
//! - [`processor`]: `LlavaProcessor`'s `<image>` expansion and the image token id;
//! - [`records`]: LLaVA JSON and LMFlow `conversation` + `images` files, tokenization with image
//!   tokens masked from the loss, and batch collation.
//!
//! This module has no model code: pixel values are `Vec<f32>` with a shape, for the model
//! (`lmflow-models`' LLaVA) to turn into tensors.

pub mod image_processor;
pub mod processor;
pub mod records;

pub use image_processor::{
    ImageBackend, ImageProcessor, ImageProcessorConfig, ImageSize, OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD, PixelValues, Resample, load_image, resize_pil, resize_torchvision,
    stack_pixel_values, to_rgb_white_background,
};
pub use processor::{
    LlavaProcessor, LlavaProcessorConfig, VisionFeatureSelectStrategy, expand_markers,
};
pub use records::{
    IMAGE_MARKER, MultimodalBatchData, MultimodalEncoder, MultimodalFormat, MultimodalReadOptions,
    MultimodalRecord, MultimodalSample, collate_multimodal, parse_multimodal_value,
    read_multimodal,
};
