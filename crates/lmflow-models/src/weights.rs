//! Reading and writing Hub checkpoints in the safetensors format.
//!
//! [`WeightSource`] opens a model folder's `model.safetensors`, or the shards listed by
//! `model.safetensors.index.json`, memory-maps them and hands out tensors by their Hub name,
//! converted from the stored dtype (F32, F16, BF16 or F64) to the requested one and checked
//! against the shape the configuration implies. [`save_safetensors`] writes tensors back with
//! `{"format": "pt"}` metadata, as `transformers` expects.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use lmflow_peft::Linear;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata, SafeTensorError, TensorInfo};

use crate::error::ModelError;

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One memory-mapped safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    mmap: memmap2::Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Self, ModelError> {
        let file = std::fs::File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile {
                    path: path.to_path_buf(),
                    what: "checkpoint shard".into(),
                }
            } else {
                ModelError::io(path, e)
            }
        })?;
        // SAFETY: the map is read-only and lives as long as `Shard`; the header is validated
        // against the mapped length below, so every tensor range lies inside the map. Changing
        // the file while it is mapped is the caller's responsibility, as with every mmap reader.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| safetensors_error(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            header_len,
            metadata,
        })
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = 8 + self.header_len + info.data_offsets.0;
        let end = 8 + self.header_len + info.data_offsets.1;
        &self.mmap[start..end]
    }
}

fn safetensors_error(path: &Path, err: SafeTensorError) -> ModelError {
    let message = match err {
        SafeTensorError::MetadataIncompleteBuffer => {
            "the file size does not match its header: truncated or incomplete download".to_string()
        }
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => {
            "the header is cut short: truncated download or not a safetensors file".to_string()
        }
        other => other.to_string(),
    };
    ModelError::Safetensors {
        path: path.to_path_buf(),
        message,
    }
}

