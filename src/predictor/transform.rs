//! AIO-P's label transform: FLOPs scaling (Eq. 5) then per-task standardisation (Eq. 4), and
//! its exact inverse back to the task's units.
//!
//! Forward: `y_F = s·y / (log10(F + 1) + 1)` (for `s·y < 0`, a negative label such as
//! room_layout's negative L2 loss, `y_F = s·y · (log10(F + 1) + 1)` instead, so that more FLOPs
//! always lower the scaled label as Eq. 5 intends; see [`scale`]) with `F` the network's GFLOPs for that task (MACs
//! convention, `graph.flops(Convention::Macs) / 1e9`), then `z = (y_F − μ) / σ` with μ and σ
//! the mean and *population* standard deviation of `y_F` over the task's fitting set.
//! Direction: `s = +1` when higher labels are better and `s = −1` when lower are better (a loss,
//! an error rate), so that a larger `z` always means a better network across all tasks a model
//! is pretrained on; the inverse multiplies by `s` again. A constant fitting set (σ = 0) gets
//! σ = 1 so the transform stays invertible.
//!
//! Invariants: `inverse(forward(y, F), F) == y` up to floating-point rounding for every finite
//! `y` and `F ≥ 0`; statistics are plain numbers serialised into checkpoints.

use serde::{Deserialize, Serialize};

use super::PredictorError;

/// The largest magnitude of μ and σ a checkpoint may hold: a task's labels are at most 1e100
/// (`taskfile::MAX_LABEL`) and Eq. 5 scales one by at most log10(F + 1) + 1 < 310 for any
/// FLOPs count an f64 holds, so fitted statistics stay below; larger ones (a hand-edited
/// sidecar) would overflow predictions to infinity.
pub const MAX_STAT: f64 = 1e103;
use crate::graph::{Convention, Graph};

/// GFLOPs of a graph in the convention the transform uses.
pub fn gflops(g: &Graph) -> f64 {
    g.flops(Convention::Macs) as f64 / 1e9
}

/// The FLOPs divisor of Eq. 5: `log10(F + 1) + 1` (≥ 1 for `F ≥ 0`).
pub fn flops_divisor(gflops: f64) -> f64 {
    (gflops.max(0.0) + 1.0).log10() + 1.0
}

/// Eq. 5 on a directed label `v` (higher is better): `v / d(F)` when `v ≥ 0`, `v · d(F)` when
/// `v < 0`, with `d(F) = log10(F + 1) + 1 ≥ 1`. Both branches lower the score of a network as
/// its FLOPs grow, which is what Eq. 5 does for the non-negative labels it was written for; a
/// plain division would *raise* a negative label (room_layout's negative L2 loss, a negated
/// error) towards zero, rewarding FLOPs instead. For `v ≥ 0` this is exactly Eq. 5. It is
/// strictly increasing in `v` for a fixed `F` and continuous at 0, so it inverts exactly.
fn scale(flops_scaling: bool, v: f64, gflops: f64) -> f64 {
    if !flops_scaling {
        v
    } else if v >= 0.0 {
        v / flops_divisor(gflops)
    } else {
        v * flops_divisor(gflops)
    }
}

/// The inverse of [`scale`] (the sign of `v` is the sign of its image).
fn unscale(flops_scaling: bool, v: f64, gflops: f64) -> f64 {
    if !flops_scaling {
        v
    } else if v >= 0.0 {
        v * flops_divisor(gflops)
    } else {
        v / flops_divisor(gflops)
    }
}

/// μ, σ and direction of one task.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskScaler {
    pub mu: f64,
    pub sigma: f64,
    pub higher_is_better: bool,
    /// Whether Eq. 5's FLOPs scaling is applied (true for AIO-P; false gives plain per-task
    /// standardisation, the "GNN without the label transform" baseline).
    #[serde(default = "yes")]
    pub flops_scaling: bool,
}

fn yes() -> bool {
    true
}

impl TaskScaler {
    fn sign(&self) -> f64 {
        if self.higher_is_better {
            1.0
        } else {
            -1.0
        }
    }

    /// Fit μ and σ on labels `y` of networks with `gflops` (same length, at least one).
    pub fn fit(
        y: &[f64],
        gflops: &[f64],
        higher_is_better: bool,
    ) -> Result<TaskScaler, PredictorError> {
        TaskScaler::fit_with(y, gflops, higher_is_better, true)
    }

