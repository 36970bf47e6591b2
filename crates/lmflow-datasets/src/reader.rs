//! Reading datasets from LMFlow JSON files, folders and JSON Lines; shuffling and splitting.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::Value;

use crate::error::{DatasetError, Result};
use crate::format::{DatasetType, Instance};

/// A dataset held in memory: its type and its instances with their origin.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The type shared by all instances.
    pub dataset_type: DatasetType,
    /// The instances, in file order (files of a folder sorted by name).
    pub instances: Vec<Instance>,
    /// For each instance, the file and 0-based index it came from (for error messages).
    pub origins: Vec<(PathBuf, usize)>,
}

impl Dataset {
    /// Number of instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether the dataset has no instances.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Shuffles the instances deterministically: the same seed gives the same order (for a
    /// given version of this crate).
    pub fn shuffle(&mut self, seed: u64) {
        let mut order: Vec<usize> = (0..self.instances.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        self.instances = order.iter().map(|&i| self.instances[i].clone()).collect();
        self.origins = order.iter().map(|&i| self.origins[i].clone()).collect();
    }

    /// Splits off a validation set of `validation_percentage` percent (0–100) of the
    /// instances, taken from the end (shuffle first for a random split). Returns
    /// `(train, validation)`; the validation set has `round(n * pct / 100)` instances.
    pub fn split(mut self, validation_percentage: f64) -> Result<(Dataset, Dataset)> {
        if !(0.0..=100.0).contains(&validation_percentage) {
            return Err(DatasetError::Config(format!(
                "validation percentage must be within 0..=100, got {validation_percentage}"
            )));
        }
        let n = self.instances.len();
        let n_val = ((n as f64) * validation_percentage / 100.0).round() as usize;
        let cut = n - n_val.min(n);
        let validation = Dataset {
            dataset_type: self.dataset_type,
            instances: self.instances.split_off(cut),
            origins: self.origins.split_off(cut),
        };
        Ok((self, validation))
    }
}

/// How to read a dataset.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// The type of JSON Lines files without a header line (and a check for files with one).
    pub dataset_type: Option<DatasetType>,
}

/// Whether `path` is read as JSON Lines (by its extension `.jsonl`).
fn is_jsonl(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jsonl")
}

/// Dataset files of a folder: `*.json` and `*.jsonl`, sorted by name.
pub fn dataset_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| DatasetError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DatasetError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let p = entry.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "json" || e == "jsonl") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DatasetError::Empty {
            path: dir.to_path_buf(),
            message: "no *.json or *.jsonl files in this folder".into(),
        });
    }
    Ok(files)
}

