//! NF4 (4-bit NormalFloat) weight storage, bit-compatible with bitsandbytes.
//!
//! A `[rows, cols]` weight is flattened row-major and cut into blocks of `blocksize` (64)
//! values. Each block stores its absolute maximum; each value is `x / absmax` rounded to the
//! nearest of the 16 NF4 levels ([`NF4_CODE`]), two 4-bit codes per byte with the first value
//! in the high nibble. With double quantisation the absmax values are themselves stored as
//! `u8` codes of bitsandbytes' signed 8-bit dynamic map, in blocks of 256, after subtracting
//! their mean (`offset`).
//!
//! The quantised tensors live on the device; [`Nf4Weight::dequantize`] rebuilds the dense
//! weight with tensor ops (a table lookup and a per-block scale) right before the matmul, so
//! only one layer's dense weight exists at a time.

use burn::module::Module;
use burn::tensor::{Device, FloatDType, Int, IntDType, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::PeftError;

/// bitsandbytes' NF4 levels (`bitsandbytes.functional.get_4bit_type("nf4")`), written with
/// the digits bitsandbytes publishes (they round to the same f32 values).
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// NF4 quantisation settings (bitsandbytes' `bnb_4bit_*` defaults).
#[derive(burn::config::Config, Debug)]
pub struct Nf4Config {
    /// Values per absmax block.
    #[config(default = 64)]
    pub blocksize: usize,
    /// Quantise the absmax values too (`bnb_4bit_use_double_quant`).
    #[config(default = true)]
    pub double_quant: bool,
    /// Absmax values per second-level block.
    #[config(default = 256)]
    pub nested_blocksize: usize,
}

/// The second-level (double) quantisation of the per-block absmax values.
#[derive(Module, Debug)]
pub struct Nf4Nested {
    /// `u8` codes of `absmax - offset`, `[blocks]`.
    pub codes: Tensor<1, Int>,
    /// Absmax of each nested block, `[ceil(blocks / nested_blocksize)]`.
    pub absmax: Tensor<1>,
    /// The 256-entry dynamic map.
    pub code: Tensor<1>,
    /// Mean of the absmax values, added back after dequantisation.
    pub offset: f64,
    /// Absmax values per nested block.
    pub blocksize: usize,
}

/// A frozen `[rows, cols]` weight stored as NF4.
#[derive(Module, Debug)]
pub struct Nf4Weight {
    /// Packed codes, `u8`, `[padded / 2]` (two per byte, first in the high nibble).
    pub packed: Tensor<1, Int>,
    /// Per-block absmax (f32) when not double-quantised.
    pub absmax: Option<Tensor<1>>,
    /// Double-quantised absmax.
    pub nested: Option<Nf4Nested>,
    /// The 16 levels (bitsandbytes' `quant_map`).
    pub code: Tensor<1>,
    /// Rows (`d_output`).
    pub rows: usize,
    /// Columns (`d_input`).
    pub cols: usize,
    /// Values per absmax block.
    pub blocksize: usize,
    /// The dtype bitsandbytes dequantises into (`quant_state` `dtype` of a loaded
    /// checkpoint): `code * absmax` is rounded to it, as bitsandbytes' `dequantize_4bit`
    /// does, before [`Nf4Weight::dequantize`] returns it in f32. `None` (and f32): no rounding.
    #[module(skip)]
    pub dequant_dtype: Option<FloatDType>,
}

/// A stored tensor as a checkpoint holds it: safetensors dtype and raw little-endian bytes.
pub type RawTensor = (Dtype, Vec<u8>);

/// Host-side result of [`quantize_nf4`].
#[derive(Clone, Debug, PartialEq)]
pub struct Nf4Host {
    /// Packed codes (`ceil(n / 2)` bytes, first value in the high nibble).
    pub packed: Vec<u8>,
    /// Per-block absmax.
    pub absmax: Vec<f32>,
}

/// Host-side result of [`quantize_blockwise_dynamic`].
#[derive(Clone, Debug, PartialEq)]
pub struct BlockwiseHost {
    /// One `u8` code per value.
    pub codes: Vec<u8>,
    /// Per-block absmax.
    pub absmax: Vec<f32>,
}

fn bucketize(x: f32, bounds: &[f32]) -> u8 {
    // torch.bucketize(right=False): number of bounds strictly below x.
    bounds.partition_point(|&b| b < x) as u8
}

fn midpoints(code: &[f32]) -> Vec<f32> {
    code.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect()
}

fn block_absmax_scaled(data: &[f32], blocksize: usize) -> (Vec<f32>, Vec<f32>) {
    let mut absmax = Vec::with_capacity(data.len().div_ceil(blocksize));
    let mut scaled = Vec::with_capacity(data.len());
    for block in data.chunks(blocksize) {
        let am = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let inv = 1.0 / am.max(1e-38);
        absmax.push(am);
        scaled.extend(block.iter().map(|x| (x * inv).clamp(-1.0, 1.0)));
    }
    (absmax, scaled)
}

/// bitsandbytes' `quantize_4bit(quant_type="nf4")` on the host: per-block absmax, then the
/// nearest NF4 level (ties to the lower level, as `torch.bucketize`).
pub fn quantize_nf4(data: &[f32], blocksize: usize) -> Nf4Host {
    let bounds = midpoints(&NF4_CODE);
    let (absmax, scaled) = block_absmax_scaled(data, blocksize);
    let mut packed = Vec::with_capacity(data.len().div_ceil(2));
    for pair in scaled.chunks(2) {
        let hi = bucketize(pair[0], &bounds);
        let lo = pair
            .get(1)
            .map_or(bucketize(0.0, &bounds), |&x| bucketize(x, &bounds));
        packed.push((hi << 4) | lo);
    }
    Nf4Host { packed, absmax }
}

/// bitsandbytes' `create_dynamic_map(signed=True)`: the 256-level map used for the
/// double quantisation of absmax values (f32 arithmetic as torch: `linspace`, midpoints,
/// scaling by a power of ten).
pub fn dynamic_map() -> Vec<f32> {
    let max_exponent_bits = 7i32;
    let non_sign_bits = 7i32;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    // torch.linspace(0.1, 1, steps) on CPU, float32: the first half counts up from the start,
    // the second half down from the end.
    let linspace = |steps: usize| -> Vec<f32> {
        let (start, end) = (0.1f32, 1.0f32);
        let step = (end - start) / (steps - 1) as f32;
        let half = steps / 2;
        (0..steps)
            .map(|i| {
                // torch's vectorised kernel evaluates these as fused multiply-adds.
                if i < half {
                    step.mul_add(i as f32, start)
                } else {
                    (-step).mul_add((steps - i - 1) as f32, end)
                }
            })
            .collect()
    };
    for i in 0..max_exponent_bits {
        let items = (1usize << (i + non_sign_bits - max_exponent_bits) as u32) + 1;
        let p = 10f64.powi(-(max_exponent_bits - 1) + i) as f32;
        let b = linspace(items);
        for w in b.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(p * mean);
            data.push(-(p * mean));
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.resize(256, 0.0);
    data.sort_by(f32::total_cmp);
    data
}

/// bitsandbytes' `quantize_blockwise` (8-bit, given sorted `code`): per-block absmax and the
/// nearest code level of `x / absmax`.
pub fn quantize_blockwise_dynamic(data: &[f32], code: &[f32], blocksize: usize) -> BlockwiseHost {
    let bounds = midpoints(code);
    let (absmax, scaled) = block_absmax_scaled(data, blocksize);
    let codes = scaled.iter().map(|&x| bucketize(x, &bounds)).collect();
    BlockwiseHost { codes, absmax }
}

fn tensor_f32(v: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

fn tensor_u8(v: Vec<u8>, device: &Device) -> Tensor<1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), (device, burn::tensor::DType::U8))
}