    /// [`TaskScaler::fit`], with or without the FLOPs scaling.
    pub fn fit_with(
        y: &[f64],
        gflops: &[f64],
        higher_is_better: bool,
        flops_scaling: bool,
    ) -> Result<TaskScaler, PredictorError> {
        if y.is_empty() || y.len() != gflops.len() {
            return Err(PredictorError::Data(format!(
                "fitting label statistics needs as many FLOPs as labels (at least one): {} labels, {} FLOPs",
                y.len(),
                gflops.len()
            )));
        }
        let s = if higher_is_better { 1.0 } else { -1.0 };
        let yf: Vec<f64> = y
            .iter()
            .zip(gflops)
            .map(|(&y, &f)| scale(flops_scaling, s * y, f))
            .collect();
        let n = yf.len() as f64;
        let mu = yf.iter().sum::<f64>() / n;
        let var = yf.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n;
        let sigma = var.sqrt();
        if !mu.is_finite() || !sigma.is_finite() {
            return Err(PredictorError::Data("labels are not finite".into()));
        }
        Ok(TaskScaler {
            mu,
            sigma: if sigma > 1e-12 { sigma } else { 1.0 },
            higher_is_better,
            flops_scaling,
        })
    }

    /// Whether statistics read from a file can be used: μ finite and σ finite and positive,
    /// each of magnitude at most [`MAX_STAT`], as [`TaskScaler::fit_with`] makes them from
    /// labels a task may have (anything else predicts NaN or infinity, or overflows to it).
    pub fn check(&self) -> Result<(), String> {
        if !(self.mu.is_finite() && self.mu.abs() <= MAX_STAT) {
            return Err(format!(
                "mu is {:e}, not a finite number of magnitude at most {MAX_STAT:e}",
                self.mu
            ));
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0 && self.sigma <= MAX_STAT) {
            return Err(format!(
                "sigma is {:e}, not a positive finite number of at most {MAX_STAT:e}",
                self.sigma
            ));
        }
        Ok(())
    }

    /// Task units → standardised target.
    pub fn forward(&self, y: f64, gflops: f64) -> f64 {
        (scale(self.flops_scaling, self.sign() * y, gflops) - self.mu) / self.sigma
    }

    /// Standardised prediction → task units.
    pub fn inverse(&self, z: f64, gflops: f64) -> f64 {
        self.sign() * unscale(self.flops_scaling, z * self.sigma + self.mu, gflops)
    }

