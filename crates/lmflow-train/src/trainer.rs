//! The training loop: micro-batches, token-weighted gradient accumulation, global-norm clipping,
//! any `lmflow-optim` optimizer (AdamW by default) with a Hugging Face learning-rate schedule, evaluation, metrics and atomic, resumable
//! checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;
use lmflow_models::{CausalLm, ForwardInput};
use lmflow_optim::BuiltOptimizer;
use lmflow_optim::clip::{NormType, clip_grad_norm};
use lmflow_peft::lisa::{Lisa, LisaConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::checkpoint::{TrainerState, latest_checkpoint, replace_dir_atomic};
use crate::config::TrainerConfig;
use crate::distributed::{
    GradientSync, SingleProcess, agree, all_reduce_gradients, broadcast_trainable,
    micro_batches_per_epoch, rank_seed, same_everywhere, shard_range, trainable_layout_hash,
};
use crate::error::{Result, TrainError, io_err};
use crate::loss::causal_lm_loss;
use crate::metrics::{MetricRecord, MetricsWriter, plot_loss_curve};
use crate::objective::{MetricSum, Objective, SftObjective, predicted_tokens};
use crate::stable_ids::assign_stable_param_ids;
use lmflow_datasets::TokenizedSample;
use lmflow_datasets::batch::collate;
use lmflow_datasets::packing::{PackedBlock, build_block, pack_best_fit};

/// How a run writes and reads back the weights it trains (an adapter folder for PEFT runs, a
/// Hub-layout model folder for full fine-tuning).
///
/// `M` is the trained model type: a [`CausalLm`] unless a run trains another module (e.g. a
/// vision-language model).
pub trait WeightsIo<M = CausalLm> {
    /// Writes the trained weights of `model` into folder `dir` (which exists).
    fn save(&self, model: &M, dir: &Path) -> Result<()>;
    /// Restores the trained weights saved by [`WeightsIo::save`] in `dir` into `model`.
    fn load(&self, model: M, dir: &Path) -> Result<M>;
}

/// What the trainer reports while it runs (for progress bars and logs).
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// The run starts (or resumes at `start_step`).
    Started {
        /// Optimizer steps of the whole run.
        total_steps: usize,
        /// First step to run (non-zero when resumed).
        start_step: usize,
        /// Checkpoint resumed from, if any.
        resumed_from: Option<PathBuf>,
    },
    /// An optimizer step finished.
    Step {
        /// The step just taken (1-based).
        step: usize,
        /// Its mean loss per trained token.
        loss: f64,
        /// Its learning rate.
        lr: f64,
        /// Trained tokens per second, averaged over the run so far.
        tokens_per_second: f64,
    },
    /// A metrics record was written.
    Logged(MetricRecord),
    /// A checkpoint was written.
    Saved {
        /// Its folder.
        path: PathBuf,
    },
}

/// The result of [`Trainer::train`] (and of [`Trainer::train_objective`], whose model type
/// `M` may be another module than [`CausalLm`]).
#[derive(Debug)]
pub struct TrainOutcome<M = CausalLm> {
    /// The trained model.
    pub model: M,
    /// Final trainer state.
    pub state: TrainerState,
    /// Mean training loss of the last logged window.
    pub last_train_loss: Option<f64>,
    /// Evaluation loss at the end, when an evaluation set was given.
    pub final_eval_loss: Option<f64>,
    /// Folder holding the final weights (`<output_dir>/final`).
    pub final_dir: PathBuf,
}

/// Runs training with a [`TrainerConfig`].
pub struct Trainer {
    config: TrainerConfig,
    device: Device,
    pad_id: u32,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current optimizer step.
    stop: Option<Arc<AtomicBool>>,
    sync: Box<dyn GradientSync>,
}

