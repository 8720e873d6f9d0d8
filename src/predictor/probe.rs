//! A ridge "probe": a linear regression, fitted on a few labelled networks, from fixed features
//! of each network (the frozen pretrained encoders' graph embeddings, log-FLOPs, log-params) to
//! its label in the task's units.
//!
//! Why: fine-tuning every weight of the GNN on 20 networks moves little on an unseen space
//! (the fine-tuned models rank the TNB-101 macro targets about as FLOPs do). Linear probing of
//! frozen features is the usual few-shot alternative: it cannot forget what pretraining learnt,
//! and with a strong, cross-validated penalty it falls back to predicting the mean.
//!
//! Method: each feature column is standardised by the labelled networks' mean and standard
//! deviation (label-free; a constant column gets weight 0), the intercept is not penalised, and
//! the penalty `λ = c · d` (`d` the number of usable columns, the trace of the standardised
//! Gram matrix over `n`) takes the `c` of [`GRID`] with the least exact leave-one-out squared
//! error (ties: the larger penalty). The fit works in the `n × n` kernel form, so its cost does
//! not grow with the width of the features.
//!
//! Status: a column of `aiop eval` (`probe`, and `wmeanz+probe`: a third member of the default
//! blend), not part of any default. Validated in session 13 (BENCHMARKS.md): on NB-101 and DARTS
//! as unseen spaces it raised the default blend by 0.011 (0.824 → 0.836), but on NB-201 and
//! TNB-101 micro as unseen spaces it lowered it (NB-201 CIFAR-100 0.740 → 0.675), so it was not
//! adopted; with 50 labelled networks the pattern held (12 validation rows: −0.003). Session
//! 14's two variants (the probe gated by its held-out rank; the probe judged on the members' own
//! folds, [`Probe::out_of_folds`]) failed the same validation.
//!
//! Invariants: a pure function of its inputs; [`Probe::out_of_fold`] predicts each labelled
//! network from a probe that never saw its label, its penalty chosen without it as well
//! (nested leave-one-out), so a blend may weigh the probe by those predictions honestly;
//! predictions are finite for finite inputs.

use serde::{Deserialize, Serialize};

use super::PredictorError;
use crate::stats::{mean, std};

/// The penalty multipliers tried, weakest first.
pub const GRID: [f64; 9] = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0];

/// A fitted probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Per feature column: the mean and standard deviation it is standardised by (sd 0: the
    /// column is constant over the labelled networks and ignored).
    pub columns: Vec<(f64, f64)>,
    /// Weight per standardised column (0 for an ignored one).
    pub weights: Vec<f64>,
    /// The labels' mean: the prediction for a network with every feature at its mean.
    pub intercept: f64,
    /// The chosen penalty.
    pub lambda: f64,
}

/// `a` (`n × n`, row-major) inverted by Gauss–Jordan elimination with partial pivoting; `None`
/// when singular.
fn invert(mut a: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        inv[i * n + i] = 1.0;
    }
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&r, &s| a[r * n + col].abs().total_cmp(&a[s * n + col].abs()))?;
        let p = a[pivot * n + col];
        if p.abs() <= 1e-300 || !p.is_finite() {
            return None;
        }
        if pivot != col {
            for k in 0..n {
                a.swap(col * n + k, pivot * n + k);
                inv.swap(col * n + k, pivot * n + k);
            }
        }
        for k in 0..n {
            a[col * n + k] /= p;
            inv[col * n + k] /= p;
        }
        for r in 0..n {
            if r != col {
                let f = a[r * n + col];
                if f != 0.0 {
                    for k in 0..n {
                        a[r * n + k] -= f * a[col * n + k];
                        inv[r * n + k] -= f * inv[col * n + k];
                    }
                }
            }
        }
    }
    Some(inv)
}

/// The rows of `x` picked by `idx`, standardised by their own column statistics.
struct Design {
    columns: Vec<(f64, f64)>,
    /// `idx.len()` rows of standardised features (ignored columns left out).
    z: Vec<Vec<f64>>,
}