impl Nf4Weight {
    /// Quantises a dense `[rows, cols]` weight.
    pub fn quantize(weight: Tensor<2>, config: &Nf4Config) -> Self {
        let [rows, cols] = weight.dims();
        let device = weight.device();
        let data: Vec<f32> = weight
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        Self::from_host(&data, rows, cols, config, &device)
    }

    /// Quantises row-major host values.
    pub fn from_host(
        data: &[f32],
        rows: usize,
        cols: usize,
        config: &Nf4Config,
        device: &Device,
    ) -> Self {
        let host = quantize_nf4(data, config.blocksize);
        let (absmax, nested) = if config.double_quant {
            let offset = (host.absmax.iter().map(|&x| x as f64).sum::<f64>()
                / host.absmax.len().max(1) as f64) as f32;
            let centred: Vec<f32> = host.absmax.iter().map(|x| x - offset).collect();
            let code = dynamic_map();
            let q = quantize_blockwise_dynamic(&centred, &code, config.nested_blocksize);
            let nested = Nf4Nested {
                codes: tensor_u8(q.codes, device),
                absmax: tensor_f32(q.absmax, device),
                code: tensor_f32(code, device),
                offset: offset as f64,
                blocksize: config.nested_blocksize,
            };
            (None, Some(nested))
        } else {
            (Some(tensor_f32(host.absmax, device)), None)
        };
        Self::from_parts(
            host.packed,
            absmax,
            nested,
            NF4_CODE.to_vec(),
            rows,
            cols,
            config.blocksize,
            device,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        mut packed: Vec<u8>,
        absmax: Option<Tensor<1>>,
        nested: Option<Nf4Nested>,
        code: Vec<f32>,
        rows: usize,
        cols: usize,
        blocksize: usize,
        device: &Device,
    ) -> Self {
        // Pad to whole blocks so that dequantisation is one reshape (padding codes are dropped).
        let padded = (rows * cols).div_ceil(blocksize) * blocksize;
        packed.resize(padded / 2, 0x77);
        Self {
            packed: tensor_u8(packed, device),
            absmax,
            nested,
            code: tensor_f32(code, device),
            rows,
            cols,
            blocksize,
            dequant_dtype: None,
        }
    }

    /// Number of absmax blocks.
    pub fn blocks(&self) -> usize {
        (self.rows * self.cols).div_ceil(self.blocksize)
    }

    /// The per-block absmax values, `[blocks]`.
    pub fn absmax_values(&self) -> Tensor<1> {
        if let Some(a) = &self.absmax {
            return a.clone();
        }
        let Some(n) = &self.nested else {
            return Tensor::zeros([self.blocks()], &self.code.device());
        };
        let blocks = self.blocks();
        let device = n.code.device();
        let codes = n.codes.clone().cast(IntDType::I32);
        let values = n.code.clone().select(0, codes);
        let block_of =
            Tensor::<1, Int>::arange(0..blocks as i64, &device).div_scalar(n.blocksize as i64);
        let scale = n.absmax.clone().select(0, block_of);
        values * scale + n.offset
    }

    /// The dense `[rows, cols]` weight in f32.
    pub fn dequantize(&self) -> Tensor<2> {
        let packed = self.packed.clone().cast(IntDType::I32);
        let half = packed.dims()[0];
        let hi = packed
            .clone()
            .bitwise_right_shift_scalar(4)
            .bitwise_and_scalar(15);
        let lo = packed.bitwise_and_scalar(15);
        let codes: Tensor<1, Int> = Tensor::stack::<2>(vec![hi, lo], 1).reshape([half * 2]);
        let values = self.code.clone().select(0, codes);
        let blocks = self.blocks();
        let absmax = self.absmax_values().reshape([blocks, 1]);
        let dense =
            (values.reshape([blocks, self.blocksize]) * absmax).reshape([blocks * self.blocksize]);
        let dense = dense
            .slice(0..self.rows * self.cols)
            .reshape([self.rows, self.cols]);
        match self.dequant_dtype {
            Some(dt @ (FloatDType::BF16 | FloatDType::F16)) => {
                let rounded = dense.cast(dt);
                rounded.cast(FloatDType::F32)
            }
            _ => dense,
        }
    }

    /// Bytes of the per-weight data only: packed codes and (quantised) absmax values,
    /// without the constant lookup tables (16-entry NF4 map, 256-entry nested map).
    pub fn data_bytes(&self) -> usize {
        let mut bytes = self.packed.dims()[0];
        if let Some(a) = &self.absmax {
            bytes += 4 * a.dims()[0];
        }
        if let Some(n) = &self.nested {
            bytes += n.codes.dims()[0] + 4 * n.absmax.dims()[0] + 8;
        }
        bytes
    }

    /// Bytes this weight occupies on the device (codes, absmax, tables).
    pub fn storage_bytes(&self) -> usize {
        let mut bytes = self.packed.dims()[0] + 16 * 4;
        if let Some(a) = &self.absmax {
            bytes += 4 * a.dims()[0];
        }
        if let Some(n) = &self.nested {
            bytes += n.codes.dims()[0] + 4 * n.absmax.dims()[0] + 4 * n.code.dims()[0] + 8;
        }
        bytes
    }

    /// Storage bits per weight value (about 4.5 without and 4.13 with double quantisation
    /// at block size 64, before the constant tables).
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / (self.rows * self.cols) as f64
    }