impl Trainer {
    /// A trainer computing on `device` (an autodiff device, e.g. `Device::flex().autodiff()`),
    /// padding batches with `pad_id`.
    pub fn new(config: TrainerConfig, device: Device, pad_id: u32) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            device,
            pad_id,
            stop: None,
            sync: Box::new(SingleProcess),
        })
    }

    /// Makes this trainer one rank of a data-parallel run (see [`crate::distributed`]): it
    /// trains its shard of every step's rows, sums gradients, losses and evaluation sums with
    /// the other ranks through `sync`, and writes files (checkpoints, metrics, final weights)
    /// only on rank 0. Every rank must call the same methods with the same data.
    pub fn with_sync(mut self, sync: Box<dyn GradientSync>) -> Self {
        self.sync = sync;
        self
    }

    /// The data-parallel group of this trainer ([`SingleProcess`] unless
    /// [`Trainer::with_sync`] set another).
    pub fn sync(&self) -> &dyn GradientSync {
        &*self.sync
    }

    /// Stops the run cleanly once `flag` is set (a Ctrl-C handler sets it): after the
    /// optimizer step in progress, a checkpoint of that step is written and
    /// [`TrainError::Interrupted`] returned; resuming continues from it.
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// The configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// Mean loss per trained token of `model` on `samples`.
    ///
    /// # Errors
    /// [`TrainError::Config`] when `samples` hold no trained token (the mean is undefined).
    pub fn evaluate(&self, model: &CausalLm, samples: &[TokenizedSample]) -> Result<f64> {
        let (mut sum, mut tokens) = (0.0f64, 0usize);
        // Data-parallel: each rank evaluates its slice; the sums are added up below.
        let samples = &samples[eval_shard(samples.len(), &*self.sync)];
        for chunk in samples.chunks(self.config.per_device_eval_batch_size) {
            let refs: Vec<&TokenizedSample> = chunk.iter().collect();
            let batch = collate(&refs, self.pad_id, &self.device)?;
            let out = model.forward(
                ForwardInput::new(batch.input_ids).with_attention_mask(batch.attention_mask),
                None,
            )?;
            let loss = causal_lm_loss(out.logits, batch.labels);
            sum += loss.sum.into_scalar::<f32>() as f64;
            tokens += loss.tokens;
        }
        let mut totals = [sum, tokens as f64];
        self.sync.all_reduce_sum_f64(&mut totals)?;
        let [sum, tokens] = totals;
        if tokens == 0.0 {
            return Err(no_eval_tokens());
        }
        Ok(sum / tokens)
    }

    /// The weighted mean loss of `objective` over `items` and the means of its metrics
    /// (evaluation batches of `per_device_eval_batch_size` items).
    ///
    /// # Errors
    /// [`TrainError::Config`] when the items weigh nothing (the mean is undefined).
    pub fn evaluate_objective<M: Module, O: Objective<M>>(
        &self,
        objective: &O,
        model: &M,
        items: &[O::Item],
    ) -> Result<EvalOutcome> {
        let (mut sum, mut weight) = (0.0f64, 0.0f64);
        let mut metrics = MetricWindow::default();
        // Data-parallel: each rank evaluates its slice; the sums are added up below.
        let items = &items[eval_shard(items.len(), &*self.sync)];
        for chunk in items.chunks(self.config.per_device_eval_batch_size) {
            let refs: Vec<&O::Item> = chunk.iter().collect();
            weight += refs.iter().map(|i| objective.weight(i)).sum::<f64>();
            let (s, m) = objective.evaluate(model, &refs, &self.device)?;
            sum += s;
            metrics.add(m);
        }
        let mut totals = [sum, weight];
        self.sync.all_reduce_sum_f64(&mut totals)?;
        let [sum, weight] = totals;
        metrics.all_reduce(&*self.sync)?;
        if weight <= 0.0 {
            return Err(no_eval_tokens());
        }
        Ok(EvalOutcome {
            loss: sum / weight,
            metrics: metrics.take(),
        })
    }

    /// Trains `model` (its trainable parameters only: freeze the base beforehand for adapter
    /// runs) on `train` with the causal-LM objective ([`SftObjective`]), evaluating on `eval`
    /// when given. Samples are packed into rows when `packing` is on. Resumes from the newest
    /// checkpoint in the output folder when `resume` is set.
    pub fn train(
        &self,
        model: CausalLm,
        weights: &dyn WeightsIo,
        train: &[TokenizedSample],
        eval: Option<&[TokenizedSample]>,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<TrainOutcome> {
        let cfg = &self.config;
        if train.is_empty() {
            return Err(TrainError::Config("the training set is empty".into()));
        }
        // Training rows: best-fit packed blocks of several samples (positions restart and
        // attention stays within each sample), or one sample per row.
        let rows: Vec<PackedBlock> = if cfg.packing {
            pack_best_fit(train, cfg.block_size)?
        } else {
            (0..train.len())
                .map(|i| build_block(train, vec![i]))
                .collect()
        };
        if rows.iter().all(|row| predicted_tokens(&row.labels) == 0) {
            return Err(TrainError::Config(
                "the training set has no trained tokens: every label is masked (prompt-only \
                 samples) or every sample is a single token (raise the block size)"
                    .into(),
            ));
        }
        let eval_rows: Option<Vec<PackedBlock>> =
            eval.map(|e| (0..e.len()).map(|i| build_block(e, vec![i])).collect());
        let objective = SftObjective::new(self.pad_id, cfg.loss_chunk_tokens)
            .with_gradient_checkpointing(cfg.gradient_checkpointing);
        self.train_objective(
            model,
            weights,
            &objective,
            &rows,
            eval_rows.as_deref(),
            on_event,
        )
    }

    /// The training loop, shared by every objective: trains `model`'s trainable parameters on
    /// `train` (one epoch = one pass over the items in a seeded order), minimising
    /// `objective`'s weighted mean loss per optimizer step, evaluating on `eval` when given,
    /// logging the objective's metrics and resuming from the newest checkpoint when `resume`
    /// is set.
    ///
    /// `model` is usually a [`CausalLm`]; any Burn module `M` works with an objective and a
    /// [`WeightsIo`] for it (a vision-language model, ...).
    pub fn train_objective<M: Module, O: Objective<M>>(
        &self,
        model: M,
        weights: &dyn WeightsIo<M>,
        objective: &O,
        train: &[O::Item],
        eval: Option<&[O::Item]>,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<TrainOutcome<M>> {
        let cfg = &self.config;
        if train.is_empty() {
            return Err(TrainError::Config("the training set is empty".into()));
        }
        if train.iter().all(|item| objective.weight(item) <= 0.0) {
            return Err(TrainError::Config(
                "no training item carries any weight (nothing to train on)".into(),
            ));
        }
        let out_dir = cfg.output_dir.clone();
        // Data parallelism: rank `rank` of `world` trains its shard of each step's rows; only
        // rank 0 writes files.
        let sync = &*self.sync;
        let (rank, world) = (sync.rank(), sync.world_size());
        let root = rank == 0;
        if root {
            std::fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
        }
        agree(
            sync,
            "the training rows (count and weights)",
            items_hash(objective, train),
        )?;
        // Steps of the global batch (`world × per-device batch` rows per micro-batch).
        let total_steps = cfg.total_steps(train.len().div_ceil(world));
        let schedule = cfg.schedule().init(cfg.learning_rate, total_steps)?;
        let mut model = assign_stable_param_ids(model);
        let mut optim = cfg.build_optimizer()?;
        let mut lisa = match cfg.lisa_activated_layers {
            Some(n) => {
                let prototype = optim.optimizer.clone();
                let lisa_cfg = LisaConfig::new(n)
                    .with_interval_steps(cfg.lisa_interval_steps)
                    .with_seed(cfg.seed);
                Some(Lisa::new(lisa_cfg, &model, move || prototype.clone())?)
            }
            None => None,
        };

        // Resume.
        let mut state = TrainerState::default();
        let mut resumed_from = None;
        if cfg.resume
            && let Some(ckpt) = latest_checkpoint(&out_dir)
        {
            state = TrainerState::load(&ckpt)?;
            model = assign_stable_param_ids(weights.load(model, &ckpt.join("weights"))?);
            let opt_path = ckpt.join("optimizer.bpk");
            if !opt_path.is_file() {
                tracing::warn!(
                    "{}: no optimizer state; resuming with a fresh optimizer (its moments \
                     restart from zero)",
                    opt_path.display()
                );
            } else {
                let record = burn::optim::OptimizerRecord::load(&opt_path).map_err(|e| {
                    TrainError::Config(format!(
                        "{}: cannot read optimizer state: {e}",
                        opt_path.display()
                    ))
                })?;
                optim.optimizer = optim.optimizer.load_record(record);
            }
            if let Some(l) = &mut lisa {
                // Both LISA optimizers, the active layers and the sampler come back.
                model = crate::checkpoint::resume_lisa(l, model, &ckpt, state.global_step)?;
            }
            resumed_from = Some(ckpt);
        }
        agree(sync, "the step to resume from", state.global_step as u64)?;
        agree(
            sync,
            "the trainable parameters (names and shapes)",
            trainable_layout_hash(&model),
        )?;
        if resumed_from.is_none() {
            // Identical starting weights everywhere, whatever each rank's generator drew.
            model = broadcast_trainable(model, sync)?;
        }
        // Dropout masks come from the backend's generator: seed it from the run's seed and the
        // step the run starts at, so that a run and its repetition draw the same masks (ranks
        // other than 0 draw their own).
        self.device
            .seed(rank_seed(cfg.seed, state.global_step, rank));
        let mut metrics = match root {
            true => {
                let mut m = MetricsWriter::open(&out_dir.join("metrics.jsonl"))?;
                m.truncate_after(state.global_step)?;
                Some(m)
            }
            false => None,
        };
        on_event(TrainEvent::Started {
            total_steps,
            start_step: state.global_step,
            resumed_from,
        });

        let micro_per_epoch =
            micro_batches_per_epoch(train.len(), cfg.per_device_train_batch_size, world);
        let mut order = epoch_order(train.len(), cfg.seed, state.epoch);
        let started = Instant::now();
        let mut run_tokens = 0u64;
        let (mut window_sum, mut window_weight) = (0.0f64, 0.0f64);
        let mut window_metrics = MetricWindow::default();
        let mut last_train_loss = None;
        let mut last_eval = None;

        while state.global_step < total_steps {
            // Gather the micro-batches of this optimizer step.
            let mut micro = Vec::with_capacity(cfg.gradient_accumulation_steps);
            while micro.len() < cfg.gradient_accumulation_steps {
                if state.batch_in_epoch >= micro_per_epoch {
                    state.epoch += 1;
                    state.batch_in_epoch = 0;
                    order = epoch_order(train.len(), cfg.seed, state.epoch);
                    if !micro.is_empty() {
                        break; // an epoch ends mid-accumulation: step with what we have
                    }
                }
                // This rank's block of the global micro-batch (possibly empty at an epoch's end).
                let shard = shard_range(
                    train.len(),
                    cfg.per_device_train_batch_size,
                    world,
                    rank,
                    state.batch_in_epoch,
                );
                micro.push(order[shard].iter().map(|&i| &train[i]).collect::<Vec<_>>());
                state.batch_in_epoch += 1;
            }
            let step_tokens: usize = micro
                .iter()
                .flat_map(|m| m.iter())
                .map(|item| objective.tokens(item))
                .sum();
            let step_weight: f64 = micro
                .iter()
                .flat_map(|m| m.iter())
                .map(|item| objective.weight(item))
                .sum();
            // Normalise by the weight of the whole global step, summed over the ranks.
            let mut totals = [step_weight, step_tokens as f64];
            sync.all_reduce_sum_f64(&mut totals)?;
            let [step_weight, step_tokens] = totals;
            let step_tokens = step_tokens as usize;
            if let Some(l) = &mut lisa {
                model = l.on_step_begin(model);
            }
            let mut accumulator = GradientsAccumulator::<M>::new();
            let mut step_sum = 0.0f64;
            // Weighted: the step's loss is the sum over its micro-batches / their total weight.
            let denom = if step_weight > 0.0 { step_weight } else { 1.0 };
            let scale = 1.0 / denom;
            for items in micro.iter().filter(|m| !m.is_empty()) {
                let out = objective.backward(&model, items, scale, &self.device)?;
                step_sum += out.loss_sum;
                window_metrics.add(out.metrics);
                accumulator.accumulate(&model, out.grads);
            }
            // Once per optimizer step, before clipping: sum the ranks' gradients and losses.
            let mut grads = all_reduce_gradients(&model, accumulator.grads(), sync)?;
            let mut total = [step_sum];
            sync.all_reduce_sum_f64(&mut total)?;
            let [step_sum] = total;
            let grad_norm = if cfg.max_grad_norm > 0.0 {
                clip_grad_norm(&model, &mut grads, cfg.max_grad_norm, NormType::P(2.0))?
            } else {
                lmflow_optim::clip::grad_norm(&model, &grads, NormType::P(2.0))
            };
            // A NaN or infinite step stops the run here, before the optimizer step and before
            // any checkpoint of this step: the last good checkpoint is never rotated away.
            let step_loss = step_sum / denom;
            for (quantity, value) in [("loss", step_loss), ("gradient norm", grad_norm)] {
                if !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: state.global_step + 1,
                        quantity,
                        value,
                    });
                }
            }
            let lr = schedule.lr(state.global_step);
            model = match &mut lisa {
                Some(l) => l.optimizer_step_params(lr, model, grads),
                None => optim.step(lr, model, grads),
            };
            state.global_step += 1;
            state.tokens_seen += step_tokens as u64;
            run_tokens += step_tokens as u64;
            window_sum += step_sum;
            window_weight += step_weight;
            let tps = run_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
            on_event(TrainEvent::Step {
                step: state.global_step,
                loss: step_loss,
                lr,
                tokens_per_second: tps,
            });

            let step = state.global_step;
            let last = step == total_steps;
            let eval_now =
                eval.is_some() && ((cfg.eval_steps > 0 && step % cfg.eval_steps == 0) || last);
            let evaluated = match (eval_now, eval) {
                (true, Some(e)) => {
                    // Schedule-free optimizers evaluate at their averaged point.
                    model = optim.eval_params(model);
                    let out = self.evaluate_objective(objective, &model, e);
                    model = optim.train_params(model);
                    Some(out?)
                }
                _ => None,
            };
            let eval_loss = evaluated.as_ref().map(|e| e.loss);
            if eval_loss.is_some() {
                last_eval = eval_loss;
                if state.best_eval_loss.is_none_or(|b| eval_loss < Some(b)) {
                    state.best_eval_loss = eval_loss;
                }
            }
            if step % cfg.logging_steps == 0 || last || eval_loss.is_some() {
                let loss = (window_weight > 0.0).then(|| window_sum / window_weight);
                window_metrics.all_reduce(sync)?;
                let mut extra = window_metrics.take();
                if let Some(e) = &evaluated {
                    extra.extend(e.metrics.iter().map(|(k, v)| (format!("eval_{k}"), *v)));
                }
                last_train_loss = loss.or(last_train_loss);
                let record = MetricRecord {
                    step,
                    epoch: state.epoch as f64
                        + state.batch_in_epoch as f64 / micro_per_epoch as f64,
                    loss,
                    eval_loss,
                    lr: Some(lr),
                    grad_norm: Some(grad_norm),
                    tokens_per_second: Some(tps),
                    extra,
                };
                if let Some(m) = &mut metrics {
                    m.write(record.clone())?;
                }
                on_event(TrainEvent::Logged(record));
                (window_sum, window_weight) = (0.0, 0.0);
            }
            // Ctrl-C: stop after this step, with its checkpoint.
            let stopping = !last && self.stop_requested();
            if root && ((cfg.save_steps > 0 && step % cfg.save_steps == 0) || last || stopping) {
                let path = self.save_checkpoint(&model, &optim, lisa.as_ref(), &state, weights)?;
                on_event(TrainEvent::Saved { path });
            }
            if stopping {
                return Err(TrainError::Interrupted {
                    step,
                    checkpoint: out_dir.join(format!("checkpoint-{step}")),
                });
            }
        }

        // The final weights of a schedule-free run are its averaged (evaluation) point.
        let model = optim.eval_params(model);
        let final_dir = out_dir.join("final");
        if let Some(metrics) = &metrics {
            plot_loss_curve(metrics.records(), &out_dir.join("loss.png"))?;
            let staging = out_dir.join(".final.tmp");
            if staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
            }
            std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
            weights.save(&model, &staging)?;
            replace_dir_atomic(&staging, &final_dir)?;
        }
        let final_eval_loss = match (last_eval, eval) {
            (Some(l), _) => Some(l),
            (None, Some(e)) => Some(self.evaluate_objective(objective, &model, e)?.loss),
            (None, None) => None,
        };
        Ok(TrainOutcome {
            model,
            state,
            last_train_loss,
            final_eval_loss,
            final_dir,
        })
    }

    fn save_checkpoint<M: Module>(
        &self,
        model: &M,
        optim: &BuiltOptimizer,
        lisa: Option<&Lisa>,
        state: &TrainerState,
        weights: &dyn WeightsIo<M>,
    ) -> Result<PathBuf> {
        let out_dir = &self.config.output_dir;
        let dst = out_dir.join(format!("checkpoint-{}", state.global_step));
        let staging = out_dir.join(format!(".checkpoint-{}.tmp", state.global_step));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        let weights_dir = staging.join("weights");
        std::fs::create_dir_all(&weights_dir).map_err(io_err(&weights_dir))?;
        weights.save(model, &weights_dir)?;
        let opt_path = staging.join("optimizer.bpk");
        optim.optimizer.to_record().save(&opt_path).map_err(|e| {
            TrainError::Config(format!(
                "{}: cannot write optimizer state: {e}",
                opt_path.display()
            ))
        })?;
        if let Some(l) = lisa {
            crate::checkpoint::save_lisa(l, &staging)?;
        }
        // The state file goes last: a folder without it is never taken for a checkpoint.
        state.save(&staging)?;
        replace_dir_atomic(&staging, &dst)?;
        self.prune_checkpoints()?;
        Ok(dst)
    }

    fn prune_checkpoints(&self) -> Result<()> {
        let limit = self.config.save_total_limit;
        if limit == 0 {
            return Ok(());
        }
        let dir = &self.config.output_dir;
        let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
                Some((step, e.path()))
            })
            .collect();
        found.sort();
        while found.len() > limit {
            let (_, path) = found.remove(0);
            // Renamed first, so that a run killed while deleting never leaves a partial
            // `checkpoint-<step>` (a `checkpoint-<step>.old` is ignored and cleared later).
            let old = path.with_extension("old");
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
            }
            std::fs::rename(&path, &old).map_err(io_err(&path))?;
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        Ok(())
    }
}