    /// A standardised prediction `z` in the task's units with higher always better (the
    /// inverse times the direction), and the derivative of that with respect to `z` (positive).
    pub fn better_units(&self, z: f64, gflops: f64) -> (f64, f64) {
        let v = z * self.sigma + self.mu;
        let u = unscale(self.flops_scaling, v, gflops);
        let slope = if !self.flops_scaling {
            1.0
        } else if v >= 0.0 {
            flops_divisor(gflops)
        } else {
            1.0 / flops_divisor(gflops)
        };
        (u, self.sigma * slope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn better_units_are_the_directed_inverse_and_its_slope() {
        for (hib, scaling) in [(true, true), (false, true), (true, false)] {
            let s =
                TaskScaler::fit_with(&[-3.0, 5.0, 9.0], &[0.5, 2.0, 8.0], hib, scaling).unwrap();
            for (z, f) in [(0.3, 1.5), (-2.0, 0.2), (1.7, 30.0)] {
                let (u, d) = s.better_units(z, f);
                let dir = if hib { 1.0 } else { -1.0 };
                assert!((u - dir * s.inverse(z, f)).abs() < 1e-12);
                let h = 1e-6;
                let fd = (s.better_units(z + h, f).0 - s.better_units(z - h, f).0) / (2.0 * h);
                assert!(d > 0.0 && (d - fd).abs() < 1e-6 * d.max(1.0), "{d} vs {fd}");
            }
        }
    }

    #[test]
    fn fit_standardises() {
        let y = [90.0, 80.0, 70.0];
        let f = [0.0, 0.0, 0.0];
        let s = TaskScaler::fit(&y, &f, true).unwrap();
        assert!((s.mu - 80.0).abs() < 1e-12);
        // population std of {90, 80, 70}
        assert!((s.sigma - (200.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let z: Vec<f64> = y.iter().map(|&v| s.forward(v, 0.0)).collect();
        assert!(z.iter().sum::<f64>().abs() < 1e-12);
        assert!(z[0] > z[1] && z[1] > z[2]);
    }

    #[test]
    fn flops_scaling_matches_eq5() {
        // F = 9 GFLOPs: divisor log10(10) + 1 = 2.
        assert!((flops_divisor(9.0) - 2.0).abs() < 1e-12);
        let s = TaskScaler {
            mu: 0.0,
            sigma: 1.0,
            higher_is_better: true,
            flops_scaling: true,
        };
        assert!((s.forward(80.0, 9.0) - 40.0).abs() < 1e-12);
        let plain = TaskScaler {
            flops_scaling: false,
            ..s
        };
        assert!((plain.forward(80.0, 9.0) - 80.0).abs() < 1e-12);
        assert!((plain.inverse(80.0, 9.0) - 80.0).abs() < 1e-12);
        // Sidecars written before the field existed read as scaled.
        let old: TaskScaler =
            serde_json::from_str(r#"{"mu": 0.0, "sigma": 1.0, "higher_is_better": true}"#).unwrap();
        assert!(old.flops_scaling);
    }

    #[test]
    fn round_trip_is_exact_both_directions() {
        let y = [93.1, 12.5, 47.25, 60.0, 0.0, -1.09, -0.6];
        let f = [0.08, 0.2, 1.5, 30.0, 0.0, 2.0, 0.3];
        for hib in [true, false] {
            let s = TaskScaler::fit(&y, &f, hib).unwrap();
            for (&v, &g) in y.iter().zip(&f) {
                let back = s.inverse(s.forward(v, g), g);
                assert!((back - v).abs() <= 1e-12 * v.abs().max(1.0), "{v} → {back}");
            }
        }
    }

    #[test]
    fn lower_is_better_flips_the_order() {
        let loss = [0.1, 0.5, 0.9];
        let f = [0.1, 0.1, 0.1];
        let s = TaskScaler::fit(&loss, &f, false).unwrap();
        let z: Vec<f64> = loss.iter().map(|&v| s.forward(v, 0.1)).collect();
        assert!(
            z[0] > z[1] && z[1] > z[2],
            "the lowest loss gets the highest z"
        );
        assert!((s.inverse(z[0], 0.1) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn more_flops_never_raise_a_scaled_label_whatever_its_sign() {
        let s = TaskScaler {
            mu: 0.0,
            sigma: 1.0,
            higher_is_better: true,
            flops_scaling: true,
        };
        for y in [-1.09, -0.6, 0.0, 0.05, 93.7] {
            let small = s.forward(y, 0.1);
            let big = s.forward(y, 50.0);
            assert!(big <= small, "y {y}: {small} at 0.1 GFLOPs, {big} at 50");
            assert!((s.inverse(big, 50.0) - y).abs() < 1e-12);
        }
        // Eq. 5 exactly for non-negative labels; multiplied for negative ones (F = 9: d = 2).
        assert!((s.forward(80.0, 9.0) - 40.0).abs() < 1e-12);
        assert!((s.forward(-0.5, 9.0) + 1.0).abs() < 1e-12);
        // Monotone in y across zero for a fixed F.
        let ys = [-2.0, -0.1, 0.0, 0.1, 2.0];
        let zs: Vec<f64> = ys.iter().map(|&y| s.forward(y, 3.0)).collect();
        assert!(zs.windows(2).all(|w| w[0] < w[1]), "{zs:?}");
    }

    #[test]
    fn constant_labels_keep_unit_sigma() {
        let s = TaskScaler::fit(&[5.0, 5.0], &[1.0, 1.0], true).unwrap();
        assert_eq!(s.sigma, 1.0);
        assert!(TaskScaler::fit(&[], &[], true).is_err());
        assert!(TaskScaler::fit(&[1.0], &[], true).is_err());
    }

    #[test]
    fn check_refuses_unusable_statistics() {
        let ok = TaskScaler::fit(&[1.0, 2.0], &[0.1, 0.2], true).unwrap();
        assert!(ok.check().is_ok());
        for (mu, sigma, what) in [
            (f64::NAN, 1.0, "mu"),
            (f64::INFINITY, 1.0, "mu"),
            (0.0, 0.0, "sigma"),
            (0.0, -1.0, "sigma"),
            (0.0, f64::NAN, "sigma"),
            (0.0, f64::INFINITY, "sigma"),
            (0.0, 1.79e308, "sigma"),
            (-1.1e103, 1.0, "mu"),
        ] {
            let e = TaskScaler { mu, sigma, ..ok }.check().unwrap_err();
            assert!(e.starts_with(what), "{e}");
        }
    }
}
