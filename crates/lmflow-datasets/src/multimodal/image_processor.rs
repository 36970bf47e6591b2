//! CLIP's image processor as `transformers` applies it, for LLaVA-style models.
//!
//! The pipeline is transformers' `CLIPImageProcessorPil` (the `pil` backend of
//! `CLIPImageProcessor`, and `LlavaImageProcessor` without `do_pad`):
//!
//! 1. convert to RGB; images with transparency (RGBA, LA, PNG `tRNS`) are composited onto a
//!    white background as transformers' `convert_to_rgb` does (Pillow's `alpha_composite`
//!    arithmetic), grayscale is replicated to three channels;
//! 2. resize: `size.shortest_edge` scales the short side to `shortest_edge` and the long side
//!    to `int(shortest_edge * long / short)`; `{height, width}` resizes to exactly that size.
//!    The resampler is Pillow's two-pass separable filter (horizontal pass, then vertical, each
//!    rounded to `uint8`, with Pillow's 22-bit fixed-point coefficients and its support-scaled,
//!    antialiasing kernels), so the resized `uint8` image equals Pillow's bit for bit;
//! 3. centre crop to `crop_size` with transformers' offsets (`(H - h) // 2`, zero padding when
//!    the image is smaller);
//! 4. rescale (`x * rescale_factor`, computed in `f64` and stored as `f32`) and normalise
//!    (`(x - mean) / std` in `f32`).
//!
//! # Which transformers path this matches
//! In transformers 5.x, `AutoImageProcessor` / `LlavaProcessor` pick the **torchvision** backend
//! (class `CLIPImageProcessor`) when torchvision is installed and the **PIL** backend
//! (`CLIPImageProcessorPil`) otherwise, or with `backend="pil"`. Both are available here
//! ([`ImageBackend`]); the default is [`ImageBackend::Pil`]:
//!
//! - [`ImageBackend::Pil`] is exact: on the test images (RGB, RGBA, grayscale, palette; up-
//!   and downscaled; bicubic and bilinear; 32 px and the 224 px default) the pixel values are
//!   bit-identical to transformers 5.24 with Pillow 13;
//! - [`ImageBackend::Torchvision`] reproduces torch's antialiased float resize (horizontal then
//!   vertical pass without rounding in between, clamp, round half to even), bit-identical on the
//!   test images to `torch.nn.functional.interpolate(mode="bicubic", antialias=True)` + clamp +
//!   round, which is what torchvision's resize does on `uint8` tensors (torchvision itself was
//!   not installed where the fixtures were made).
//!
//! The two backends agree exactly for an image already at the target size. After a resize they
//! differ by at most one `uint8` level in smooth areas (0.015 after normalising with the OpenAI
//! CLIP std), up to 6 levels (0.085) next to hard transparency edges at 32 px and 14 levels
//! (0.21) for a ×11 upscale to 224 px; the mean difference is 0.002-0.0035.
//!
//! Decoding: PNG and JPEG through the `image` crate. PNG decoding is lossless and equal to
//! Pillow's; JPEG decoders differ (zune-jpeg here, libjpeg-turbo in Pillow): on the test JPEG
//! (quality 90, 4:2:0) by up to 4 levels per pixel (mean 0.42), which gives pixel values up
//! to 0.044 apart after processing.
//!
//! # Example
//! ```
//! use lmflow_datasets::multimodal::{ImageProcessor, ImageProcessorConfig};
//!
//! let processor = ImageProcessor::new(ImageProcessorConfig::default());
//! let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(300, 200, image::Rgb([255, 0, 0])));
//! let pixels = processor.preprocess(&image)?;
//! assert_eq!(pixels.shape, [3, 224, 224]);
//! # Ok::<(), lmflow_datasets::DatasetError>(())
//! ```

use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DatasetError, Result};

