//! The weight-norm-preserving projection shared by AdamP and SGDP (Heo et al. 2021).

use burn::tensor::Tensor;

/// Projects `perturb` onto the tangent space of `param` when `grad` is (nearly) orthogonal to
/// `param`, first per output channel (rows of dimension 0) then over the whole layer, as the
/// reference `_projection`. Returns the (possibly projected) update and the weight-decay ratio
/// to apply (`wd_ratio` when projected, 1 otherwise). Tensors of rank 1 are never projected.
///
/// The decision reads one scalar per view back from the device.
pub(crate) fn project<const D: usize>(
    param: &Tensor<D>,
    grad: &Tensor<D>,
    perturb: Tensor<D>,
    delta: f64,
    wd_ratio: f64,
    eps: f64,
) -> (Tensor<D>, f64, bool) {
    if D <= 1 {
        return (perturb, 1.0, false);
    }
    let dims = param.dims();
    let numel: usize = dims.iter().product();
    for rows in [dims[0], 1] {
        let cols = numel / rows.max(1);
        let p2: Tensor<2> = param.clone().reshape([rows, cols]);
        let g2: Tensor<2> = grad.clone().reshape([rows, cols]);
        let p_norm = p2.clone().square().sum_dim(1).sqrt();
        let cosine = (g2.clone() * p2.clone())
            .sum_dim(1)
            .abs()
            .div(g2.square().sum_dim(1).sqrt().add_scalar(eps))
            .div(p_norm.clone().add_scalar(eps));
        let max_cos = cosine.max().into_scalar::<f32>() as f64;
        if max_cos < delta / (cols as f64).sqrt() {
            let p_n = p2.div(p_norm.add_scalar(eps));
            let u2: Tensor<2> = perturb.reshape([rows, cols]);
            let dot = (p_n.clone() * u2.clone()).sum_dim(1);
            let projected = u2 - p_n * dot;
            return (projected.reshape(dims), wd_ratio, true);
        }
    }
    (perturb, 1.0, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn projects_only_orthogonal_gradients() {
        let device = Device::flex();
        let p = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]),
            &device,
        );
        // Each gradient row is orthogonal to the matching parameter row.
        let orthogonal = Tensor::<2>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 1.0, 0.0], [2, 2]),
            &device,
        );
        let (update, ratio, projected) =
            project(&p, &orthogonal, orthogonal.clone(), 0.1, 0.1, 1e-8);
        assert!(projected);
        assert_eq!(ratio, 0.1);
        // The projected update has no component along the parameter rows.
        let radial = (update * p.clone())
            .sum_dim(1)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(radial < 1e-6);

        let aligned = p.clone();
        let (_, ratio, projected) = project(&p, &aligned, aligned.clone(), 0.1, 0.1, 1e-8);
        assert!(!projected);
        assert_eq!(ratio, 1.0);
    }
}