/// The slice of an evaluation set of `n` items that this rank evaluates (contiguous, by rank).
fn eval_shard(n: usize, sync: &dyn GradientSync) -> std::ops::Range<usize> {
    let per = n.div_ceil(sync.world_size());
    let start = (sync.rank() * per).min(n);
    start..(start + per).min(n)
}

/// Hash of the items' count, weights and tokens: equal on ranks that train the same rows.
fn items_hash<M: Module, O: Objective<M>>(objective: &O, items: &[O::Item]) -> u64 {
    use crate::distributed::{FNV_OFFSET, fnv1a};
    let mut h = fnv1a(FNV_OFFSET, &(items.len() as u64).to_le_bytes());
    for item in items {
        h = fnv1a(h, &objective.weight(item).to_bits().to_le_bytes());
        h = fnv1a(h, &(objective.tokens(item) as u64).to_le_bytes());
    }
    h
}

/// The sample order of `epoch`: a seeded permutation, identical across runs (and resumes).
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(epoch as u64));
    order.shuffle(&mut rng);
    order
}

fn no_eval_tokens() -> TrainError {
    TrainError::Config(
        "the evaluation set has no trained tokens (every label is masked or every \
         sample is a single token): its loss is undefined"
            .into(),
    )
}

/// The evaluation of an objective on a set of items.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOutcome {
    /// Weighted mean loss.
    pub loss: f64,
    /// Mean of each of the objective's metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// Running sums of named metrics over a logging window.