    /// Reads a `Linear4bit` weight saved by bitsandbytes/transformers under `prefix`
    /// (`<prefix>.weight`, `.weight.absmax`, `.weight.quant_map`, `.weight.nested_absmax`,
    /// `.weight.nested_quant_map`, `.weight.quant_state.bitsandbytes__nf4`). Returns `None`
    /// when `<prefix>.weight.quant_state.bitsandbytes__nf4` is absent.
    pub fn from_bnb(
        st: &SafeTensors<'_>,
        prefix: &str,
        device: &Device,
    ) -> Result<Option<Self>, PeftError> {
        Self::from_bnb_with(
            prefix,
            &|key| st.tensor(key).ok().map(|t| (t.dtype(), t.data().to_vec())),
            device,
        )
    }

    /// Like [`Nf4Weight::from_bnb`], reading each stored tensor through `get` (full tensor
    /// name -> stored dtype and bytes, `None` when absent), so that any checkpoint reader
    /// (a sharded, memory-mapped model folder) can supply them.
    ///
    /// The packed codes are `[ceil(rows * cols / 2), 1]` `uint8`, the first value of each
    /// pair in the high nibble; `quant_state.bitsandbytes__nf4` is the UTF-8 bytes of a JSON
    /// object with `quant_type`, `blocksize`, `dtype`, `shape` and, with double
    /// quantisation, `nested_blocksize`, `nested_offset` (then `.weight.absmax` holds `uint8`
    /// codes and `.weight.nested_absmax` / `.weight.nested_quant_map` their scale and map).
    pub fn from_bnb_with(
        prefix: &str,
        get: &dyn Fn(&str) -> Option<RawTensor>,
        device: &Device,
    ) -> Result<Option<Self>, PeftError> {
        let state_key = format!("{prefix}.weight.quant_state.bitsandbytes__nf4");
        let Some((_, state)) = get(&state_key) else {
            if get(&format!("{prefix}.weight.quant_state.bitsandbytes__fp4")).is_some() {
                return Err(PeftError::Quantization {
                    key: prefix.into(),
                    reason: "FP4 checkpoints (bnb_4bit_quant_type \"fp4\") are not supported; \
                             NF4 only"
                        .into(),
                });
            }
            return Ok(None);
        };
        let qerr = |reason: String| PeftError::Quantization {
            key: prefix.into(),
            reason,
        };
        let meta: serde_json::Value = serde_json::from_slice(&state)
            .map_err(|e| qerr(format!("quant_state is not JSON: {e}")))?;
        let blocksize = meta["blocksize"]
            .as_u64()
            .ok_or_else(|| qerr("no blocksize".into()))? as usize;
        let shape: Vec<usize> = meta["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().map(|x| x as usize))
                    .collect()
            })
            .unwrap_or_default();
        let [rows, cols] = shape[..] else {
            return Err(qerr(format!(
                "expected a 2-D shape, got {:?}",
                meta["shape"]
            )));
        };
        if meta["quant_type"] != "nf4" {
            return Err(qerr(format!(
                "quant_type {} is not nf4",
                meta["quant_type"]
            )));
        }
        let dequant_dtype = match meta["dtype"].as_str() {
            None | Some("float32") => None,
            Some("bfloat16") => Some(FloatDType::BF16),
            Some("float16") => Some(FloatDType::F16),
            Some(other) => return Err(qerr(format!("unsupported quant_state dtype `{other}`"))),
        };
        let get = |suffix: &str| -> Result<RawTensor, PeftError> {
            let key = format!("{prefix}.{suffix}");
            get(&key).ok_or_else(|| qerr(format!("tensor `{key}` is missing")))
        };
        let f32s = |suffix: &str| -> Result<Vec<f32>, PeftError> {
            let (dt, bytes) = get(suffix)?;
            match dt {
                Dtype::F32 => Ok(bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()),
                Dtype::F16 => Ok(bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect()),
                Dtype::BF16 => Ok(bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect()),
                other => Err(qerr(format!(
                    "`{suffix}` has dtype {other:?}, expected a float"
                ))),
            }
        };
        let (dt, packed) = get("weight")?;
        if dt != Dtype::U8 {
            return Err(qerr(format!(
                "packed weight has dtype {dt:?}; only uint8 quant_storage is supported"
            )));
        }
        if packed.len() != (rows * cols).div_ceil(2) {
            return Err(qerr(format!(
                "{} packed bytes for shape [{rows}, {cols}]",
                packed.len()
            )));
        }
        let code = f32s("weight.quant_map")?;
        if code.len() != 16 {
            return Err(qerr(format!(
                "quant_map has {} entries, expected 16",
                code.len()
            )));
        }
        let blocks = (rows * cols).div_ceil(blocksize);
        let nested_present = get("weight.nested_absmax").is_ok();
        let (absmax, nested) = if nested_present {
            let (adt, codes) = get("weight.absmax")?;
            if adt != Dtype::U8 || codes.len() != blocks {
                return Err(qerr(format!(
                    "nested absmax: dtype {adt:?}, {} codes for {blocks} blocks",
                    codes.len()
                )));
            }
            let nested_blocksize = meta["nested_blocksize"].as_u64().unwrap_or(256) as usize;
            let offset = meta["nested_offset"]
                .as_f64()
                .ok_or_else(|| qerr("no nested_offset".into()))?;
            let nested = Nf4Nested {
                codes: tensor_u8(codes, device),
                absmax: tensor_f32(f32s("weight.nested_absmax")?, device),
                code: tensor_f32(f32s("weight.nested_quant_map")?, device),
                offset,
                blocksize: nested_blocksize,
            };
            (None, Some(nested))
        } else {
            let a = f32s("weight.absmax")?;
            if a.len() != blocks {
                return Err(qerr(format!(
                    "{} absmax values for {blocks} blocks",
                    a.len()
                )));
            }
            (Some(tensor_f32(a, device)), None)
        };
        let mut weight =
            Self::from_parts(packed, absmax, nested, code, rows, cols, blocksize, device);
        weight.dequant_dtype = dequant_dtype;
        Ok(Some(weight))
    }
}