/// OpenAI CLIP's normalisation mean (transformers' `OPENAI_CLIP_MEAN`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's normalisation std (transformers' `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Resampling filters, numbered as Pillow's `Image.Resampling` (the `resample` key of
/// `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resample {
    /// 0: nearest neighbour (not supported by [`resize_pil`]).
    Nearest,
    /// 1: Lanczos (a = 3).
    Lanczos,
    /// 2: bilinear (triangle).
    Bilinear,
    /// 3: bicubic (a = -0.5), CLIP's default.
    Bicubic,
    /// 4: box.
    Box,
    /// 5: Hamming.
    Hamming,
}

impl Resample {
    /// The filter with Pillow's number `n`.
    pub fn from_pil(n: u64) -> Option<Self> {
        Some(match n {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            _ => return None,
        })
    }

    /// Pillow's support radius of the filter at scale 1.
    fn support(self) -> f64 {
        match self {
            Resample::Nearest | Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    /// Pillow's filter function (same expressions, in `f64`).
    fn eval(self, x: f64) -> f64 {
        match self {
            Resample::Nearest | Resample::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Resample::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes the constants as C floats.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                fn sinc(x: f64) -> f64 {
                    if x == 0.0 {
                        1.0
                    } else {
                        let x = x * std::f64::consts::PI;
                        x.sin() / x
                    }
                }
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// The `size` of an image processor config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageSize {
    /// `{"shortest_edge": n}` (or a bare integer): the short side becomes `n`, the aspect
    /// ratio is kept.
    ShortestEdge(u32),
    /// `{"height": h, "width": w}`: resize to exactly this size.
    Exact {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
}

/// The settings of a CLIP-style image processor (`preprocessor_config.json`).
///
/// Missing keys take `CLIPImageProcessor`'s defaults (see [`Default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageProcessorConfig {
    /// Resize (`do_resize`).
    pub do_resize: bool,
    /// Target size (`size`).
    pub size: ImageSize,
    /// Resampling filter (`resample`, Pillow's number; 3 = bicubic).
    pub resample: Resample,
    /// Centre crop (`do_center_crop`).
    pub do_center_crop: bool,
    /// Crop `(height, width)` (`crop_size`).
    pub crop_size: (u32, u32),
    /// Multiply by `rescale_factor` (`do_rescale`).
    pub do_rescale: bool,
    /// The rescale factor (`rescale_factor`, default 1/255).
    pub rescale_factor: f64,
    /// Normalise with `image_mean` / `image_std` (`do_normalize`).
    pub do_normalize: bool,
    /// Per-channel mean (`image_mean`).
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation (`image_std`).
    pub image_std: [f64; 3],
    /// Convert to RGB first (`do_convert_rgb`).
    pub do_convert_rgb: bool,
}

impl Default for ImageProcessorConfig {
    /// `CLIPImageProcessor`'s defaults: shortest edge 224, bicubic, centre crop 224×224,
    /// rescale 1/255, OpenAI CLIP mean/std, convert to RGB.
    fn default() -> Self {
        Self {
            do_resize: true,
            size: ImageSize::ShortestEdge(224),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
        }
    }
}

fn image_err(path: &Path, message: impl Into<String>) -> DatasetError {
    DatasetError::Image {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| DatasetError::Json {
        path: path.to_path_buf(),
        line: None,
        source,
    })
}

impl ImageProcessorConfig {
    /// Reads `dir/preprocessor_config.json`, or else the `image_processor` object of
    /// `dir/processor_config.json` (the order transformers uses).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let pre = dir.join("preprocessor_config.json");
        if pre.is_file() {
            return Self::from_json(&read_json(&pre)?, &pre);
        }
        let proc_path = dir.join("processor_config.json");
        if proc_path.is_file() {
            let v = read_json(&proc_path)?;
            let inner = v.get("image_processor").ok_or_else(|| {
                image_err(
                    &proc_path,
                    "no `image_processor` object (and no preprocessor_config.json next to it)",
                )
            })?;
            return Self::from_json(inner, &proc_path);
        }
        Err(image_err(
            dir,
            "no image processor config: neither preprocessor_config.json nor processor_config.json",
        ))
    }

    /// Parses an image processor config object; `source` names the file in errors.
    pub fn from_json(value: &Value, source: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| image_err(source, "image processor config: expected a JSON object"))?;
        let d = Self::default();
        let err = |key: &str, msg: &str| image_err(source, format!("key `{key}`: {msg}"));
        let boolean = |key: &str, default: bool| -> Result<bool> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(err(key, "expected true or false")),
            }
        };
        let uint = |key: &str, v: &Value| -> Result<u32> {
            v.as_u64()
                .filter(|&n| n > 0 && n <= u64::from(u32::MAX))
                .map(|n| n as u32)
                .ok_or_else(|| err(key, &format!("expected a positive integer, found {v}")))
        };
        let triple = |key: &str, default: [f64; 3]| -> Result<[f64; 3]> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => {
                    let x = n.as_f64().ok_or_else(|| err(key, "not a finite number"))?;
                    Ok([x; 3])
                }
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0.0; 3];
                    for (o, v) in out.iter_mut().zip(a) {
                        *o = v
                            .as_f64()
                            .ok_or_else(|| err(key, "expected three numbers"))?;
                    }
                    Ok(out)
                }
                Some(v) => Err(err(
                    key,
                    &format!("expected a number or three numbers (RGB), found {v}"),
                )),
            }
        };
        if boolean("do_pad", false)? {
            return Err(err(
                "do_pad",
                "padding images to a square (LlavaImageProcessor `do_pad: true`) is not supported",
            ));
        }
        let size = match obj.get("size") {
            None | Some(Value::Null) => d.size,
            Some(v @ Value::Number(_)) => ImageSize::ShortestEdge(uint("size", v)?),
            Some(Value::Object(m)) => {
                if let Some(s) = m.get("shortest_edge") {
                    if m.contains_key("longest_edge") {
                        return Err(err("size", "`longest_edge` is not supported"));
                    }
                    ImageSize::ShortestEdge(uint("size.shortest_edge", s)?)
                } else if let (Some(h), Some(w)) = (m.get("height"), m.get("width")) {
                    ImageSize::Exact {
                        height: uint("size.height", h)?,
                        width: uint("size.width", w)?,
                    }
                } else {
                    return Err(err(
                        "size",
                        "expected {\"shortest_edge\": n} or {\"height\": h, \"width\": w}",
                    ));
                }
            }
            Some(v) => return Err(err("size", &format!("unsupported value {v}"))),
        };
        let crop_size = match obj.get("crop_size") {
            None | Some(Value::Null) => d.crop_size,
            Some(v @ Value::Number(_)) => {
                let n = uint("crop_size", v)?;
                (n, n)
            }
            Some(Value::Object(m)) => match (m.get("height"), m.get("width")) {
                (Some(h), Some(w)) => (uint("crop_size.height", h)?, uint("crop_size.width", w)?),
                _ => return Err(err("crop_size", "expected {\"height\": h, \"width\": w}")),
            },
            Some(v) => return Err(err("crop_size", &format!("unsupported value {v}"))),
        };
        let resample = match obj.get("resample") {
            None | Some(Value::Null) => d.resample,
            Some(v) => v.as_u64().and_then(Resample::from_pil).ok_or_else(|| {
                err(
                    "resample",
                    &format!("expected a Pillow filter number 0-5, found {v}"),
                )
            })?,
        };
        let rescale_factor = match obj.get("rescale_factor") {
            None | Some(Value::Null) => d.rescale_factor,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| err("rescale_factor", "expected a number"))?,
        };
        let image_std = triple("image_std", d.image_std)?;
        if image_std.contains(&0.0) {
            return Err(err("image_std", "a standard deviation is 0"));
        }
        Ok(Self {
            do_resize: boolean("do_resize", d.do_resize)?,
            size,
            resample,
            do_center_crop: boolean("do_center_crop", d.do_center_crop)?,
            crop_size,
            do_rescale: boolean("do_rescale", d.do_rescale)?,
            rescale_factor,
            do_normalize: boolean("do_normalize", d.do_normalize)?,
            image_mean: triple("image_mean", d.image_mean)?,
            image_std,
            do_convert_rgb: boolean("do_convert_rgb", d.do_convert_rgb)?,
        })
    }

    /// The `(height, width)` the resize step gives for an input of `(height, width)`
    /// (transformers' `get_resize_output_image_size` with `default_to_square=False`).
    pub fn resized_size(&self, height: usize, width: usize) -> (usize, usize) {
        match self.size {
            ImageSize::Exact { height, width } => (height as usize, width as usize),
            ImageSize::ShortestEdge(s) => {
                let s = s as usize;
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python: int(size * long / short), a float division truncated.
                let new_long = ((s as f64) * (long as f64) / (short as f64)) as usize;
                if width <= height {
                    (new_long, s)
                } else {
                    (s, new_long)
                }
            }
        }
    }

    /// The `(height, width)` of every processed image when it does not depend on the input
    /// (centre crop on, or an exact resize); `None` otherwise.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        if self.do_center_crop {
            Some((self.crop_size.0 as usize, self.crop_size.1 as usize))
        } else if let (true, ImageSize::Exact { height, width }) = (self.do_resize, self.size) {
            Some((height as usize, width as usize))
        } else {
            None
        }
    }
}