fn design(x: &[Vec<f64>], idx: &[usize]) -> Design {
    let d = x.first().map_or(0, |r| r.len());
    let columns: Vec<(f64, f64)> = (0..d)
        .map(|j| {
            let c: Vec<f64> = idx.iter().map(|&i| x[i][j]).collect();
            let sd = std(&c);
            // A spread this small relative to the values is rounding, not signal.
            let sd = if sd > 1e-9 * (1.0 + mean(&c).abs()) {
                sd
            } else {
                0.0
            };
            (mean(&c), sd)
        })
        .collect();
    let z = idx
        .iter()
        .map(|&i| {
            columns
                .iter()
                .zip(&x[i])
                .filter(|((_, sd), _)| *sd > 0.0)
                .map(|((m, sd), v)| (v - m) / sd)
                .collect()
        })
        .collect();
    Design { columns, z }
}

/// `gram + λI` inverted, `gram` being `m × m` (row-major).
fn ridge_inverse(gram: &[f64], m: usize, lambda: f64) -> Result<Vec<f64>, PredictorError> {
    let mut a = gram.to_vec();
    for i in 0..m {
        a[i * m + i] += lambda;
    }
    invert(a, m).ok_or_else(|| PredictorError::Data("probe: a singular ridge system".into()))
}

/// The penalty `λ = c · d` of [`GRID`] whose fit `fit_at(λ)` (its mean leave-one-out squared
/// error and its coefficients) errs least, with those coefficients. Ties (and a grid whose
/// every error is undefined) go to the larger penalty.
fn least_loo(
    d: usize,
    mut fit_at: impl FnMut(f64) -> Result<(f64, Vec<f64>), PredictorError>,
) -> Result<(f64, Vec<f64>), PredictorError> {
    let mut best: Option<(f64, f64, Vec<f64>)> = None;
    for c in GRID {
        let lambda = c * d.max(1) as f64;
        let (loo, coef) = fit_at(lambda)?;
        let better = match &best {
            None => true,
            Some((b, _, _)) => b.is_nan() || (!loo.is_nan() && loo <= *b),
        };
        if better {
            best = Some((loo, lambda, coef));
        }
    }
    let (_, lambda, coef) = best.expect("GRID is not empty");
    Ok((lambda, coef))
}

/// The penalty of [`GRID`] with the least exact leave-one-out squared error on the standardised
/// design `z` and centred labels `yc`, and its dual coefficients `α = (ZZᵀ + λI)⁻¹ yc`.
fn fit_dual(z: &[Vec<f64>], yc: &[f64]) -> Result<(f64, Vec<f64>), PredictorError> {
    let n = z.len();
    let d = z.first().map_or(0, |r| r.len());
    let gram: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            z[i].iter().zip(&z[j]).map(|(a, b)| a * b).sum()
        })
        .collect();
    least_loo(d, |lambda| {
        let inv = ridge_inverse(&gram, n, lambda)?;
        let alpha: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| inv[i * n + j] * yc[j]).sum())
            .collect();
        // With the unpenalised intercept the hat matrix is 11ᵀ/n + K(K + λI)⁻¹, the residual
        // y − ŷ is λα and 1 − H_ii = λ(K + λI)⁻¹_ii − 1/n.
        let loo: f64 = (0..n)
            .map(|i| {
                let denom = lambda * inv[i * n + i] - 1.0 / n as f64;
                let e = lambda * alpha[i] / denom;
                e * e
            })
            .sum::<f64>()
            / n as f64;
        Ok((loo, alpha))
    })
}

/// The same choice and fit as [`fit_dual`] in the primal form, for designs with more rows than
/// columns: `w = (ZᵀZ + λI)⁻¹ Zᵀ yc`, the leave-one-out residual `e_i / (1 − 1/n − z_iᵀ(ZᵀZ +
/// λI)⁻¹z_i)`. Returns the penalty and the primal weights.
fn fit_primal(z: &[Vec<f64>], yc: &[f64]) -> Result<(f64, Vec<f64>), PredictorError> {
    let n = z.len();
    let d = z.first().map_or(0, |r| r.len());
    let mut gram = vec![0.0; d * d];
    let mut zty = vec![0.0; d];
    for (r, &y) in z.iter().zip(yc) {
        for a in 0..d {
            zty[a] += r[a] * y;
            for b in 0..d {
                gram[a * d + b] += r[a] * r[b];
            }
        }
    }
    least_loo(d, |lambda| {
        let inv = ridge_inverse(&gram, d, lambda)?;
        let w: Vec<f64> = (0..d)
            .map(|i| (0..d).map(|j| inv[i * d + j] * zty[j]).sum())
            .collect();
        let loo: f64 = z
            .iter()
            .zip(yc)
            .map(|(r, &y)| {
                let fit: f64 = r.iter().zip(&w).map(|(a, b)| a * b).sum();
                let h: f64 = (0..d)
                    .map(|i| r[i] * (0..d).map(|j| inv[i * d + j] * r[j]).sum::<f64>())
                    .sum();
                let e = (y - fit) / (1.0 - 1.0 / n as f64 - h);
                e * e
            })
            .sum::<f64>()
            / n as f64;
        Ok((loo, w))
    })
}

