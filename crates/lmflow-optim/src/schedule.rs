//! Learning-rate schedules equal to `transformers.get_scheduler`.
//!
//! A [`LrSchedule`] is pure arithmetic: [`LrSchedule::lr`] gives the learning rate used for the
//! optimizer update number `step` (0-based), exactly as HF's `LambdaLR` does after `step`
//! calls of `scheduler.step()`. It also implements Burn's
//! [`LrScheduler`] so it can drive a Burn `Learner`.

use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::LearningRate;
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

use crate::Error;

/// Schedule names, spelled as HF's `SchedulerType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Constant learning rate.
    Constant,
    /// Linear warmup then constant.
    ConstantWithWarmup,
    /// Linear warmup then linear decay to 0 at `num_training_steps`.
    Linear,
    /// Linear warmup then cosine decay (`num_cycles` waves, default 0.5).
    Cosine,
    /// Linear warmup then `num_cycles` (default 1) hard-restarted cosine decays.
    CosineWithRestarts,
    /// Linear warmup then polynomial decay (`power`, default 1) to `lr_end` (default 1e-7).
    Polynomial,
    /// Linear warmup then `1/sqrt` decay with `timescale` (default `warmup_steps` or 10000).
    InverseSqrt,
    /// Warmup, stable, decay (`num_decay_steps` required).
    WarmupStableDecay,
    /// Cosine decay to `min_lr` or `min_lr_rate * lr`.
    CosineWithMinLr,
}

impl ScheduleKind {
    /// Every supported name.
    pub const NAMES: &'static [&'static str] = &[
        "constant",
        "constant_with_warmup",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "inverse_sqrt",
        "warmup_stable_decay",
        "cosine_with_min_lr",
    ];
}

/// Shape of the warmup or decay phase of `warmup_stable_decay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PhaseShape {
    /// Linear ramp.
    #[serde(rename = "linear")]
    Linear,
    /// Half cosine.
    #[default]
    #[serde(rename = "cosine")]
    Cosine,
    /// `1 - sqrt` ramp.
    #[serde(rename = "1-sqrt")]
    OneMinusSqrt,
}

/// A schedule as a config file gives it; field names follow HF `TrainingArguments` and
/// `lr_scheduler_kwargs`.
///
/// ```json
/// {"name": "cosine", "warmup_ratio": 0.03}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Schedule name (`linear`, `cosine`, ...).
    pub name: ScheduleKind,
    /// Warmup steps; when absent or 0, `warmup_ratio` decides.
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    /// Warmup as a fraction of `num_training_steps` (rounded up, as HF does).
    #[serde(default)]
    pub warmup_ratio: Option<f64>,
    /// Cosine waves (default 0.5) or restart count (default 1).
    #[serde(default)]
    pub num_cycles: Option<f64>,
    /// Polynomial power (default 1.0).
    #[serde(default)]
    pub power: Option<f64>,
    /// Polynomial end learning rate (default 1e-7).
    #[serde(default)]
    pub lr_end: Option<f64>,
    /// Inverse-sqrt timescale (default `warmup_steps`, or 10000 without warmup).
    #[serde(default)]
    pub timescale: Option<usize>,
    /// WSD: decay steps (required for `warmup_stable_decay`).
    #[serde(default)]
    pub num_decay_steps: Option<usize>,
    /// WSD: stable steps (default `num_training_steps - warmup - decay`).
    #[serde(default)]
    pub num_stable_steps: Option<usize>,
    /// WSD warmup shape (default linear).
    #[serde(default)]
    pub warmup_type: Option<PhaseShape>,
    /// WSD decay shape (default cosine).
    #[serde(default)]
    pub decay_type: Option<PhaseShape>,
    /// WSD: floor as a fraction of the peak learning rate (default 0).
    #[serde(default)]
    pub min_lr_ratio: Option<f64>,
    /// `cosine_with_min_lr`: floor as a fraction of the peak.
    #[serde(default)]
    pub min_lr_rate: Option<f64>,
    /// `cosine_with_min_lr`: absolute floor.
    #[serde(default)]
    pub min_lr: Option<f64>,
}

impl ScheduleConfig {
    /// A config with only the name set.
    pub fn new(name: ScheduleKind) -> Self {
        Self {
            name,
            warmup_steps: None,
            warmup_ratio: None,
            num_cycles: None,
            power: None,
            lr_end: None,
            timescale: None,
            num_decay_steps: None,
            num_stable_steps: None,
            warmup_type: None,
            decay_type: None,
            min_lr_ratio: None,
            min_lr_rate: None,
            min_lr: None,
        }
    }

