//! Direct Preference Optimization losses (Rafailov et al. 2023), as TRL's `DPOTrainer`.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, relu};
use serde::{Deserialize, Serialize};

use crate::error::AlignError;

/// The DPO loss variants of TRL's `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// `-log σ(β·h)` with optional label smoothing (conservative DPO).
    #[default]
    Sigmoid,
    /// `max(0, 1 - β·h)` (SLiC).
    Hinge,
    /// `(h - 1/(2β))²` (IPO). As TRL, the trainer normalises the log-ratios of IPO by the
    /// completion length (mean log-probability per token) before forming `h`.
    Ipo,
    /// Robust DPO (Chowdhury et al. 2024), unbiased under label noise of rate
    /// `label_smoothing`: `(-(1-ε) log σ(β·h) + ε log σ(-β·h)) / (1 - 2ε)`.
    Robust,
}

impl DpoLossType {
    /// The names accepted on the command line (TRL's `loss_type` values).
    pub const NAMES: [&'static str; 4] = ["sigmoid", "hinge", "ipo", "robust"];
}

impl std::str::FromStr for DpoLossType {
    type Err = AlignError;

    fn from_str(s: &str) -> Result<Self, AlignError> {
        match s {
            "sigmoid" => Ok(Self::Sigmoid),
            "hinge" => Ok(Self::Hinge),
            "ipo" => Ok(Self::Ipo),
            "robust" => Ok(Self::Robust),
            other => Err(AlignError::Config(format!(
                "unknown DPO loss type `{other}`; one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// DPO settings (TRL's `DPOConfig` names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpoConfig {
    /// Temperature β of the implicit reward (default 0.1).
    pub beta: f64,
    /// Loss variant (default sigmoid).
    pub loss_type: DpoLossType,
    /// Label smoothing ε of the sigmoid (conservative DPO, as TRL before 1.0) and robust losses,
    /// in `[0, 0.5)` (default 0).
    pub label_smoothing: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: DpoLossType::Sigmoid,
            label_smoothing: 0.0,
        }
    }
}

impl DpoConfig {
    /// Checks β and the label smoothing.
    pub fn validate(&self) -> Result<(), AlignError> {
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(AlignError::Config(format!(
                "beta must be positive, got {}",
                self.beta
            )));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(AlignError::Config(format!(
                "label_smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
            )));
        }
        if self.label_smoothing > 0.0
            && !matches!(self.loss_type, DpoLossType::Sigmoid | DpoLossType::Robust)
        {
            return Err(AlignError::Config(
                "label_smoothing applies to the sigmoid and robust losses only".into(),
            ));
        }
        Ok(())
    }
}

/// Per-pair DPO losses and implicit rewards.
#[derive(Debug, Clone)]
pub struct DpoOutput {
    /// Loss of each pair, `[batch]`.
    pub losses: Tensor<1>,
    /// `β (log π(y_w) - log π_ref(y_w))`, `[batch]`.
    pub chosen_rewards: Tensor<1>,
    /// `β (log π(y_l) - log π_ref(y_l))`, `[batch]`.
    pub rejected_rewards: Tensor<1>,
}

impl DpoOutput {
    /// Mean loss over the batch, `[1]`.
    pub fn loss(&self) -> Tensor<1> {
        self.losses.clone().mean()
    }

    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    pub fn reward_accuracy(&self) -> f64 {
        let wins = self
            .chosen_rewards
            .clone()
            .greater(self.rejected_rewards.clone())
            .float()
            .mean();
        wins.into_scalar::<f32>() as f64
    }
}

/// DPO loss from the summed log-probabilities of chosen and rejected responses under the policy
/// and the frozen reference model (`h = (π_w - π_l) - (ref_w - ref_l)`).
///
/// # Shapes
/// All inputs `[batch]`.
pub fn dpo_loss(
    config: &DpoConfig,
    policy_chosen: Tensor<1>,
    policy_rejected: Tensor<1>,
    reference_chosen: Tensor<1>,
    reference_rejected: Tensor<1>,
) -> DpoOutput {
    let beta = config.beta;
    let chosen_rewards = (policy_chosen.clone() - reference_chosen.clone()).mul_scalar(beta);
    let rejected_rewards = (policy_rejected.clone() - reference_rejected.clone()).mul_scalar(beta);
    let h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected);
    let losses = match config.loss_type {
        DpoLossType::Sigmoid => {
            let ls = config.label_smoothing;
            let bh = h.mul_scalar(beta);
            log_sigmoid(bh.clone())
                .mul_scalar(-(1.0 - ls))
                .sub(log_sigmoid(bh.neg()).mul_scalar(ls))
        }
        DpoLossType::Hinge => relu(h.mul_scalar(-beta).add_scalar(1.0)),
        DpoLossType::Ipo => h.sub_scalar(1.0 / (2.0 * beta)).powi_scalar(2),
        DpoLossType::Robust => {
            let ls = config.label_smoothing;
            let bh = h.mul_scalar(beta);
            log_sigmoid(bh.clone())
                .mul_scalar(-(1.0 - ls))
                .add(log_sigmoid(bh.neg()).mul_scalar(ls))
                .div_scalar(1.0 - 2.0 * ls)
        }
    };
    DpoOutput {
        losses,
        chosen_rewards: chosen_rewards.detach(),
        rejected_rewards: rejected_rewards.detach(),
    }
}