/// The tensors of a checkpoint (single file or sharded), loaded on demand onto one device in
/// one float dtype.
pub struct WeightSource {
    root: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name -> index into `shards`.
    index: HashMap<String, usize>,
    device: Device,
    dtype: FloatDType,
    used: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for WeightSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightSource")
            .field("root", &self.root)
            .field("shards", &self.shards.len())
            .field("tensors", &self.index.len())
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl WeightSource {
    /// Opens the checkpoint of a model folder: `model.safetensors.index.json` (sharded) when
    /// present, otherwise `model.safetensors`. Tensors are produced on `device` in `dtype`.
    pub fn open(dir: &Path, device: &Device, dtype: FloatDType) -> Result<Self, ModelError> {
        let index_path = dir.join(INDEX_FILE);
        if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    ModelError::config(&index_path, "weight_map", "missing or not an object")
                })?;
            let mut files: Vec<String> = Vec::new();
            let mut wanted: HashMap<String, String> = HashMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    ModelError::config(&index_path, &format!("weight_map.{name}"), "not a string")
                })?;
                check_shard_name(&index_path, name, file)?;
                if !files.iter().any(|f| f == file) {
                    files.push(file.to_string());
                }
                wanted.insert(name.clone(), file.to_string());
            }
            files.sort();
            let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
            let source = Self::from_files(dir, &paths, device, dtype)?;
            // Every tensor the index promises must be in the shard it names.
            for (name, file) in &wanted {
                let Some(&i) = source.index.get(name) else {
                    return Err(ModelError::MissingTensor {
                        path: dir.join(file),
                        name: name.clone(),
                    });
                };
                if source.shards[i].path != dir.join(file) {
                    tracing::warn!(
                        "{}: tensor `{name}` is listed in {file} but found in {}",
                        index_path.display(),
                        source.shards[i].path.display()
                    );
                }
            }
            Ok(source)
        } else {
            let single = dir.join(SINGLE_FILE);
            if !single.is_file() {
                let pickles = pickle_files(dir);
                let what = if pickles.is_empty() {
                    format!("model weights (neither {SINGLE_FILE} nor {INDEX_FILE} exists)")
                } else {
                    format!(
                        "model weights: the folder has only pickle checkpoints ({}); lmflow \
                         reads safetensors only and never executes pickle. Convert them with \
                         transformers: `AutoModelForCausalLM.from_pretrained(dir)\
                         .save_pretrained(dir, safe_serialization=True)` in an environment \
                         you trust",
                        pickles.join(", ")
                    )
                };
                return Err(ModelError::MissingFile { path: single, what });
            }
            Self::from_files(dir, &[single], device, dtype)
        }
    }

    /// Opens explicit safetensors files (their tensors must have distinct names).
    pub fn from_files(
        root: &Path,
        paths: &[PathBuf],
        device: &Device,
        dtype: FloatDType,
    ) -> Result<Self, ModelError> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            let shard = Shard::open(path)?;
            for name in shard.metadata.tensors().keys() {
                if index.insert(name.clone(), shards.len()).is_some() {
                    return Err(ModelError::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}` also appears in another shard"),
                    });
                }
            }
            shards.push(shard);
        }
        Ok(Self {
            root: root.to_path_buf(),
            shards,
            index,
            device: device.clone(),
            dtype,
            used: Mutex::new(BTreeSet::new()),
        })
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The float dtype tensors are converted to.
    pub fn dtype(&self) -> FloatDType {
        self.dtype
    }

    /// Bytes all tensors take once converted to [`WeightSource::dtype`] (from the headers;
    /// nothing is read).
    pub fn loaded_bytes(&self) -> u64 {
        let size: u64 = match self.dtype {
            FloatDType::F64 => 8,
            FloatDType::F16 | FloatDType::BF16 => 2,
            FloatDType::F32 | FloatDType::Flex32 => 4,
        };
        self.shards
            .iter()
            .flat_map(|s| s.metadata.tensors().into_values())
            .map(|info| {
                info.shape
                    .iter()
                    .fold(size, |n, d| n.saturating_mul(*d as u64))
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        let shard = &self.shards[*self.index.get(name)?];
        shard.info(name).map(|i| i.shape.as_slice())
    }

    /// The stored dtype of a tensor (as the safetensors name, e.g. `"BF16"`).
    pub fn stored_dtype(&self, name: &str) -> Option<String> {
        let shard = &self.shards[*self.index.get(name)?];
        shard.info(name).map(|i| i.dtype.to_string())
    }

    /// Names of tensors not loaded so far (after loading a model: weights the architecture
    /// ignored).
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        self.names()
            .into_iter()
            .filter(|n| !used.contains(*n))
            .map(str::to_string)
            .collect()
    }

    /// A stored tensor as it is in the file: its safetensors dtype and raw little-endian bytes
    /// (no conversion; used for bitsandbytes' `uint8` NF4 codes and their `quant_state`).
    /// Marks the tensor used. `None` when the checkpoint lacks it.
    pub fn raw(&self, name: &str) -> Option<(Dtype, Vec<u8>)> {
        let shard = &self.shards[*self.index.get(name)?];
        let info = shard.info(name)?;
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
        Some((info.dtype, shard.bytes(info).to_vec()))
    }

    /// Loads a tensor, checking that its shape is `shape`.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`], [`ModelError::Shape`], [`ModelError::Dtype`] or
    /// [`ModelError::NonFinite`] (a NaN or infinity in the stored values), naming the
    /// file and the tensor.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<D>, ModelError> {
        self.tensor_optional(name, shape)?
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.missing_path(),
                name: name.to_string(),
            })
    }

    /// Like [`WeightSource::tensor`], but `Ok(None)` when the checkpoint lacks the tensor.
    pub fn tensor_optional<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Option<Tensor<D>>, ModelError> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let shard = &self.shards[i];
        let info = shard.info(name).ok_or_else(|| ModelError::MissingTensor {
            path: shard.path.clone(),
            name: name.to_string(),
        })?;
        if info.shape.as_slice() != shape.as_slice() {
            return Err(ModelError::Shape {
                path: shard.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        if let Some((i, what)) = first_non_finite(shard.bytes(info), info.dtype) {
            return Err(ModelError::NonFinite {
                path: shard.path.clone(),
                name: name.to_string(),
                what: what.to_string(),
                index: i,
            });
        }
        let data = convert(shard.bytes(info), info.dtype, &shape, self.dtype).ok_or_else(|| {
            ModelError::Dtype {
                path: shard.path.clone(),
                name: name.to_string(),
                dtype: info.dtype.to_string(),
            }
        })?;
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
        let dtype: DType = self.dtype.into();
        Ok(Some(Tensor::from_data(data, (&self.device, dtype))))
    }

    /// Loads a linear layer stored as `{prefix}.weight` `[d_output, d_input]` and, when `bias`,
    /// `{prefix}.bias` `[d_output]`.
    pub fn linear(
        &self,
        prefix: &str,
        d_input: usize,
        d_output: usize,
        bias: bool,
    ) -> Result<Linear, ModelError> {
        let weight = self.tensor(&format!("{prefix}.weight"), [d_output, d_input])?;
        let bias = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), [d_output])?)
        } else {
            None
        };
        Ok(Linear::from_tensors(weight, bias))
    }

    /// The file that stores tensor `name` (for error messages): its shard, or the checkpoint
    /// (single file or index) when the checkpoint lacks it.
    pub fn file_of(&self, name: &str) -> PathBuf {
        match self.index.get(name) {
            Some(&i) => self.shards[i].path.clone(),
            None => self.missing_path(),
        }
    }

    fn missing_path(&self) -> PathBuf {
        match self.shards.as_slice() {
            [single] => single.path.clone(),
            _ => self.root.join(INDEX_FILE),
        }
    }
}