/// Processed pixel values of one image: `[3, height, width]`, row-major (channel, row,
/// column), as one entry of transformers' `pixel_values`.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// The values, `shape[0] * shape[1] * shape[2]` of them.
    pub data: Vec<f32>,
    /// `[3, height, width]`.
    pub shape: [usize; 3],
}

impl PixelValues {
    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.shape[1]
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.shape[2]
    }
}

/// Stacks images of one size into a `[n_images, 3, height, width]` buffer (order kept).
///
/// Errors when `images` is empty or the sizes differ.
pub fn stack_pixel_values(images: &[PixelValues]) -> Result<(Vec<f32>, [usize; 4])> {
    let first = images
        .first()
        .ok_or_else(|| DatasetError::Config("cannot stack zero images".into()))?;
    let mut data = Vec::with_capacity(first.data.len() * images.len());
    for (i, img) in images.iter().enumerate() {
        if img.shape != first.shape {
            return Err(DatasetError::Config(format!(
                "cannot stack images of different sizes: image 0 is {:?}, image {i} is {:?}",
                first.shape, img.shape
            )));
        }
        data.extend_from_slice(&img.data);
    }
    let [c, h, w] = first.shape;
    Ok((data, [images.len(), c, h, w]))
}

/// Opens and decodes an image file (PNG or JPEG); errors name the file.
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let reader = image::ImageReader::open(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = reader
        .with_guessed_format()
        .map_err(|e| image_err(path, format!("cannot read image: {e}")))?;
    reader
        .decode()
        .map_err(|e| image_err(path, format!("cannot decode image: {e}")))
}

