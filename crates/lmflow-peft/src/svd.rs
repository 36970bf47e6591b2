//! Top-`k` singular triplets for PiSSA initialisation.
//!
//! Small matrices (smaller side <= [`EXACT_LIMIT`]): exact, host-side f64 Jacobi
//! eigen-decomposition of the smaller Gram matrix. Larger ones: randomised subspace iteration
//! whose matmuls run on the tensor's device, with host-side orthonormalisation of the thin
//! `[rows, k + 8]` blocks and an exact Rayleigh-Ritz step.

use burn::tensor::{Distribution, Tensor, TensorData};

/// Largest smaller side handled by the exact solver.
pub(crate) const EXACT_LIMIT: usize = 512;

/// Subspace iterations of the randomised solver.
const POWER_ITERS: usize = 12;

fn host(t: Tensor<2>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
        .into_iter()
        .map(|x| x as f64)
        .collect()
}

/// Modified Gram-Schmidt on the columns of a row-major `rows x cols` matrix (twice, for
/// stability); returns the orthonormal basis as f32.
fn orthonormal_columns(mut a: Vec<f64>, rows: usize, cols: usize) -> Vec<f32> {
    for _ in 0..2 {
        for j in 0..cols {
            for p in 0..j {
                let dot: f64 = (0..rows).map(|i| a[i * cols + j] * a[i * cols + p]).sum();
                for i in 0..rows {
                    a[i * cols + j] -= dot * a[i * cols + p];
                }
            }
            let norm = (0..rows)
                .map(|i| a[i * cols + j].powi(2))
                .sum::<f64>()
                .sqrt();
            for i in 0..rows {
                a[i * cols + j] = if norm > 1e-300 {
                    a[i * cols + j] / norm
                } else {
                    0.0
                };
            }
        }
    }
    a.into_iter().map(|x| x as f32).collect()
}