#[derive(Debug, Default)]
struct MetricWindow {
    sums: BTreeMap<String, (f64, f64)>,
}

impl MetricWindow {
    fn add(&mut self, metrics: Vec<MetricSum>) {
        for m in metrics {
            let e = self.sums.entry(m.name).or_insert((0.0, 0.0));
            e.0 += m.sum;
            e.1 += m.count;
        }
    }

    /// Sums the window over the ranks of `sync` when they hold the same metric names (else
    /// each rank keeps its own).
    fn all_reduce(&mut self, sync: &dyn GradientSync) -> Result<()> {
        if sync.world_size() == 1 {
            return Ok(());
        }
        let names = self
            .sums
            .keys()
            .fold(crate::distributed::FNV_OFFSET, |h, k| {
                crate::distributed::fnv1a(h, k.as_bytes())
            });
        if !same_everywhere(sync, names)? {
            return Ok(());
        }
        let mut buf: Vec<f64> = self.sums.values().flat_map(|&(s, n)| [s, n]).collect();
        sync.all_reduce_sum_f64(&mut buf)?;
        for (v, c) in self.sums.values_mut().zip(buf.chunks(2)) {
            *v = (c[0], c[1]);
        }
        Ok(())
    }

    /// The window's means, emptying it.
    fn take(&mut self) -> BTreeMap<String, f64> {
        std::mem::take(&mut self.sums)
            .into_iter()
            .filter(|(_, (_, n))| *n > 0.0)
            .map(|(k, (s, n))| (k, s / n))
            .collect()
    }
}