    /// Parses a JSON schedule config; the error names the offending field or the valid names.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        serde_json::from_str(json).map_err(|source| Error::Config {
            what: "schedule",
            source,
        })
    }

    /// The warmup length for `num_training_steps`, as HF's `get_warmup_steps`.
    pub fn warmup(&self, num_training_steps: usize) -> usize {
        match self.warmup_steps {
            Some(steps) if steps > 0 => steps,
            _ => self
                .warmup_ratio
                .map(|r| (num_training_steps as f64 * r).ceil() as usize)
                .unwrap_or(0),
        }
    }

    /// Builds the schedule for a peak learning rate `lr` and `num_training_steps` updates.
    pub fn init(&self, lr: f64, num_training_steps: usize) -> Result<LrSchedule, Error> {
        let invalid = |field, reason: String| Error::InvalidValue {
            what: "schedule",
            field,
            reason,
        };
        if let Some(r) = self.warmup_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(invalid("warmup_ratio", format!("{r} is not in [0, 1]")));
        }
        let warmup = self.warmup(num_training_steps);
        let rule = match self.name {
            ScheduleKind::Constant => Rule::Constant,
            ScheduleKind::ConstantWithWarmup => Rule::ConstantWithWarmup,
            ScheduleKind::Linear => Rule::Linear,
            ScheduleKind::Cosine => Rule::Cosine {
                num_cycles: self.num_cycles.unwrap_or(0.5),
                min_lr_rate: 0.0,
            },
            ScheduleKind::CosineWithMinLr => {
                let rate = match (self.min_lr, self.min_lr_rate) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "min_lr",
                            "only one of min_lr or min_lr_rate may be set".into(),
                        ));
                    }
                    (Some(min_lr), None) => min_lr / lr,
                    (None, Some(rate)) => rate,
                    (None, None) => {
                        return Err(invalid(
                            "min_lr",
                            "min_lr or min_lr_rate is required".into(),
                        ));
                    }
                };
                Rule::Cosine {
                    num_cycles: self.num_cycles.unwrap_or(0.5),
                    min_lr_rate: rate,
                }
            }
            ScheduleKind::CosineWithRestarts => Rule::CosineWithRestarts {
                num_cycles: self.num_cycles.unwrap_or(1.0),
            },
            ScheduleKind::Polynomial => {
                let lr_end = self.lr_end.unwrap_or(1e-7);
                if lr <= lr_end {
                    return Err(invalid(
                        "lr_end",
                        format!("lr_end ({lr_end}) must be smaller than the initial lr ({lr})"),
                    ));
                }
                Rule::Polynomial {
                    lr_end,
                    power: self.power.unwrap_or(1.0),
                }
            }
            ScheduleKind::InverseSqrt => {
                let timescale = self
                    .timescale
                    .unwrap_or(if warmup > 0 { warmup } else { 10_000 });
                if timescale == 0 {
                    return Err(invalid("timescale", "must be positive".into()));
                }
                Rule::InverseSqrt { timescale }
            }
            ScheduleKind::WarmupStableDecay => {
                let decay = self.num_decay_steps.ok_or_else(|| {
                    invalid("num_decay_steps", "required for warmup_stable_decay".into())
                })?;
                let stable = match self.num_stable_steps {
                    Some(s) => s,
                    None => num_training_steps
                        .checked_sub(warmup + decay)
                        .ok_or_else(|| {
                            invalid(
                                "num_decay_steps",
                                format!(
                                    "warmup ({warmup}) + decay ({decay}) exceed num_training_steps ({num_training_steps})"
                                ),
                            )
                        })?,
                };
                Rule::Wsd {
                    stable,
                    decay,
                    warmup_type: self.warmup_type.unwrap_or(PhaseShape::Linear),
                    decay_type: self.decay_type.unwrap_or(PhaseShape::Cosine),
                    min_lr_ratio: self.min_lr_ratio.unwrap_or(0.0),
                    num_cycles: self.num_cycles.unwrap_or(0.5),
                }
            }
        };
        Ok(LrSchedule {
            base_lr: lr,
            warmup,
            num_training_steps,
            rule,
            step: 0,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Rule {
    Constant,
    ConstantWithWarmup,
    Linear,
    Cosine {
        num_cycles: f64,
        min_lr_rate: f64,
    },
    CosineWithRestarts {
        num_cycles: f64,
    },
    Polynomial {
        lr_end: f64,
        power: f64,
    },
    InverseSqrt {
        timescale: usize,
    },
    Wsd {
        stable: usize,
        decay: usize,
        warmup_type: PhaseShape,
        decay_type: PhaseShape,
        min_lr_ratio: f64,
        num_cycles: f64,
    },
}

/// A learning-rate schedule: `lr(step)` for the optimizer update number `step` (0-based).
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    base_lr: f64,
    warmup: usize,
    num_training_steps: usize,
    rule: Rule,
    step: usize,
}

impl LrSchedule {
    /// Number of warmup steps in effect.
    pub fn warmup_steps(&self) -> usize {
        self.warmup
    }

    /// The peak learning rate.
    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }

    /// The learning rate for update number `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        self.base_lr * self.factor(step)
    }

    /// The multiplier HF's `lr_lambda` returns at `step`.
    pub fn factor(&self, step: usize) -> f64 {
        let s = step as f64;
        let warmup = self.warmup;
        let w = warmup as f64;
        let total = self.num_training_steps as f64;
        let linear_warmup = || s / (warmup.max(1) as f64);
        let progress =
            || (s - w) / ((self.num_training_steps.saturating_sub(warmup)).max(1) as f64);
        match &self.rule {
            Rule::Constant => 1.0,
            Rule::ConstantWithWarmup => {
                if step < warmup {
                    s / w.max(1.0)
                } else {
                    1.0
                }
            }
            Rule::Linear => {
                if step < warmup {
                    linear_warmup()
                } else {
                    ((total - s) / ((self.num_training_steps.saturating_sub(warmup)).max(1) as f64))
                        .max(0.0)
                }
            }
            Rule::Cosine {
                num_cycles,
                min_lr_rate,
            } => {
                if step < warmup {
                    return linear_warmup();
                }
                let f = 0.5 * (1.0 + (PI * num_cycles * 2.0 * progress()).cos());
                (f * (1.0 - min_lr_rate) + min_lr_rate).max(0.0)
            }
            Rule::CosineWithRestarts { num_cycles } => {
                if step < warmup {
                    return linear_warmup();
                }
                let p = progress();
                if p >= 1.0 {
                    return 0.0;
                }
                (0.5 * (1.0 + (PI * ((num_cycles * p) % 1.0)).cos())).max(0.0)
            }
            Rule::Polynomial { lr_end, power } => {
                if step < warmup {
                    linear_warmup()
                } else if step > self.num_training_steps {
                    lr_end / self.base_lr
                } else {
                    let range = self.base_lr - lr_end;
                    let decay_steps = total - w;
                    let remaining = 1.0 - (s - w) / decay_steps;
                    (range * remaining.powf(*power) + lr_end) / self.base_lr
                }
            }
            Rule::InverseSqrt { timescale } => {
                if step < warmup {
                    return linear_warmup();
                }
                let t = *timescale as f64;
                let shift = t - w;
                1.0 / ((s + shift) / t).sqrt()
            }
            Rule::Wsd {
                stable,
                decay,
                warmup_type,
                decay_type,
                min_lr_ratio,
                num_cycles,
            } => {
                if step < warmup {
                    let p = linear_warmup();
                    let f = match warmup_type {
                        PhaseShape::Linear => p,
                        PhaseShape::Cosine => 0.5 * (1.0 - (PI * p).cos()),
                        PhaseShape::OneMinusSqrt => 1.0 - (1.0 - p).sqrt(),
                    };
                    return (f * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0);
                }
                if step < warmup + stable {
                    return 1.0;
                }
                if step < warmup + stable + decay {
                    let p = (s - w - *stable as f64) / ((*decay).max(1) as f64);
                    let f = match decay_type {
                        PhaseShape::Linear => 1.0 - p,
                        PhaseShape::Cosine => 0.5 * (1.0 + (PI * num_cycles * 2.0 * p).cos()),
                        PhaseShape::OneMinusSqrt => 1.0 - p.sqrt(),
                    };
                    return (f * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0);
                }
                *min_lr_ratio
            }
        }
    }
}

impl LrScheduler for LrSchedule {
    /// Returns the learning rate for the next update and advances the step counter.
    fn step(&mut self) -> LearningRate {
        let lr = self.lr(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<usize>("step") {
            self.step = step;
        }
    }
}