/// Reads a dataset from a file (`.json`: LMFlow `{"type", "instances"}`; `.jsonl`: JSON
/// Lines) or a folder of such files, all of one type.
pub fn read_dataset(path: impl AsRef<Path>, options: &ReadOptions) -> Result<Dataset> {
    let path = path.as_ref();
    let files = if path.is_dir() {
        dataset_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut dataset: Option<(Dataset, PathBuf)> = None;
    for file in files {
        let (ty, instances) = if is_jsonl(&file) {
            let stream = JsonlStream::open(&file, options.dataset_type)?;
            let ty = stream.dataset_type();
            let instances = stream.collect::<Result<Vec<_>>>()?;
            (ty, instances)
        } else {
            read_lmflow_json(&file, options.dataset_type)?
        };
        if instances.is_empty() {
            return Err(DatasetError::Empty {
                path: file,
                message: "the file has no instances".into(),
            });
        }
        let n = instances.len();
        match &mut dataset {
            None => {
                dataset = Some((
                    Dataset {
                        dataset_type: ty,
                        instances,
                        origins: (0..n).map(|i| (file.clone(), i)).collect(),
                    },
                    file,
                ));
            }
            Some((d, first)) => {
                if d.dataset_type != ty {
                    return Err(DatasetError::MixedTypes {
                        path: file,
                        found: ty.to_string(),
                        first: first.clone(),
                        expected: d.dataset_type.to_string(),
                    });
                }
                d.instances.extend(instances);
                d.origins.extend((0..n).map(|i| (file.clone(), i)));
            }
        }
    }
    dataset.map(|(d, _)| d).ok_or_else(|| DatasetError::Empty {
        path: path.to_path_buf(),
        message: "no dataset files".into(),
    })
}

/// Reads one LMFlow JSON file `{"type": T, "instances": [...]}`.
pub fn read_lmflow_json(
    path: &Path,
    expected: Option<DatasetType>,
) -> Result<(DatasetType, Vec<Instance>)> {
    let file = File::open(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_reader(BufReader::new(file)).map_err(|source| {
        if source.is_eof() && source.line() <= 1 && source.column() == 0 {
            DatasetError::Empty {
                path: path.to_path_buf(),
                message: "the file is empty".into(),
            }
        } else {
            DatasetError::Json {
                path: path.to_path_buf(),
                line: None,
                source,
            }
        }
    })?;
    parse_lmflow_value(path, &value, expected)
}

/// Parses the content of an LMFlow JSON file.
pub fn parse_lmflow_value(
    path: &Path,
    value: &Value,
    expected: Option<DatasetType>,
) -> Result<(DatasetType, Vec<Instance>)> {
    let header = |key: &str, message: String| DatasetError::Header {
        path: path.to_path_buf(),
        key: key.into(),
        message,
    };
    let obj = value.as_object().ok_or_else(|| {
        header(
            "<root>",
            "expected an object {\"type\": ..., \"instances\": [...]}".into(),
        )
    })?;
    let ty = parse_type(path, obj.get("type"))?;
    if let Some(e) = expected
        && e != ty
    {
        return Err(header(
            "type",
            format!("the file has type `{ty}` but `{e}` was requested"),
        ));
    }
    let instances = obj
        .get("instances")
        .ok_or_else(|| header("instances", "missing".into()))?
        .as_array()
        .ok_or_else(|| header("instances", "expected an array".into()))?;
    let instances = instances
        .iter()
        .enumerate()
        .map(|(i, v)| Instance::from_json(ty, v, path, i))
        .collect::<Result<Vec<_>>>()?;
    Ok((ty, instances))
}

fn parse_type(path: &Path, v: Option<&Value>) -> Result<DatasetType> {
    let header = |message: String| DatasetError::Header {
        path: path.to_path_buf(),
        key: "type".into(),
        message,
    };
    match v {
        None => Err(header("missing".into())),
        Some(Value::String(s)) => s.parse().map_err(|e: DatasetError| header(e.to_string())),
        Some(_) => Err(header("expected a string".into())),
    }
}

/// A streaming reader of a JSON Lines dataset: one instance per line, read lazily, so files
/// larger than memory can be processed.
///
/// The type comes from a first-line header `{"type": T}` (an object whose only key is
/// `type`) or from the caller; blank lines are skipped.
#[derive(Debug)]
pub struct JsonlStream {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    dataset_type: DatasetType,
    pending: Option<(usize, String)>,
    line_no: usize,
    index: usize,
}

impl JsonlStream {
    /// Opens `path`; `dataset_type` is required when the file has no header line.
    pub fn open(path: impl AsRef<Path>, dataset_type: Option<DatasetType>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| DatasetError::Io {
            path: path.clone(),
            source,
        })?;
        let mut lines = BufReader::new(file).lines();
        let mut line_no = 0;
        let first = loop {
            match lines.next() {
                None => {
                    return Err(DatasetError::Empty {
                        path,
                        message: "the file is empty".into(),
                    });
                }
                Some(Err(source)) => return Err(DatasetError::Io { path, source }),
                Some(Ok(l)) => {
                    line_no += 1;
                    if !l.trim().is_empty() {
                        break l;
                    }
                }
            }
        };
        let value: Value = serde_json::from_str(&first).map_err(|source| DatasetError::Json {
            path: path.clone(),
            line: Some(line_no),
            source,
        })?;
        let header_type = match value.as_object() {
            Some(o) if o.len() == 1 && o.contains_key("type") => {
                Some(parse_type(&path, o.get("type"))?)
            }
            _ => None,
        };
        let (ty, pending) = match (header_type, dataset_type) {
            (Some(h), Some(c)) if h != c => {
                return Err(DatasetError::Header {
                    path,
                    key: "type".into(),
                    message: format!("the header says `{h}` but `{c}` was requested"),
                });
            }
            (Some(h), _) => (h, None),
            (None, Some(c)) => (c, Some((line_no, first))),
            (None, None) => {
                return Err(DatasetError::Type(format!(
                    "{}: JSON Lines without a {{\"type\": ...}} header line: give the dataset type",
                    path.display()
                )));
            }
        };
        Ok(Self {
            path,
            lines,
            dataset_type: ty,
            pending,
            line_no,
            index: 0,
        })
    }

    /// The dataset type of the file.
    pub fn dataset_type(&self) -> DatasetType {
        self.dataset_type
    }

    fn parse(&mut self, line_no: usize, line: &str) -> Result<Instance> {
        let value: Value = serde_json::from_str(line).map_err(|source| DatasetError::Json {
            path: self.path.clone(),
            line: Some(line_no),
            source,
        })?;
        let index = self.index;
        self.index += 1;
        Instance::from_json(self.dataset_type, &value, &self.path, index)
    }
}

impl Iterator for JsonlStream {
    type Item = Result<Instance>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((n, line)) = self.pending.take() {
            return Some(self.parse(n, &line));
        }
        loop {
            match self.lines.next()? {
                Err(source) => {
                    return Some(Err(DatasetError::Io {
                        path: self.path.clone(),
                        source,
                    }));
                }
                Ok(line) => {
                    self.line_no += 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let n = self.line_no;
                    return Some(self.parse(n, &line));
                }
            }
        }
    }
}
