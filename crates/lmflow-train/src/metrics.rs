//! Training metrics: one JSON object per logging step (`metrics.jsonl`) and a loss-curve PNG.

use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError, io_err};

/// One logged training or evaluation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Optimizer step.
    pub step: usize,
    /// Fractional epoch.
    pub epoch: f64,
    /// Mean training loss per trained token since the previous record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Evaluation loss per trained token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Learning rate used at this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Global gradient norm before clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Trained tokens per second since the previous record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// The objective's own metrics (e.g. DPO's `rewards/chosen`, `rewards/accuracies`), means
    /// since the previous record; evaluation metrics are prefixed `eval_`. Written as top-level
    /// keys of the JSON object.
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, f64>,
}

/// Appends [`MetricRecord`]s to a JSONL file, flushing each line.
pub struct MetricsWriter {
    path: PathBuf,
    file: std::fs::File,
    records: Vec<MetricRecord>,
}

impl MetricsWriter {
    /// Opens (appending, for resumed runs) `path`, keeping the records already in it.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let records = if path.exists() {
            read_metrics(path)?
        } else {
            Vec::new()
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            records,
        })
    }

    /// Drops records past `step` (a resumed run repeats them).
    pub fn truncate_after(&mut self, step: usize) -> Result<()> {
        let before = self.records.len();
        self.records.retain(|r| r.step <= step);
        if self.records.len() != before {
            let mut text = Vec::new();
            for r in &self.records {
                serde_json::to_writer(&mut text, r).map_err(|source| TrainError::Json {
                    path: self.path.clone(),
                    source,
                })?;
                text.push(b'\n');
            }
            crate::checkpoint::write_atomic(&self.path, &text)?;
            self.file = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map_err(io_err(&self.path))?;
        }
        Ok(())
    }

    /// Appends one record.
    pub fn write(&mut self, record: MetricRecord) -> Result<()> {
        let mut line = serde_json::to_vec(&record).map_err(|source| TrainError::Json {
            path: self.path.clone(),
            source,
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_err(&self.path))?;
        self.file.flush().map_err(io_err(&self.path))?;
        self.records.push(record);
        Ok(())
    }

    /// All records written so far (including those of the run being resumed).
    pub fn records(&self) -> &[MetricRecord] {
        &self.records
    }
}

/// Reads a `metrics.jsonl` file.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRecord>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|source| TrainError::Json {
                path: path.to_path_buf(),
                source,
            })
        })
        .collect()
}

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Registration only fails for an invalid font file, which is bundled and fixed.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws training loss (and evaluation loss, when present) against the step into a PNG.
pub fn plot_loss_curve(records: &[MetricRecord], path: &Path) -> Result<()> {
    let plot_err = |message: String| TrainError::Plot {
        path: path.to_path_buf(),
        message,
    };
    register_font();
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.loss.map(|l| (r.step as f64, l)))
        .collect();
    let eval: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.eval_loss.map(|l| (r.step as f64, l)))
        .collect();
    let all = train.iter().chain(eval.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x_max = x_max.max(x);
        if y.is_finite() {
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))
        .map_err(|e| plot_err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (nats/token)")
        .draw()
        .map_err(|e| plot_err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(train, &BLUE))
        .map_err(|e| plot_err(e.to_string()))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    if !eval.is_empty() {
        chart
            .draw_series(PointSeries::of_element(eval, 4, &RED, &|c, s, st| {
                Circle::new(c, s, st.filled())
            }))
            .map_err(|e| plot_err(e.to_string()))?
            .label("eval")
            .legend(|(x, y)| Circle::new((x + 9, y), 4, RED.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(e.to_string()))?;
    root.present().map_err(|e| plot_err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: usize, loss: f64) -> MetricRecord {
        MetricRecord {
            step,
            epoch: step as f64 / 10.0,
            loss: Some(loss),
            eval_loss: step.is_multiple_of(5).then_some(loss + 0.1),
            lr: Some(1e-3),
            grad_norm: Some(1.0),
            tokens_per_second: Some(100.0),
            extra: [("rewards/margins".to_string(), step as f64)].into(),
        }
    }

    #[test]
    fn jsonl_round_trips_and_resume_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::open(&p).unwrap();
        for s in 1..=6 {
            w.write(rec(s, 3.0 - s as f64 * 0.1)).unwrap();
        }
        drop(w);
        assert_eq!(read_metrics(&p).unwrap().len(), 6);
        let mut w = MetricsWriter::open(&p).unwrap();
        w.truncate_after(4).unwrap();
        w.write(rec(5, 1.0)).unwrap();
        let back = read_metrics(&p).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back[4].loss, Some(1.0));
    }

    #[test]
    fn loss_curve_is_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        let records: Vec<_> = (1..=20).map(|s| rec(s, 4.0 / s as f64)).collect();
        plot_loss_curve(&records, &p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 2000);
    }
}
