//! A linear map from a transferred model's predictions to the target task's units, fitted on
//! out-of-fold predictions of the few labelled networks.
//!
//! Why: with Eq. 5 a prediction in task units is `(ẑσ + μ)·(log10(F+1)+1)`, so an error of a
//! fraction of σ in `ẑ` becomes several points after the inverse (TNB-101 macro segmentation:
//! MAE 6–8 points on labels spread ±0.2). The cross-validation that chooses the fine-tuning
//! length ([`super::select`]) already produces, for every labelled network, a prediction by a
//! model that never saw it. Regressing the labels on those predictions measures how the
//! model's outputs relate to the truth on *unseen* networks of the target; the fitted slope
//! shrinks an over-confident scale towards the labels' mean.
//!
//! Two forms compete: the identity and `a + b·p` with `b > 0` (least squares; kept only when
//! its exact leave-one-out squared error, in closed form, is lower). The
//! slope is positive, so a calibration never changes the order of predictions: ranking
//! quality is the model's, only the units move. A third form adding `c·ln F` (re-weighting
//! the model against FLOPs) was validated and rejected: on TNB-101 micro class_scene,
//! class_object, room_layout and jigsaw it lowered the mean Spearman from 0.619 to 0.572
//! (BENCHMARKS.md).
//!
//! Invariants: a pure function of its inputs; the identity is always a candidate, so a
//! calibration never does worse than the uncalibrated model in leave-one-out error on the
//! networks it was fitted on; order-preserving; `apply` is finite for finite predictions.

use serde::{Deserialize, Serialize};

use super::PredictorError;

/// The fitted map `value = a + b·prediction` (`b > 0`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub a: f64,
    pub b: f64,
    /// Which form won.
    pub form: Form,
    /// Its leave-one-out mean squared error on the fitting networks (task units²).
    pub loo_mse: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Form {
    Identity,
    Affine,
}

impl Calibration {
    /// No change.
    pub fn identity() -> Calibration {
        Calibration {
            a: 0.0,
            b: 1.0,
            form: Form::Identity,
            loo_mse: f64::NAN,
        }
    }

    /// The calibrated value of a prediction `p` (task units).
    pub fn apply(&self, p: f64) -> f64 {
        match self.form {
            Form::Identity => p,
            Form::Affine => self.a + self.b * p,
        }
    }

    /// Fit on out-of-fold predictions `pred` of networks with labels `y` (same lengths, at
    /// least 4 networks; see the module docs for the choice of form).
    pub fn fit(pred: &[f64], y: &[f64]) -> Result<Calibration, PredictorError> {
        let n = y.len();
        if pred.len() != n || n < 4 {
            return Err(PredictorError::Data(format!(
                "calibration needs as many predictions as labels, at least 4: {} predictions, {n} labels",
                pred.len(),
            )));
        }
        if pred.iter().chain(y).any(|v| !v.is_finite()) {
            return Err(PredictorError::Data(
                "calibration inputs are not finite".into(),
            ));
        }
        let id_mse = pred
            .iter()
            .zip(y)
            .map(|(p, y)| (y - p).powi(2))
            .sum::<f64>()
            / n as f64;
        let mut best = Calibration {
            loo_mse: id_mse,
            ..Calibration::identity()
        };
        let (a, b, loo) = affine_loo(pred, y);
        if b > 0.0 && loo < best.loo_mse {
            best = Calibration {
                a,
                b,
                form: Form::Affine,
                loo_mse: loo,
            };
        }
        Ok(best)
    }
}

/// Least squares of `y` on `a + b·x`, with the exact leave-one-out mean squared error
/// (residual `r_i / (1 − h_ii)`, `h_ii = 1/n + (x_i − x̄)² / Sxx`). A constant `x` gives
/// `b = 0` (the mean of `y`).
fn affine_loo(x: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let n = y.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let a = my - b * mx;
    let loo = x
        .iter()
        .zip(y)
        .map(|(&xi, &yi)| {
            let h = 1.0 / n
                + if sxx > 0.0 {
                    (xi - mx).powi(2) / sxx
                } else {
                    0.0
                };
            ((yi - a - b * xi) / (1.0 - h).max(1e-9)).powi(2)
        })
        .sum::<f64>()
        / n;
    (a, b, loo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn recovers_an_exact_affine_map_and_never_inverts() {
        let p: Vec<f64> = (0..20).map(|i| i as f64 * 0.7 - 3.0).collect();
        let y: Vec<f64> = p.iter().map(|p| 2.0 + 0.5 * p).collect();
        let c = Calibration::fit(&p, &y).unwrap();
        assert_eq!(c.form, Form::Affine);
        for i in 0..20 {
            assert!((c.apply(p[i]) - y[i]).abs() < 1e-4, "{c:?}");
        }
        assert!(c.loo_mse < 1e-8);
        // Labels falling as predictions rise: a negative slope is never fitted.
        let y: Vec<f64> = p.iter().map(|p| 2.0 - 0.5 * p).collect();
        let c = Calibration::fit(&p, &y).unwrap();
        assert_eq!(c.form, Form::Identity);
        // Noisy labels around an over-confident scale: the slope shrinks it.
        let mut r = Rng::new(9);
        let y: Vec<f64> = p.iter().map(|p| 0.1 * p + r.next_f64()).collect();
        let c = Calibration::fit(&p, &y).unwrap();
        assert_eq!(c.form, Form::Affine);
        assert!(c.b > 0.0 && c.b < 0.5, "{c:?}");
    }

    #[test]
    fn keeps_the_identity_when_it_is_best_and_matches_brute_force_loo() {
        // Predictions already equal to the labels: the identity's error is 0.
        let mut r = Rng::new(3);
        let y: Vec<f64> = (0..12).map(|_| r.next_f64() * 10.0).collect();
        let c = Calibration::fit(&y, &y).unwrap();
        assert_eq!(c.form, Form::Identity);
        assert_eq!(c.apply(3.5), 3.5);
        // Closed-form leave-one-out error equals refitting without each point.
        let p: Vec<f64> = (0..12).map(|_| r.next_f64()).collect();
        let (_, _, loo) = affine_loo(&p, &y);
        let mut brute = 0.0;
        for i in 0..12 {
            let keep: Vec<usize> = (0..12).filter(|&j| j != i).collect();
            let pk: Vec<f64> = keep.iter().map(|&j| p[j]).collect();
            let yk: Vec<f64> = keep.iter().map(|&j| y[j]).collect();
            let (a, b, _) = affine_loo(&pk, &yk);
            brute += (y[i] - a - b * p[i]).powi(2);
        }
        assert!(
            (loo - brute / 12.0).abs() < 1e-6 * (1.0 + loo),
            "{loo} {brute}"
        );
    }

    #[test]
    fn a_constant_column_and_bad_inputs() {
        // Constant predictions: the fit stays finite whatever form wins.
        let p = vec![1.0; 8];
        let y: Vec<f64> = (0..8).map(|i| i as f64).collect();
        let c = Calibration::fit(&p, &y).unwrap();
        assert!(c.apply(1.0).is_finite());
        assert!(Calibration::fit(&p[..3], &y[..3]).is_err());
        assert!(Calibration::fit(&p, &y[..7]).is_err());
        let mut bad = y.clone();
        bad[2] = f64::NAN;
        assert!(Calibration::fit(&p, &bad).is_err());
    }
}