/// Pillow's `alpha_composite` of one RGBA pixel over opaque white (integer arithmetic with 7
/// extra bits, as `AlphaComposite.c`).
fn over_white(p: [u8; 4]) -> [u8; 3] {
    let a = u32::from(p[3]);
    if a == 0 {
        return [255, 255, 255];
    }
    const PB: u32 = 7;
    let shift_div255 = |x: u32| ((x >> 8) + x) >> 8;
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PB) / outa255;
    let coef2 = 255 * (1 << PB) - coef1;
    let mut out = [0u8; 3];
    for (o, &c) in out.iter_mut().zip(&p[..3]) {
        let tmp = u32::from(c) * coef1 + 255 * coef2;
        *o = (shift_div255(tmp + (0x80 << PB)) >> PB) as u8;
    }
    out
}

/// Converts to 8-bit RGB as transformers' `convert_to_rgb`: transparency is composited onto
/// white, grayscale replicated. 16-bit and float images are first reduced to 8 bits by the
/// `image` crate (Pillow may treat such modes differently).
pub fn to_rgb_white_background(image: &DynamicImage) -> RgbImage {
    if image.color().has_alpha() {
        let rgba = image.to_rgba8();
        let (w, h) = rgba.dimensions();
        let mut out = RgbImage::new(w, h);
        for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
            o.0 = over_white(p.0);
        }
        out
    } else {
        image.to_rgb8()
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output index, the first input
/// index and the fixed-point weights.
fn precompute_coeffs(in_size: usize, out_size: usize, filter: Resample) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).max(0) as usize;
            let mut k: Vec<f64> = (0..n)
                .map(|x| filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                for w in &mut k {
                    *w /= ww;
                }
            }
            let fixed = k
                .iter()
                .map(|&w| {
                    let s = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (-0.5 + s) as i32
                    } else {
                        (0.5 + s) as i32
                    }
                })
                .collect();
            (xmin as usize, fixed)
        })
        .collect()
}

fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One horizontal pass (`[h, w, 3]` -> `[h, out_w, 3]`), rounded to `uint8`.
fn pass_horizontal(src: &[u8], w: usize, h: usize, out_w: usize, filter: Resample) -> Vec<u8> {
    let coeffs = precompute_coeffs(w, out_w, filter);
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; h * out_w * 3];
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for (xx, (xmin, k)) in coeffs.iter().enumerate() {
            let mut ss = [half; 3];
            for (x, &wgt) in k.iter().enumerate() {
                let p = (x + xmin) * 3;
                for c in 0..3 {
                    ss[c] = ss[c].wrapping_add(i32::from(row[p + c]).wrapping_mul(wgt));
                }
            }
            let o = (y * out_w + xx) * 3;
            for c in 0..3 {
                out[o + c] = clip8(ss[c]);
            }
        }
    }
    out
}

/// One vertical pass (`[h, w, 3]` -> `[out_h, w, 3]`), rounded to `uint8`.
fn pass_vertical(src: &[u8], w: usize, h: usize, out_h: usize, filter: Resample) -> Vec<u8> {
    let coeffs = precompute_coeffs(h, out_h, filter);
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; out_h * w * 3];
    for (yy, (ymin, k)) in coeffs.iter().enumerate() {
        for x in 0..w {
            let mut ss = [half; 3];
            for (y, &wgt) in k.iter().enumerate() {
                let p = ((y + ymin) * w + x) * 3;
                for c in 0..3 {
                    ss[c] = ss[c].wrapping_add(i32::from(src[p + c]).wrapping_mul(wgt));
                }
            }
            let o = (yy * w + x) * 3;
            for c in 0..3 {
                out[o + c] = clip8(ss[c]);
            }
        }
    }
    out
}

/// Resizes an RGB image to `width` × `height` exactly as Pillow's `Image.resize` (no
/// `reducing_gap`) does for 8-bit images: two separable passes with Pillow's support-scaled
/// (antialiasing) kernels and 22-bit fixed-point weights, each pass rounded and clipped to
/// `uint8`.
///
/// The pass order matters for the rounding. Pillow 13 (the version the fixtures were made
/// with) runs the vertical pass first when the height shrinks and `2 (width_out - width_in) >
/// height_out - height_in`, and the horizontal pass first otherwise; this rule was measured
/// (every one of ~640 random size pairs with bicubic, bilinear and Lanczos filters matched
/// Pillow bit for bit with it, and each case matched only one order). Older Pillow versions
/// always run the horizontal pass first, which differs by at most one level in those cases.
///
/// [`Resample::Nearest`] is not supported (Pillow uses a different algorithm for it).
pub fn resize_pil(
    image: &RgbImage,
    width: usize,
    height: usize,
    filter: Resample,
) -> Result<RgbImage> {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    if (in_w, in_h) == (width, height) {
        return Ok(image.clone());
    }
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return Err(DatasetError::Config(format!(
            "cannot resize a {in_w}x{in_h} image to {width}x{height}"
        )));
    }
    if filter == Resample::Nearest {
        return Err(DatasetError::Config(
            "resample 0 (nearest) is not supported; use 3 (bicubic) or 2 (bilinear)".into(),
        ));
    }
    let src = image.as_raw();
    let need_h = width != in_w;
    let need_v = height != in_h;
    let vertical_first = need_h
        && need_v
        && height < in_h
        && 2 * (width as i64 - in_w as i64) > height as i64 - in_h as i64;
    let out = if vertical_first {
        let tmp = pass_vertical(src, in_w, in_h, height, filter);
        pass_horizontal(&tmp, in_w, height, width, filter)
    } else {
        let tmp = if need_h {
            pass_horizontal(src, in_w, in_h, width, filter)
        } else {
            src.to_vec()
        };
        if need_v {
            pass_vertical(&tmp, width, in_h, height, filter)
        } else {
            tmp
        }
    };
    RgbImage::from_raw(width as u32, height as u32, out)
        .ok_or_else(|| DatasetError::Config("internal error: resized buffer size".into()))
}