/// The most host memory this process can use, in bytes: physical memory plus swap, or the
/// address-space limit (`ulimit -v`) when lower. `None` when unknown (not Linux).
pub fn host_memory_limit() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    let total = kib("MemTotal:")?.saturating_add(kib("SwapTotal:").unwrap_or(0));
    let address_space = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max address space"))?
                .split_whitespace()
                .nth(3)?
                .parse::<u64>()
                .ok()
        });
    Some(address_space.map_or(total, |a| a.min(total)))
}

/// Refuses, before anything is loaded, a checkpoint whose weights cannot fit in this machine's
/// memory on a CPU (`flex`) device: the sum of its tensor sizes in `dtype` (from the safetensors
/// headers, so a damaged or hostile `config.json` or header cannot make the load abort in
/// allocation) against [`host_memory_limit`]. Other devices are not checked here.
///
/// # Errors
/// [`ModelError::TooLarge`], or the errors of [`WeightSource::open`].
pub fn check_fits_in_memory(
    dir: &Path,
    device: &Device,
    dtype: FloatDType,
) -> Result<(), ModelError> {
    if device.clone().without_autodiff() != Device::flex() {
        return Ok(());
    }
    let Some(limit) = host_memory_limit() else {
        return Ok(());
    };
    let source = WeightSource::open(dir, device, dtype)?;
    let needed = source.loaded_bytes();
    if needed > limit {
        return Err(ModelError::TooLarge {
            path: dir.to_path_buf(),
            needed,
            limit,
            dtype: format!("{dtype:?}"),
        });
    }
    Ok(())
}

/// Refuses a shard name of an index that could leave the model folder: it must be a relative
/// path of plain components (no `..`, no root, no drive prefix), as the Hub writes them.
fn check_shard_name(index_path: &Path, tensor: &str, file: &str) -> Result<(), ModelError> {
    use std::path::Component;
    let path = Path::new(file);
    let plain = !file.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if plain {
        return Ok(());
    }
    Err(ModelError::config(
        index_path,
        &format!("weight_map.{tensor}"),
        format!(
            "shard path `{file}` is not a file name inside the model folder (an empty, absolute \
             or `..` path could read files outside it; only relative paths are read)"
        ),
    ))
}

/// Pickle checkpoints in `dir` (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`), sorted.
fn pickle_files(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            [".bin", ".pt", ".pth", ".ckpt"]
                .iter()
                .any(|ext| n.ends_with(ext))
                || n == "pytorch_model.bin.index.json"
        })
        .collect();
    found.sort();
    found
}

/// The first NaN or infinity among stored float values: its index and `"NaN"`/`"inf"`/`"-inf"`.
/// Checks the exponent bits only (one pass over the bytes, no conversion).
fn first_non_finite(bytes: &[u8], dtype: Dtype) -> Option<(usize, &'static str)> {
    let classify = |nan: bool, negative: bool| match (nan, negative) {
        (true, _) => "NaN",
        (false, false) => "inf",
        (false, true) => "-inf",
    };
    match dtype {
        Dtype::F32 => bytes.chunks_exact(4).enumerate().find_map(|(i, c)| {
            let b = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            (b & 0x7f80_0000 == 0x7f80_0000)
                .then(|| (i, classify(b & 0x007f_ffff != 0, b >> 31 == 1)))
        }),
        Dtype::F16 => bytes.chunks_exact(2).enumerate().find_map(|(i, c)| {
            let b = u16::from_le_bytes([c[0], c[1]]);
            (b & 0x7c00 == 0x7c00).then(|| (i, classify(b & 0x03ff != 0, b >> 15 == 1)))
        }),
        Dtype::BF16 => bytes.chunks_exact(2).enumerate().find_map(|(i, c)| {
            let b = u16::from_le_bytes([c[0], c[1]]);
            (b & 0x7f80 == 0x7f80).then(|| (i, classify(b & 0x007f != 0, b >> 15 == 1)))
        }),
        Dtype::F64 => bytes.chunks_exact(8).enumerate().find_map(|(i, c)| {
            let b = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            (b & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000)
                .then(|| (i, classify(b & 0x000f_ffff_ffff_ffff != 0, b >> 63 == 1)))
        }),
        _ => None,
    }
}