/// Top-`k` singular triplets of `w` (`[m, n]`): `(U [m, k], S [k], V^T [k, n])`, row-major
/// f64, singular values descending. Exact for small matrices, randomised subspace iteration
/// (device matmuls) otherwise.
pub(crate) fn top_singular_tensor(w: Tensor<2>, k: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let [m, n] = w.dims();
    let device = w.device();
    if m.min(n) <= EXACT_LIMIT {
        let data: Vec<f32> = host(w).into_iter().map(|x| x as f32).collect();
        return top_singular(&data, m, n, k);
    }
    let p = (k + 8).min(m.min(n));
    let w = w.detach();
    let orth = |t: Tensor<2>| {
        let [rows, cols] = t.dims();
        let q = orthonormal_columns(host(t), rows, cols);
        Tensor::<2>::from_data(TensorData::new(q, [rows, cols]), &device)
    };
    let mut q = orth(Tensor::random(
        [n, p],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    for _ in 0..POWER_ITERS {
        let y = orth(w.clone().matmul(q));
        q = orth(w.clone().transpose().matmul(y));
    }
    // Rayleigh-Ritz: B = W Q (m x p); B^T B = V_b S^2 V_b^T exactly (p x p).
    let b = host(w.matmul(q.clone()));
    let q = host(q);
    let mut g = vec![0f64; p * p];
    for i in 0..m {
        for a in 0..p {
            let ba = b[i * p + a];
            for c in 0..p {
                g[a * p + c] += ba * b[i * p + c];
            }
        }
    }
    let (vals, vecs) = jacobi_eigen(g, p);
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
    let mut u = vec![0f64; m * k];
    let mut s = vec![0f64; k];
    let mut vt = vec![0f64; k * n];
    for (c, &e) in order.iter().take(k).enumerate() {
        let sigma = vals[e].max(0.0).sqrt();
        s[c] = sigma;
        for j in 0..n {
            vt[c * n + j] = (0..p).map(|a| q[j * p + a] * vecs[a * p + e]).sum();
        }
        for i in 0..m {
            let acc: f64 = (0..p).map(|a| b[i * p + a] * vecs[a * p + e]).sum();
            u[i * k + c] = if sigma > 0.0 { acc / sigma } else { 0.0 };
        }
    }
    (u, s, vt)
}

/// Returns `(U [m, k] row-major, S [k] descending, V^T [k, n] row-major)` for the row-major
/// `m x n` matrix `w`.
pub(crate) fn top_singular(
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    // Work on the Gram matrix of the smaller side: G = W^T W (n x n) or W W^T (m x m).
    let small = m.min(n);
    let gram = if n <= m {
        // G[a][b] = sum_i W[i][a] W[i][b]
        let mut g = vec![0f64; n * n];
        for i in 0..m {
            let row = &w[i * n..(i + 1) * n];
            for a in 0..n {
                let ra = row[a];
                if ra == 0.0 {
                    continue;
                }
                for b in 0..n {
                    g[a * n + b] += ra * row[b];
                }
            }
        }
        g
    } else {
        let mut g = vec![0f64; m * m];
        for a in 0..m {
            for b in 0..m {
                let mut s = 0.0;
                for j in 0..n {
                    s += w[a * n + j] * w[b * n + j];
                }
                g[a * m + b] = s;
            }
        }
        g
    };
    let (vals, vecs) = jacobi_eigen(gram, small);
    // Order eigenpairs by descending eigenvalue.
    let mut order: Vec<usize> = (0..small).collect();
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
    let mut u = vec![0f64; m * k];
    let mut s = vec![0f64; k];
    let mut vt = vec![0f64; k * n];
    for (c, &e) in order.iter().take(k).enumerate() {
        let sigma = vals[e].max(0.0).sqrt();
        s[c] = sigma;
        if n <= m {
            // v = eigenvector (n), u = W v / sigma
            for j in 0..n {
                vt[c * n + j] = vecs[j * small + e];
            }
            for i in 0..m {
                let mut acc = 0.0;
                for j in 0..n {
                    acc += w[i * n + j] * vt[c * n + j];
                }
                u[i * k + c] = if sigma > 0.0 { acc / sigma } else { 0.0 };
            }
        } else {
            for i in 0..m {
                u[i * k + c] = vecs[i * small + e];
            }
            for j in 0..n {
                let mut acc = 0.0;
                for i in 0..m {
                    acc += w[i * n + j] * u[i * k + c];
                }
                vt[c * n + j] = if sigma > 0.0 { acc / sigma } else { 0.0 };
            }
        }
    }
    (u, s, vt)
}

/// Cyclic Jacobi eigen-decomposition of a symmetric `d x d` matrix. Returns eigenvalues and
/// eigenvectors as columns of a row-major `d x d` matrix.
fn jacobi_eigen(mut a: Vec<f64>, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let mut off = 0.0;
        for p in 0..d {
            for q in (p + 1)..d {
                off += a[p * d + q] * a[p * d + q];
            }
        }
        let scale: f64 = (0..d).map(|i| a[i * d + i].abs()).sum::<f64>().max(1e-300);
        if off.sqrt() <= 1e-15 * scale {
            break;
        }
        for p in 0..d {
            for q in (p + 1)..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let akp = a[k * d + p];
                    let akq = a[k * d + q];
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let apk = a[p * d + k];
                    let aqk = a[q * d + k];
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let vkp = v[k * d + p];
                    let vkq = v[k * d + q];
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let vals = (0..d).map(|i| a[i * d + i]).collect();
    (vals, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn randomised_solver_finds_planted_spectrum() {
        // W = sum_k s_k u_k v_k^T + small noise, 600 x 520 (above EXACT_LIMIT).
        let device = burn::tensor::Device::flex();
        let (m, n) = (600, 520);
        let planted = [40.0f64, 30.0, 20.0];
        let orth_m = orthonormal_columns(
            (0..m * 3)
                .map(|i| ((i * 7919) % 101) as f64 - 50.0)
                .collect(),
            m,
            3,
        );
        let orth_n = orthonormal_columns(
            (0..n * 3)
                .map(|i| ((i * 104729) % 97) as f64 - 48.0)
                .collect(),
            n,
            3,
        );
        let mut w = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for c in 0..3 {
                    acc += planted[c] * orth_m[i * 3 + c] as f64 * orth_n[j * 3 + c] as f64;
                }
                w[i * n + j] = acc as f32 + 1e-3 * (((i * 31 + j * 17) % 13) as f32 - 6.0);
            }
        }
        let t = Tensor::<2>::from_data(TensorData::new(w, [m, n]), &device);
        let (u, s, vt) = top_singular_tensor(t, 2);
        assert!(
            (s[0] - 40.0).abs() < 0.1 && (s[1] - 30.0).abs() < 0.1,
            "{s:?}"
        );
        // Singular vectors match the planted ones up to sign.
        let du: f64 = (0..m).map(|i| u[i * 2] * orth_m[i * 3] as f64).sum();
        let dv: f64 = (0..n).map(|j| vt[j] * orth_n[j * 3] as f64).sum();
        assert!(du.abs() > 0.999 && dv.abs() > 0.999, "{du} {dv}");
    }

    #[test]
    fn recovers_known_singular_values() {
        // W = U diag(5, 3, 1) V^T with orthonormal U (4x3) and V (3x3 rotation).
        let (c, s) = (0.6f64, 0.8f64);
        let v = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let u = [
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 0.0],
        ];
        let sv = [5.0, 3.0, 1.0];
        let mut w = vec![0f32; 12];
        for i in 0..4 {
            for j in 0..3 {
                let mut acc = 0.0;
                for k in 0..3 {
                    acc += u[i][k] * sv[k] * v[j][k];
                }
                w[i * 3 + j] = acc as f32;
            }
        }
        let (uu, ss, vt) = top_singular(&w, 4, 3, 2);
        assert!(
            (ss[0] - 5.0).abs() < 1e-5 && (ss[1] - 3.0).abs() < 1e-5,
            "{ss:?}"
        );
        // rank-2 reconstruction equals W minus the sigma=1 component.
        for i in 0..4 {
            for j in 0..3 {
                let rec: f64 = (0..2).map(|k| uu[i * 2 + k] * ss[k] * vt[k * 3 + j]).sum();
                let want = w[i * 3 + j] as f64 - u[i][2] * 1.0 * v[j][2];
                assert!((rec - want).abs() < 1e-5);
            }
        }
    }
}