/// torch's antialiased interpolation weights (`_compute_weights_aa`, `float` tensors): per
/// output index, the first input index and the normalised weights.
fn torch_aa_weights(
    in_size: usize,
    out_size: usize,
    filter: Resample,
) -> Result<Vec<(usize, Vec<f32>)>> {
    let interp: f32 = match filter {
        Resample::Bicubic => 4.0,
        Resample::Bilinear => 2.0,
        other => {
            return Err(DatasetError::Config(format!(
                "the torchvision backend supports bicubic and bilinear resampling, not {other:?}"
            )));
        }
    };
    let eval = |x: f32| -> f32 {
        let x = x.abs();
        match filter {
            Resample::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            _ => {
                const A: f32 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
                } else {
                    0.0
                }
            }
        }
    };
    let scale = in_size as f32 / out_size as f32;
    let support = if scale >= 1.0 {
        interp * 0.5 * scale
    } else {
        interp * 0.5
    };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let max_size = (support.ceil() as i64) * 2 + 1;
    Ok((0..out_size)
        .map(|i| {
            let center = (f64::from(scale) * (i as f64 + 0.5)) as f32;
            let xmin = ((f64::from(center) - f64::from(support) + 0.5) as i64).max(0);
            let xsize = (((f64::from(center) + f64::from(support) + 0.5) as i64)
                .min(in_size as i64)
                - xmin)
                .clamp(0, max_size);
            let mut w: Vec<f32> = (0..xsize)
                .map(|j| {
                    eval(
                        (((j + xmin) as f64 - f64::from(center) + 0.5) * f64::from(invscale))
                            as f32,
                    )
                })
                .collect();
            let total: f32 = w.iter().fold(0.0, |a, &b| a + b);
            if total != 0.0 {
                for x in &mut w {
                    *x /= total;
                }
            }
            (xmin as usize, w)
        })
        .collect())
}

