//! Saving and loading adapter folders exactly as Hugging Face PEFT writes them:
//! `adapter_config.json` + `adapter_model.safetensors` with keys
//! `base_model.model.<path>.lora_A.weight` (`[r, in]`), `.lora_B.weight` (`[out, r]`),
//! `.lora_magnitude_vector` (`[out]`, DoRA) and `base_model.model.<path>.weight` (`.bias`) for
//! `modules_to_save`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::config::LoraConfig;
use crate::error::PeftError;
use crate::inject::TargetMatcher;
use crate::linear::LinearVisitor;
use crate::lora::LoraAdapter;

/// The config file name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's key prefix for causal LMs.
pub const PREFIX: &str = "base_model.model.";

/// Tensors of one file, as f32 host values with shapes.
pub(crate) struct HostTensors {
    pub(crate) path: PathBuf,
    pub(crate) tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl HostTensors {
    pub(crate) fn read(path: &Path) -> Result<Self, PeftError> {
        if !path.exists()
            && let Some(dir) = path.parent()
            && dir.join("adapter_model.bin").is_file()
        {
            return Err(PeftError::Safetensors {
                path: path.into(),
                reason: "missing; the folder has only adapter_model.bin, a pickle file, and \
                         lmflow reads safetensors only (pickle is never executed). Convert it \
                         with PEFT: `PeftModel.from_pretrained(...).save_pretrained(dir, \
                         safe_serialization=True)`"
                    .into(),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| PeftError::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| PeftError::Safetensors {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = floats(view.dtype(), view.data()).ok_or_else(|| PeftError::Tensor {
                path: path.into(),
                key: name.clone(),
                reason: format!("dtype {:?} is not a float type", view.dtype()),
            })?;
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(PeftError::Tensor {
                    path: path.into(),
                    key: name,
                    reason: format!(
                        "value {i} is {}: the file is damaged (adapter weights must be finite)",
                        data[i]
                    ),
                });
            }
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Ok(Self {
            path: path.into(),
            tensors,
        })
    }

    fn take<const D: usize>(
        &mut self,
        key: &str,
        expect: Option<[usize; D]>,
        device: &Device,
    ) -> Result<Option<Tensor<D>>, PeftError> {
        let Some((shape, data)) = self.tensors.remove(key) else {
            return Ok(None);
        };
        let bad = |reason: String| PeftError::Tensor {
            path: self.path.clone(),
            key: key.into(),
            reason,
        };
        let dims: [usize; D] = shape
            .clone()
            .try_into()
            .map_err(|_| bad(format!("expected {D} dimensions, found shape {shape:?}")))?;
        if let Some(e) = expect
            && e != dims
        {
            return Err(bad(format!("expected shape {e:?}, found {dims:?}")));
        }
        Ok(Some(Tensor::from_data(TensorData::new(data, dims), device)))
    }
}

/// Decodes little-endian safetensors float bytes (f32, f16, bf16, f64) to f32; `None` for
/// other dtypes. Shared with `lmflow-models`' checkpoint reader.
pub fn floats(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        _ => return None,
    })
}

fn first_key<'a>(t: &HostTensors, candidates: &'a [String]) -> Option<&'a String> {
    candidates
        .iter()
        .find(|k| t.tensors.contains_key(k.as_str()))
}