/// Keys a bitsandbytes `Linear4bit` adds next to `<prefix>.weight` (for filtering).
pub fn is_bnb_aux_key(key: &str) -> bool {
    const SUFFIXES: [&str; 5] = [
        ".weight.absmax",
        ".weight.quant_map",
        ".weight.nested_absmax",
        ".weight.nested_quant_map",
        ".weight.quant_state.bitsandbytes__nf4",
    ];
    SUFFIXES.iter().any(|s| key.ends_with(s))
}

/// Replaces the base weight of every linear layer of `model` that `file` stores as a
/// bitsandbytes NF4 `Linear4bit` (see [`Nf4Weight::from_bnb`]) with its NF4 form, and loads
/// its bias when present. Returns the number of layers replaced.
pub fn load_bnb_linears<M: crate::LinearVisitor>(
    model: &mut M,
    file: &std::path::Path,
    device: &Device,
) -> Result<usize, PeftError> {
    let bytes = std::fs::read(file).map_err(|e| PeftError::io(file, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| PeftError::Safetensors {
        path: file.into(),
        reason: e.to_string(),
    })?;
    let mut count = 0;
    let mut err = None;
    model.visit_linears_mut(&mut |path, lin| {
        if err.is_some() {
            return;
        }
        match Nf4Weight::from_bnb(&st, path, device) {
            Ok(Some(q)) => {
                let (d_in, d_out) = lin.dims();
                if (q.cols, q.rows) != (d_in, d_out) {
                    err = Some(PeftError::Quantization {
                        key: path.into(),
                        reason: format!(
                            "checkpoint shape [{}, {}] != layer [{d_out}, {d_in}]",
                            q.rows, q.cols
                        ),
                    });
                    return;
                }
                if let Ok(b) = st.tensor(&format!("{path}.bias"))
                    && let Some(v) = crate::io::floats(b.dtype(), b.data())
                    && v.len() == d_out
                {
                    let t = Tensor::<1>::from_data(TensorData::new(v, [d_out]), device);
                    lin.bias = Some(burn::module::Param::from_tensor(t).set_require_grad(false));
                }
                lin.weight = burn::module::Param::from_tensor(Tensor::zeros([0, d_in], device))
                    .set_require_grad(false);
                lin.quant = Some(q);
                count += 1;
            }
            Ok(None) => {}
            Err(e) => err = Some(e),
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(count),
    }
}