/// Resizes as transformers' torchvision backend does for a `uint8` image: torch's
/// antialiased `interpolate` on `float` (horizontal pass, then vertical, no rounding in
/// between), then clamp to 0..=255 and round half to even.
pub fn resize_torchvision(
    image: &RgbImage,
    width: usize,
    height: usize,
    filter: Resample,
) -> Result<RgbImage> {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    if (in_w, in_h) == (width, height) {
        return Ok(image.clone());
    }
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return Err(DatasetError::Config(format!(
            "cannot resize a {in_w}x{in_h} image to {width}x{height}"
        )));
    }
    let src: Vec<f32> = image.as_raw().iter().map(|&v| f32::from(v)).collect();
    let (tmp, tmp_w) = if width != in_w {
        let wts = torch_aa_weights(in_w, width, filter)?;
        let mut out = vec![0f32; in_h * width * 3];
        for y in 0..in_h {
            for (xx, (xmin, k)) in wts.iter().enumerate() {
                for c in 0..3 {
                    let mut t = 0f32;
                    for (j, &wt) in k.iter().enumerate() {
                        let v = src[(y * in_w + xmin + j) * 3 + c] * wt;
                        t = if j == 0 { v } else { t + v };
                    }
                    out[(y * width + xx) * 3 + c] = t;
                }
            }
        }
        (out, width)
    } else {
        (src, in_w)
    };
    let out = if height != in_h {
        let wts = torch_aa_weights(in_h, height, filter)?;
        let mut out = vec![0f32; height * tmp_w * 3];
        for (yy, (ymin, k)) in wts.iter().enumerate() {
            for x in 0..tmp_w {
                for c in 0..3 {
                    let mut t = 0f32;
                    for (j, &wt) in k.iter().enumerate() {
                        let v = tmp[((ymin + j) * tmp_w + x) * 3 + c] * wt;
                        t = if j == 0 { v } else { t + v };
                    }
                    out[(yy * tmp_w + x) * 3 + c] = t;
                }
            }
        }
        out
    } else {
        tmp
    };
    let bytes = out
        .iter()
        .map(|&v| v.clamp(0.0, 255.0).round_ties_even() as u8)
        .collect();
    RgbImage::from_raw(width as u32, height as u32, bytes)
        .ok_or_else(|| DatasetError::Config("internal error: resized buffer size".into()))
}

/// Centre crop as transformers' `center_crop` (numpy): offset `(H - h) // 2`, zero padding
/// around an image smaller than the crop (transformers pads by `ceil((h - H) / 2)` before the
/// cut, which places source row `(H - h) // 2 + y` at output row `y` in every case).
///
/// The torchvision backend pads by `(h - H) // 2` before the cut instead, which differs by one
/// pixel for odd padding.
fn center_crop(image: &RgbImage, crop_h: usize, crop_w: usize, backend: ImageBackend) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if (w, h) == (crop_w, crop_h) {
        return image.clone();
    }
    let offset = |size: usize, crop: usize| -> i64 {
        let d = size as i64 - crop as i64;
        match backend {
            // Python floor division (values may be negative).
            ImageBackend::Pil => d.div_euclid(2),
            ImageBackend::Torchvision if d < 0 => -((-d) / 2),
            ImageBackend::Torchvision => d / 2,
        }
    };
    let top = offset(h, crop_h);
    let left = offset(w, crop_w);
    let src = image.as_raw();
    let mut out = RgbImage::new(crop_w as u32, crop_h as u32);
    for y in 0..crop_h {
        let sy = top + y as i64;
        if sy < 0 || sy as usize >= h {
            continue;
        }
        for x in 0..crop_w {
            let sx = left + x as i64;
            if sx < 0 || sx as usize >= w {
                continue;
            }
            let p = (sy as usize * w + sx as usize) * 3;
            out.get_pixel_mut(x as u32, y as u32).0 = [src[p], src[p + 1], src[p + 2]];
        }
    }
    out
}

/// Which transformers backend to reproduce (they differ only when an image is resized).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageBackend {
    /// `CLIPImageProcessorPil` (transformers without torchvision, or `backend="pil"`):
    /// Pillow's fixed-point two-pass resize, bit-exact.
    #[default]
    Pil,
    /// `CLIPImageProcessor` with torchvision (transformers' default when torchvision is
    /// installed): torch's antialiased float resize (horizontal then vertical pass, no rounding
    /// in between), clamped and rounded half-to-even to `uint8`; bicubic and bilinear only.
    Torchvision,
}

/// A CLIP image processor (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    config: ImageProcessorConfig,
    backend: ImageBackend,
}

impl ImageProcessor {
    /// A processor with these settings.
    pub fn new(config: ImageProcessorConfig) -> Self {
        Self {
            config,
            backend: ImageBackend::Pil,
        }
    }

    /// The same processor reproducing another transformers backend.
    pub fn with_backend(mut self, backend: ImageBackend) -> Self {
        self.backend = backend;
        self
    }