impl Probe {
    /// Fit on the rows `x[i]` (one feature vector per labelled network, all equally long)
    /// against labels `y`.
    pub fn fit(x: &[Vec<f64>], y: &[f64]) -> Result<Probe, PredictorError> {
        let all: Vec<usize> = (0..y.len()).collect();
        Probe::fit_on(x, y, &all)
    }

    fn fit_on(x: &[Vec<f64>], y: &[f64], idx: &[usize]) -> Result<Probe, PredictorError> {
        let n = idx.len();
        if x.len() != y.len() {
            return Err(PredictorError::Data(format!(
                "probe: {} feature rows for {} labels",
                x.len(),
                y.len()
            )));
        }
        if n < 3 {
            return Err(PredictorError::Data(format!(
                "probe: {n} labelled networks, at least 3 needed"
            )));
        }
        let d = x[0].len();
        if x.iter().any(|r| r.len() != d) {
            return Err(PredictorError::Data(
                "probe: feature rows of different lengths".into(),
            ));
        }
        if x.iter().flatten().chain(y).any(|v| !v.is_finite()) {
            return Err(PredictorError::Data("probe: inputs are not finite".into()));
        }
        let ys: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
        let y_mean = mean(&ys);
        let yc: Vec<f64> = ys.iter().map(|v| v - y_mean).collect();
        let des = design(x, idx);
        let used = des.z.first().map_or(0, |r| r.len());
        // Many networks, few columns (a task head, [`super::heads`]): the d × d system; else
        // the n × n one. Both give the same penalty and weights.
        let (lambda, w_used) = if n > 2 * used {
            fit_primal(&des.z, &yc)?
        } else {
            let (lambda, alpha) = fit_dual(&des.z, &yc)?;
            // Primal weights w = Zᵀα over the usable columns.
            let w: Vec<f64> = (0..used)
                .map(|j| des.z.iter().zip(&alpha).map(|(r, a)| r[j] * a).sum())
                .collect();
            (lambda, w)
        };
        // Spread back over all columns.
        let mut it = w_used.into_iter();
        let weights = des
            .columns
            .iter()
            .map(|(_, sd)| {
                if *sd > 0.0 {
                    it.next().unwrap_or(0.0)
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Probe {
            columns: des.columns,
            weights,
            intercept: y_mean,
            lambda,
        })
    }

    /// The prediction for one feature vector (as long as the fit's).
    pub fn apply(&self, x: &[f64]) -> f64 {
        self.intercept
            + self
                .columns
                .iter()
                .zip(&self.weights)
                .zip(x)
                .filter(|(((_, sd), _), _)| *sd > 0.0)
                .map(|(((m, sd), w), v)| w * (v - m) / sd)
                .sum::<f64>()
    }

    /// Predictions for many feature vectors, in order.
    pub fn apply_all<'a>(&self, x: impl IntoIterator<Item = &'a [f64]>) -> Vec<f64> {
        x.into_iter().map(|r| self.apply(r)).collect()
    }

    /// Out-of-fold predictions over given folds (`fold[i]`: the fold of row `i`): each fold
    /// predicted by a probe fitted (penalty chosen by LOO) on the other folds' rows.
    pub fn out_of_folds(
        x: &[Vec<f64>],
        y: &[f64],
        fold: &[usize],
    ) -> Result<Vec<f64>, PredictorError> {
        let n = y.len();
        if fold.len() != n {
            return Err(PredictorError::Data(format!(
                "probe: {} fold labels for {n} rows",
                fold.len()
            )));
        }
        let mut out = vec![f64::NAN; n];
        let mut folds: Vec<usize> = fold.to_vec();
        folds.sort_unstable();
        folds.dedup();
        for f in folds {
            let rest: Vec<usize> = (0..n).filter(|&j| fold[j] != f).collect();
            let p = Probe::fit_on(x, y, &rest)?;
            for i in (0..n).filter(|&i| fold[i] == f) {
                out[i] = p.apply(&x[i]);
            }
        }
        Ok(out)
    }

    /// Nested leave-one-out: network `i`'s prediction by a probe fitted (penalty chosen
    /// included) on the others ([`Probe::out_of_folds`] with one network per fold).
    pub fn out_of_fold(x: &[Vec<f64>], y: &[f64]) -> Result<Vec<f64>, PredictorError> {
        let each: Vec<usize> = (0..y.len()).collect();
        Probe::out_of_folds(x, y, &each)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::stats::spearman;

    fn rows(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|_| (0..d).map(|_| r.next_f64() * 2.0 - 1.0).collect())
            .collect()
    }

    #[test]
    fn out_of_folds_with_one_row_per_fold_is_leave_one_out() {
        let x = rows(14, 4, 3);
        let y: Vec<f64> = x.iter().map(|r| r[0] - 2.0 * r[1] + 0.3 * r[3]).collect();
        let each: Vec<usize> = (0..14).collect();
        assert_eq!(
            Probe::out_of_folds(&x, &y, &each).unwrap(),
            Probe::out_of_fold(&x, &y).unwrap()
        );
        // Two folds: every row predicted by a probe that never saw it.
        let halves: Vec<usize> = (0..14).map(|i| i % 2).collect();
        let oof = Probe::out_of_folds(&x, &y, &halves).unwrap();
        let odd: Vec<usize> = (0..14).filter(|i| i % 2 == 0).collect();
        let p = Probe::fit_on(&x, &y, &odd).unwrap();
        assert_eq!(oof[1], p.apply(&x[1]));
        assert!(Probe::out_of_folds(&x, &y, &halves[..3]).is_err());
    }

    #[test]
    fn the_closed_form_leave_one_out_matches_refitting() {
        // The LOO error of the chosen penalty, from the hat-matrix identity, against n refits.
        let x = rows(12, 5, 1);
        let y: Vec<f64> = x.iter().map(|r| 3.0 * r[0] - r[2] + 0.1 * r[4]).collect();
        let des = design(&x, &(0..12).collect::<Vec<_>>());
        let yc: Vec<f64> = y.iter().map(|v| v - mean(&y)).collect();
        let (lambda, alpha) = fit_dual(&des.z, &yc).unwrap();
        let n = 12;
        let gram_inv = {
            let mut a: Vec<f64> = (0..n * n)
                .map(|k| {
                    des.z[k / n]
                        .iter()
                        .zip(&des.z[k % n])
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            for i in 0..n {
                a[i * n + i] += lambda;
            }
            invert(a, n).unwrap()
        };
        for i in 0..n {
            // Refit without i on the same standardised design and penalty.
            let rest: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            let zr: Vec<Vec<f64>> = rest.iter().map(|&j| des.z[j].clone()).collect();
            let yr: Vec<f64> = rest.iter().map(|&j| y[j]).collect();
            let ym = mean(&yr);
            let m = n - 1;
            let mut a: Vec<f64> = (0..m * m)
                .map(|k| zr[k / m].iter().zip(&zr[k % m]).map(|(a, b)| a * b).sum())
                .collect();
            // The intercept is unpenalised: centre the design over the rest as well.
            let d = zr[0].len();
            let cm: Vec<f64> = (0..d)
                .map(|j| zr.iter().map(|r| r[j]).sum::<f64>() / m as f64)
                .collect();
            let zc: Vec<Vec<f64>> = zr
                .iter()
                .map(|r| r.iter().zip(&cm).map(|(v, c)| v - c).collect())
                .collect();
            for k in 0..m * m {
                a[k] = zc[k / m].iter().zip(&zc[k % m]).map(|(a, b)| a * b).sum();
            }
            for j in 0..m {
                a[j * m + j] += lambda;
            }
            let inv = invert(a, m).unwrap();
            let al: Vec<f64> = (0..m)
                .map(|p| (0..m).map(|q| inv[p * m + q] * (yr[q] - ym)).sum())
                .collect();
            let pred: f64 = ym
                + (0..m)
                    .map(|p| {
                        al[p]
                            * zc[p]
                                .iter()
                                .zip(des.z[i].iter().zip(&cm))
                                .map(|(a, (v, c))| a * (v - c))
                                .sum::<f64>()
                    })
                    .sum::<f64>();
            let closed = y[i] - lambda * alpha[i] / (lambda * gram_inv[i * n + i] - 1.0 / n as f64);
            assert!(
                (pred - closed).abs() < 1e-9 * (1.0 + pred.abs()),
                "{i}: refit {pred} against identity {closed}"
            );
        }
    }

    #[test]
    fn a_linear_signal_is_recovered_and_noise_is_shrunk_to_the_mean() {
        let x = rows(20, 6, 2);
        let y: Vec<f64> = x.iter().map(|r| 2.0 * r[1] - r[3] + 5.0).collect();
        let p = Probe::fit(&x, &y).unwrap();
        assert_eq!(p.lambda, GRID[0] * 6.0, "clean data: the weakest penalty");
        let test = rows(50, 6, 3);
        let truth: Vec<f64> = test.iter().map(|r| 2.0 * r[1] - r[3] + 5.0).collect();
        assert!(spearman(&p.apply_all(test.iter().map(Vec::as_slice)), &truth) > 0.95);
        let oof = Probe::out_of_fold(&x, &y).unwrap();
        assert!(spearman(&oof, &y) > 0.9);
        // Labels unrelated to the features: the strongest penalty, predictions near the mean.
        let noise: Vec<f64> = rows(20, 1, 4).into_iter().map(|r| r[0]).collect();
        let q = Probe::fit(&x, &noise).unwrap();
        let spread = std(&q.apply_all(test.iter().map(Vec::as_slice)));
        assert!(
            spread < 0.5 * std(&noise),
            "{spread} against {}",
            std(&noise)
        );
    }

    #[test]
    fn constant_columns_are_ignored_and_bad_input_refused() {
        let mut x = rows(10, 3, 5);
        for r in &mut x {
            r.push(7.0);
        }
        let y: Vec<f64> = x.iter().map(|r| r[0]).collect();
        let p = Probe::fit(&x, &y).unwrap();
        assert_eq!(p.weights[3], 0.0);
        assert!(p.apply(&[0.0, 0.0, 0.0, 1e9]).is_finite());
        assert!(Probe::fit(&x[..2], &y[..2]).is_err());
        assert!(Probe::fit(&x, &y[..9]).is_err());
        let mut bad = x.clone();
        bad[0][0] = f64::NAN;
        assert!(Probe::fit(&bad, &y).is_err());
        // Nothing usable at all: the labels' mean.
        let flat = vec![vec![1.0]; 5];
        let z = Probe::fit(&flat, &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(z.apply(&[9.0]), 3.0);
    }

    #[test]
    fn the_primal_form_gives_the_dual_form_s_fit() {
        let x = rows(40, 5, 8);
        let mut r = Rng::new(9);
        let y: Vec<f64> = x
            .iter()
            .map(|v| v[0] - 0.5 * v[2] + 0.8 * r.next_f64())
            .collect();
        let des = design(&x, &(0..40).collect::<Vec<_>>());
        let yc: Vec<f64> = y.iter().map(|v| v - mean(&y)).collect();
        let (l_dual, alpha) = fit_dual(&des.z, &yc).unwrap();
        let (l_primal, w) = fit_primal(&des.z, &yc).unwrap();
        assert_eq!(l_dual, l_primal);
        for (j, wj) in w.iter().enumerate() {
            let from_dual: f64 = des.z.iter().zip(&alpha).map(|(r, a)| r[j] * a).sum();
            assert!(
                (wj - from_dual).abs() < 1e-9,
                "{j}: {wj} against {from_dual}"
            );
        }
        // Noisy labels: a penalty above the weakest, so the LOO choice itself was compared.
        assert!(l_primal > GRID[0] * 5.0, "{l_primal}");
    }

    #[test]
    fn the_inverse_inverts() {
        let a = vec![4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let inv = invert(a.clone(), 3).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| a[i * 3 + k] * inv[k * 3 + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        assert!(invert(vec![1.0, 2.0, 2.0, 4.0], 2).is_none());
    }
}