/// Loads an adapter folder into the model as adapter `name` (PEFT's
/// `PeftModel.from_pretrained` / `load_adapter`). Keys may or may not carry the adapter name
/// (`lora_A.weight` or `lora_A.<name>.weight`). `modules_to_save` tensors replace the model's
/// weights. Every tensor of the file must be used. The adapter becomes active where no other
/// adapter is. Returns the config.
pub fn load_adapter<M: LinearVisitor>(
    model: &mut M,
    dir: &Path,
    name: &str,
    device: &Device,
) -> Result<LoraConfig, PeftError> {
    let cfg = LoraConfig::from_file(&dir.join(CONFIG_FILE))?;
    let mut file = HostTensors::read(&dir.join(WEIGHTS_FILE))?;
    let matcher = TargetMatcher::new(&cfg)?;
    let mut err: Option<PeftError> = None;
    let mut loaded = 0usize;
    // As in PEFT, target_modules that match no layer of the model are an error, whatever the
    // weights file holds.
    let mut targeted = 0usize;
    model.visit_linears(&mut |path, _| {
        targeted += usize::from(matcher.is_target(path));
    });
    if targeted == 0 {
        return Err(PeftError::NoTargetMatched {
            targets: serde_json::to_string(&cfg.target_modules).unwrap_or_default(),
        });
    }
    model.visit_linears_mut(&mut |path, lin| {
        if err.is_some() {
            return;
        }
        let res = (|| -> Result<(), PeftError> {
            let (d_in, d_out) = lin.dims();
            let base = format!("{PREFIX}{path}");
            if matcher.is_module_to_save(path) {
                let wk = [
                    format!("{base}.weight"),
                    format!("{base}.modules_to_save.{name}.weight"),
                ];
                if let Some(k) = first_key(&file, &wk).cloned() {
                    let w: Tensor<2> = file
                        .take(&k, Some([d_out, d_in]), device)?
                        .unwrap_or_else(|| Tensor::zeros([d_out, d_in], device));
                    let trainable = lin.weight.is_require_grad();
                    lin.quant = None;
                    lin.weight = Param::from_tensor(w).set_require_grad(trainable);
                    let bk = [
                        format!("{base}.bias"),
                        format!("{base}.modules_to_save.{name}.bias"),
                    ];
                    if let Some(k) = first_key(&file, &bk).cloned()
                        && let Some(b) = file.take::<1>(&k, Some([d_out]), device)?
                    {
                        lin.bias = Some(Param::from_tensor(b).set_require_grad(trainable));
                    }
                }
                return Ok(());
            }
            let a_keys = [
                format!("{base}.lora_A.weight"),
                format!("{base}.lora_A.{name}.weight"),
            ];
            let Some(ak) = first_key(&file, &a_keys).cloned() else {
                return Ok(());
            };
            let bk = ak.replace(".lora_A.", ".lora_B.");
            let a: Tensor<2> = file
                .take(&ak, None, device)?
                .ok_or_else(|| PeftError::Tensor {
                    path: file.path.clone(),
                    key: ak.clone(),
                    reason: "missing".into(),
                })?;
            let [r, a_in] = a.dims();
            if a_in != d_in {
                return Err(PeftError::Tensor {
                    path: file.path.clone(),
                    key: ak,
                    reason: format!("expected [r, {d_in}], found [{r}, {a_in}]"),
                });
            }
            let b: Tensor<2> =
                file.take(&bk, Some([d_out, r]), device)?
                    .ok_or_else(|| PeftError::Tensor {
                        path: file.path.clone(),
                        key: bk.clone(),
                        reason: "missing (lora_A is present)".into(),
                    })?;
            let mk = [
                format!("{base}.lora_magnitude_vector"),
                format!("{base}.lora_magnitude_vector.{name}"),
                format!("{base}.lora_magnitude_vector.{name}.weight"),
            ];
            let magnitude = match first_key(&file, &mk).cloned() {
                Some(k) => file.take::<1>(&k, Some([d_out]), device)?,
                None => None,
            };
            if cfg.use_dora && magnitude.is_none() {
                return Err(PeftError::Tensor {
                    path: file.path.clone(),
                    key: mk[0].clone(),
                    reason: "missing although use_dora = true".into(),
                });
            }
            if !matcher.is_target(path) {
                return Err(PeftError::Tensor {
                    path: file.path.clone(),
                    key: ak,
                    reason: format!(
                        "adapts `{path}`, which target_modules {} does not match",
                        serde_json::to_string(&cfg.target_modules).unwrap_or_default()
                    ),
                });
            }
            // PEFT builds the layers from the config and then loads the tensors: a rank that
            // differs from the config's (after rank_pattern) is a size mismatch there, and the
            // scale `alpha / r` would use the wrong r here.
            let (r_cfg, alpha) = cfg.rank_and_alpha(path)?;
            if r_cfg != r {
                return Err(PeftError::Tensor {
                    path: file.path.clone(),
                    key: ak,
                    reason: format!(
                        "rank {r} in the tensors, but adapter_config.json gives r = {r_cfg} for \
                         `{path}` (the adapter scale alpha / r would be wrong)"
                    ),
                });
            }
            let scale = cfg.scale(r_cfg, alpha);
            if lin.adapter(name).is_some() {
                return Err(PeftError::Adapter {
                    name: name.into(),
                    reason: format!("already attached to `{path}`"),
                });
            }
            lin.adapters.push(LoraAdapter::from_tensors(
                name,
                a,
                b,
                magnitude,
                scale,
                cfg.lora_dropout,
            ));
            if lin.active_adapter.is_none() {
                lin.active_adapter = Some(name.into());
            }
            loaded += 1;
            Ok(())
        })();
        if let Err(e) = res {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    model.visit_embeddings_mut(&mut |path, p| {
        if err.is_some() || !matcher.is_module_to_save(path) {
            return;
        }
        let base = format!("{PREFIX}{path}");
        let keys = [
            format!("{base}.weight"),
            format!("{base}.modules_to_save.{name}.weight"),
        ];
        if let Some(k) = first_key(&file, &keys).cloned() {
            let dims = p.dims();
            match file.take::<2>(&k, Some(dims), device) {
                Ok(Some(t)) => *p = Param::from_tensor(t).set_require_grad(p.is_require_grad()),
                Ok(None) => {}
                Err(e) => err = Some(e),
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    if !file.tensors.is_empty() {
        let mut keys: Vec<&String> = file.tensors.keys().collect();
        keys.sort();
        return Err(PeftError::UnusedTensors {
            path: file.path.clone(),
            count: keys.len(),
            example: keys[0].clone(),
        });
    }
    if loaded == 0 {
        return Err(PeftError::NoTargetMatched {
            targets: serde_json::to_string(&cfg.target_modules).unwrap_or_default(),
        });
    }
    tracing::info!(adapter = name, layers = loaded, dir = %dir.display(), "adapter loaded");
    Ok(cfg)
}

fn host_f32<const D: usize>(t: Tensor<D>) -> Result<(Vec<usize>, Vec<u8>), PeftError> {
    let dims = t.dims().to_vec();
    let v: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| PeftError::Safetensors {
            path: PathBuf::new(),
            reason: format!("tensor read-back failed: {e:?}"),
        })?;
    Ok((dims, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
}

/// Tensors by key: shape and little-endian f32 bytes.
pub type TensorBytes = BTreeMap<String, (Vec<usize>, Vec<u8>)>;

/// Collects adapter `name`'s tensors under PEFT's key names (f32):
/// `lora_A.weight`, `lora_B.weight`, `lora_magnitude_vector`, and `modules_to_save` weights.
pub fn adapter_state_dict<M: LinearVisitor>(
    model: &mut M,
    cfg: &LoraConfig,
    name: &str,
) -> Result<TensorBytes, PeftError> {
    let matcher = TargetMatcher::new(cfg)?;
    let mut out = BTreeMap::new();
    let mut err = None;
    model.visit_linears_mut(&mut |path, lin| {
        let mut put = |key: String, t: Result<(Vec<usize>, Vec<u8>), PeftError>| match t {
            Ok(v) => {
                out.insert(key, v);
            }
            Err(e) => err = Some(e),
        };
        let base = format!("{PREFIX}{path}");
        if matcher.is_module_to_save(path) {
            put(format!("{base}.weight"), host_f32(lin.dense_weight()));
            if let Some(b) = &lin.bias {
                put(format!("{base}.bias"), host_f32(b.val()));
            }
            return;
        }
        if let Some(a) = lin.adapter(name) {
            put(format!("{base}.lora_A.weight"), host_f32(a.lora_a.val()));
            put(format!("{base}.lora_B.weight"), host_f32(a.lora_b.val()));
            if let Some(m) = &a.magnitude {
                put(format!("{base}.lora_magnitude_vector"), host_f32(m.val()));
            }
        }
    });
    model.visit_embeddings_mut(&mut |path, p| {
        if matcher.is_module_to_save(path) {
            match host_f32(p.val()) {
                Ok(v) => {
                    out.insert(format!("{PREFIX}{path}.weight"), v);
                }
                Err(e) => err = Some(e),
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok(out)
}

/// Saves adapter `name` as PEFT does (`save_pretrained`): `adapter_config.json` (with
/// `inference_mode = true`) and `adapter_model.safetensors` (f32, metadata `format = pt`).
pub fn save_adapter<M: LinearVisitor>(
    model: &mut M,
    cfg: &LoraConfig,
    name: &str,
    dir: &Path,
) -> Result<(), PeftError> {
    let tensors = adapter_state_dict(model, cfg, name)?;
    let names: HashSet<&str> = tensors.keys().map(|k| k.as_str()).collect();
    if !names.iter().any(|k| k.ends_with(".lora_A.weight")) {
        return Err(PeftError::Adapter {
            name: name.into(),
            reason: "no layer of the model has it".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| PeftError::io(dir, e))?;
    let mut cfg = cfg.clone();
    cfg.inference_mode = true;
    cfg.save(&dir.join(CONFIG_FILE))?;
    let path = dir.join(WEIGHTS_FILE);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (shape, bytes))| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| PeftError::Safetensors {
                    path: path.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &path).map_err(|e| PeftError::Safetensors {
        path: path.clone(),
        reason: e.to_string(),
    })
}

/// Resolves `base_model_name_or_path` of an adapter folder: a relative path is taken relative
/// to the adapter folder when that exists, else as given.
pub fn base_model_dir(adapter_dir: &Path, cfg: &LoraConfig) -> Option<PathBuf> {
    let p = PathBuf::from(cfg.base_model_name_or_path.as_ref()?);
    if p.is_relative() {
        let joined = adapter_dir.join(&p);
        if joined.exists() {
            return Some(joined);
        }
    }
    Some(p)
}