/// Checks one safetensors file completely: its header against its size, and every float
/// tensor for NaN or infinity. Used to verify a checkpoint before resuming from it.
///
/// # Errors
/// [`ModelError::Safetensors`] naming the file, [`ModelError::NonFinite`] naming the tensor,
/// [`ModelError::Io`].
pub fn check_safetensors_file(path: &Path) -> Result<(), ModelError> {
    let shard = Shard::open(path)?;
    let mut names: Vec<String> = shard.metadata.tensors().into_keys().collect();
    names.sort();
    for name in names {
        if let Some(info) = shard.info(&name)
            && let Some((i, what)) = first_non_finite(shard.bytes(info), info.dtype)
        {
            return Err(ModelError::NonFinite {
                path: path.to_path_buf(),
                name,
                what: what.to_string(),
                index: i,
            });
        }
    }
    Ok(())
}

/// Decodes little-endian stored values into `TensorData` of the target dtype.
fn convert(bytes: &[u8], stored: Dtype, shape: &[usize], target: FloatDType) -> Option<TensorData> {
    let shape = shape.to_vec();
    // Exact paths: no conversion when stored and target agree.
    match (stored, target) {
        (Dtype::BF16, FloatDType::BF16) => {
            let v: Vec<half::bf16> = bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                .collect();
            return Some(TensorData::new(v, shape));
        }
        (Dtype::F16, FloatDType::F16) => {
            let v: Vec<half::f16> = bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                .collect();
            return Some(TensorData::new(v, shape));
        }
        (Dtype::F64, FloatDType::F64) => {
            let v: Vec<f64> = bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            return Some(TensorData::new(v, shape));
        }
        _ => {}
    }
    let values = lmflow_peft::io::floats(stored, bytes)?;
    Some(match target {
        FloatDType::F32 | FloatDType::Flex32 => TensorData::new(values, shape),
        FloatDType::F64 => TensorData::new(values.into_iter().map(f64::from).collect(), shape),
        FloatDType::F16 => TensorData::new(
            values
                .into_iter()
                .map(half::f16::from_f32)
                .collect::<Vec<_>>(),
            shape,
        ),
        FloatDType::BF16 => TensorData::new(
            values
                .into_iter()
                .map(half::bf16::from_f32)
                .collect::<Vec<_>>(),
            shape,
        ),
    })
}

/// A tensor ready to be written: its Hub name and its values.
struct TensorView<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: &'a [u8],
}

impl safetensors::View for TensorView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The safetensors dtype of a Burn dtype, if it can be stored.
fn safetensors_dtype(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::F64 => Dtype::F64,
        DType::F32 | DType::Flex32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U64 => Dtype::U64,
        DType::U32 => Dtype::U32,
        DType::U16 => Dtype::U16,
        DType::U8 => Dtype::U8,
        _ => return None,
    })
}

/// Writes named tensors to one safetensors file with `{"format": "pt"}` metadata.
///
/// Values are stored in their own dtype (read them with `tensor.into_data()`); `Flex32` is
/// stored as F32.
///
/// # Errors
/// [`ModelError::Dtype`] for a dtype safetensors cannot hold (bool, quantized),
/// [`ModelError::Io`] when the file cannot be written.
pub fn save_safetensors(path: &Path, tensors: &[(String, TensorData)]) -> Result<(), ModelError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let dtype = safetensors_dtype(data.dtype()).ok_or_else(|| ModelError::Dtype {
            path: path.to_path_buf(),
            name: name.clone(),
            dtype: format!("{:?}", data.dtype()),
        })?;
        views.push((
            name.clone(),
            TensorView {
                dtype,
                shape: data.shape().to_vec(),
                data: data.as_bytes(),
            },
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
        SafeTensorError::IoError(source) => ModelError::io(path, source),
        other => ModelError::Safetensors {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}