    /// The backend reproduced.
    pub fn backend(&self) -> ImageBackend {
        self.backend
    }

    /// Reads the config of a model/processor folder ([`ImageProcessorConfig::from_dir`]).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(ImageProcessorConfig::from_dir(dir)?))
    }

    /// The settings.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// `(height, width)` of every output, when fixed by the config.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        self.config.output_size()
    }

    /// The `uint8` RGB image after conversion, resize and centre crop (before rescale and
    /// normalisation).
    pub fn prepare_rgb(&self, image: &DynamicImage) -> Result<RgbImage> {
        let c = &self.config;
        let rgb = if c.do_convert_rgb {
            to_rgb_white_background(image)
        } else {
            match image {
                DynamicImage::ImageRgb8(rgb) => rgb.clone(),
                other => {
                    return Err(DatasetError::Config(format!(
                        "do_convert_rgb is false but the image is {:?}, not 8-bit RGB",
                        other.color()
                    )));
                }
            }
        };
        let rgb = if c.do_resize {
            let (h, w) = c.resized_size(rgb.height() as usize, rgb.width() as usize);
            match self.backend {
                ImageBackend::Pil => resize_pil(&rgb, w, h, c.resample)?,
                ImageBackend::Torchvision => resize_torchvision(&rgb, w, h, c.resample)?,
            }
        } else {
            rgb
        };
        Ok(if c.do_center_crop {
            center_crop(
                &rgb,
                c.crop_size.0 as usize,
                c.crop_size.1 as usize,
                self.backend,
            )
        } else {
            rgb
        })
    }

    /// Processes one image into `[3, H, W]` pixel values.
    pub fn preprocess(&self, image: &DynamicImage) -> Result<PixelValues> {
        let rgb = self.prepare_rgb(image)?;
        Ok(self.rescale_normalize(&rgb))
    }

    /// Loads and processes an image file; errors name the file.
    pub fn preprocess_path(&self, path: impl AsRef<Path>) -> Result<PixelValues> {
        let path = path.as_ref();
        let image = load_image(path)?;
        self.preprocess(&image).map_err(|e| match e {
            DatasetError::Config(message) => image_err(path, message),
            other => other,
        })
    }

    /// Processes several image files (in order).
    pub fn preprocess_paths(&self, paths: &[PathBuf]) -> Result<Vec<PixelValues>> {
        paths.iter().map(|p| self.preprocess_path(p)).collect()
    }

    /// Rescale and normalise as transformers' numpy `rescale` (f64 product stored as f32)
    /// and `normalize` (f32), channel-first.
    fn rescale_normalize(&self, rgb: &RgbImage) -> PixelValues {
        let c = &self.config;
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let mean = c.image_mean.map(|m| m as f32);
        let std = c.image_std.map(|s| s as f32);
        // torchvision backend: rescale folded into mean/std, in f32.
        let inv = (1.0 / c.rescale_factor) as f32;
        let fused = self.backend == ImageBackend::Torchvision && c.do_rescale && c.do_normalize;
        let (tv_mean, tv_std) = (mean.map(|m| m * inv), std.map(|s| s * inv));
        let raw = rgb.as_raw();
        let mut data = vec![0f32; 3 * h * w];
        for ch in 0..3 {
            let plane = &mut data[ch * h * w..(ch + 1) * h * w];
            for (i, v) in plane.iter_mut().enumerate() {
                let x = raw[i * 3 + ch];
                if fused {
                    *v = (f32::from(x) - tv_mean[ch]) / tv_std[ch];
                    continue;
                }
                let mut f = if c.do_rescale && self.backend == ImageBackend::Torchvision {
                    f32::from(x) * c.rescale_factor as f32
                } else if c.do_rescale {
                    (f64::from(x) * c.rescale_factor) as f32
                } else {
                    f32::from(x)
                };
                if c.do_normalize {
                    f = (f - mean[ch]) / std[ch];
                }
                *v = f;
            }
        }
        PixelValues {
            data,
            shape: [3, h, w],
        }
    }
}
