//! The pairwise (Bradley-Terry) loss of reward modelling, as TRL's `RewardTrainer`.

use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;

/// `mean(-log σ(r_chosen - r_rejected - margin))`; without margins, `margin = 0`.
///
/// # Shapes
/// - chosen, rejected, margin: `[batch]`
/// - output: `[1]`
pub fn pairwise_reward_loss(
    chosen: Tensor<1>,
    rejected: Tensor<1>,
    margin: Option<Tensor<1>>,
) -> Tensor<1> {
    let mut diff = chosen - rejected;
    if let Some(m) = margin {
        diff = diff - m;
    }
    log_sigmoid(diff).neg().mean()
}
