//! A weighted blend of standardised signals about a target task — the fine-tuned models'
//! predictions and, optionally, the networks' log-FLOPs — fitted on the few labelled networks.
//!
//! Why: averaging two fine-tuned models in the task's units (`companion = "average"`) lets the
//! member with the wider spread decide the order. With Eq. 5 that is the AIO-P member, whose
//! predictions in task units carry the FLOPs factor, even on targets where its ranking is far
//! worse than the other's (TNB-101 macro segmentation, unseen task: 0.39 against 0.80; the
//! average ranks at 0.43). A blend first puts every signal on one scale (its mean and standard
//! deviation over the out-of-fold predictions of the labelled networks), then weighs it by how
//! well it ranked those networks (`max(0, Spearman)`, [`Weighting::Rank`]) or equally.
//! A log-FLOPs signal (bigger is better, in the task's direction) joins as one more member
//! when asked: where FLOPs alone ranks a target well, the labelled networks show it.
//!
//! Status: three blends are columns of `aiop eval` (`meanz`, `wmeanz`, `wmeanz+flops`,
//! [`super::eval`]). Against the product's former average over ten validation rows (session 9)
//! they did not win (0.683 / 0.685 / 0.684 against 0.687); with two rows from spaces outside
//! every protocol added (NB-101, DARTS; session 10) `wmeanz` did (0.708 against 0.707 over the
//! twelve, worst row −0.014), and it is what a task model fine-tuned with
//! `companion = "weighted"` (the default) predicts with ([`crate::tuned`]).
//!
//! The blend maps to the task's units as `mean(y) + sd(y)·s`, `s` the weighted mean of the
//! standardised signals, so that a calibration ([`super::calibrate`]) fitted on it afterwards
//! starts from the labels' scale.
//!
//! Invariants: a pure function of its inputs; a constant signal gets weight 0; with every
//! weight 0 the blend predicts the labels' mean; weights are never negative, so a blend never
//! inverts a signal; `apply` is finite for finite signals.

use serde::{Deserialize, Serialize};

use super::PredictorError;
use crate::stats::{mean, spearman, std};

/// How the signals are weighed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// Every non-constant signal alike.
    Equal,
    /// `max(0, Spearman of the signal with the labels)`; equal when every one is ≤ 0.
    Rank,
}

/// One signal's standardisation and weight.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub mean: f64,
    pub sd: f64,
    /// Normalised: the weights of a blend sum to 1 (or are all 0).
    pub weight: f64,
}

/// The fitted blend (stored in a task model's sidecar).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blend {
    /// In the order of the signals given to [`Blend::fit`].
    pub members: Vec<Member>,
    /// Mean and standard deviation of the labels.
    pub y_mean: f64,
    pub y_sd: f64,
}

/// The FLOPs signal of a network of `gflops` GFLOPs for a task in direction `higher_is_better`:
/// larger networks score higher in the task's direction.
pub fn flops_signal(gflops: f64, higher_is_better: bool) -> f64 {
    let l = gflops.max(1e-9).ln();
    if higher_is_better {
        l
    } else {
        -l
    }
}

impl Blend {
    /// Fit on `signals[m][i]` (signal `m` of labelled network `i`, e.g. out-of-fold
    /// predictions in task units) against labels `y`.
    pub fn fit(
        signals: &[&[f64]],
        y: &[f64],
        weighting: Weighting,
    ) -> Result<Blend, PredictorError> {
        let n = y.len();
        if signals.is_empty() || n < 2 {
            return Err(PredictorError::Data(format!(
                "a blend needs at least one signal and 2 labels: {} signals, {n} labels",
                signals.len()
            )));
        }
        if let Some(s) = signals.iter().find(|s| s.len() != n) {
            return Err(PredictorError::Data(format!(
                "a blend's signal has {} values for {n} labels",
                s.len()
            )));
        }
        if signals
            .iter()
            .flat_map(|s| s.iter())
            .chain(y)
            .any(|v| !v.is_finite())
        {
            return Err(PredictorError::Data("blend inputs are not finite".into()));
        }
        let mut members: Vec<Member> = signals
            .iter()
            .map(|s| {
                let sd = std(s);
                let weight = match weighting {
                    _ if sd <= 0.0 => 0.0,
                    Weighting::Equal => 1.0,
                    // `max` turns an undefined (NaN) Spearman into 0.
                    Weighting::Rank => spearman(s, y).max(0.0),
                };
                Member {
                    mean: mean(s),
                    sd,
                    weight,
                }
            })
            .collect();
        if members.iter().all(|m| m.weight == 0.0) {
            // Nothing ranks the labels: weigh every usable signal alike.
            for m in members.iter_mut().filter(|m| m.sd > 0.0) {
                m.weight = 1.0;
            }
        }
        let total: f64 = members.iter().map(|m| m.weight).sum();
        if total > 0.0 {
            for m in &mut members {
                m.weight /= total;
            }
        }
        Ok(Blend {
            members,
            y_mean: mean(y),
            y_sd: std(y),
        })
    }

    /// Check a blend read from a file: finite numbers, weights not negative, a positive
    /// spread for every weighed signal, and `signals` members.
    pub fn check(&self, signals: usize) -> Result<(), PredictorError> {
        let bad = |m: String| Err(PredictorError::Data(format!("invalid blend: {m}")));
        if self.members.len() != signals {
            return bad(format!(
                "{} members for {signals} signals",
                self.members.len()
            ));
        }
        if !(self.y_mean.is_finite() && self.y_sd.is_finite() && self.y_sd >= 0.0) {
            return bad("label mean or spread not finite".into());
        }
        for (i, m) in self.members.iter().enumerate() {
            let ok = m.mean.is_finite()
                && m.sd.is_finite()
                && m.weight.is_finite()
                && m.weight >= 0.0
                && (m.weight == 0.0 || m.sd > 0.0);
            if !ok {
                return bad(format!("member {i}: {m:?}"));
            }
        }
        Ok(())
    }

    /// The blend of one network's signals (in the order of the fit), in the task's units.
    pub fn apply(&self, signals: &[f64]) -> f64 {
        let columns: Vec<&[f64]> = signals.iter().map(std::slice::from_ref).collect();
        // No signal at all: the labels' mean, as a blend with every weight 0.
        self.apply_all(&columns).pop().unwrap_or(self.y_mean)
    }

    /// The blend of many networks: `signals[m][i]` as in [`Blend::fit`].
    pub fn apply_all(&self, signals: &[&[f64]]) -> Vec<f64> {
        let n = signals.first().map_or(0, |s| s.len());
        // The weighted sum of standardised signals per network.
        let mut sum = vec![0.0; n];
        for (m, s) in self.members.iter().zip(signals) {
            if m.weight > 0.0 {
                for (acc, &x) in sum.iter_mut().zip(s.iter()) {
                    *acc += m.weight * (x - m.mean) / m.sd;
                }
            }
        }
        sum.into_iter()
            .map(|s| self.y_mean + self.y_sd * s)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_weights_follow_each_signal_s_spearman_and_never_go_negative() {
        let y: Vec<f64> = (0..20).map(|i| i as f64).collect();
        let good: Vec<f64> = y.iter().map(|v| 100.0 * v).collect();
        let noisy: Vec<f64> = (0..20).map(|i| ((i * 7) % 20) as f64).collect();
        let inverted: Vec<f64> = y.iter().map(|v| -v).collect();
        let b = Blend::fit(&[&good, &noisy, &inverted], &y, Weighting::Rank).unwrap();
        let r_noisy = spearman(&noisy, &y);
        assert!((b.members[0].weight - 1.0 / (1.0 + r_noisy.max(0.0))).abs() < 1e-12);
        assert_eq!(b.members[2].weight, 0.0);
        assert!(b.members.iter().all(|m| m.weight >= 0.0));
        let w: f64 = b.members.iter().map(|m| m.weight).sum();
        assert!((w - 1.0).abs() < 1e-12);
    }

    #[test]
    fn scale_does_not_buy_weight() {
        // Two equally good signals, one spread 1000 times wider: equal weights put them on
        // one scale, so the wide one does not decide the order alone.
        let y: Vec<f64> = (0..10).map(|i| i as f64).collect();
        let a: Vec<f64> = vec![0.0, 1.0, 2.0, 3.0, 4.0, 9.0, 8.0, 7.0, 6.0, 5.0];
        let b: Vec<f64> = a.iter().rev().map(|v| 1000.0 * v).collect();
        let blend = Blend::fit(&[&a, &b], &y, Weighting::Equal).unwrap();
        let out = blend.apply_all(&[&a, &b]);
        let expect: Vec<f64> = a.iter().zip(&b).map(|(x, z)| x + z / 1000.0).collect();
        assert!(spearman(&out, &expect) > 0.999);
        assert!((mean(&out) - mean(&y)).abs() < 1e-9);
    }

    #[test]
    fn constant_or_useless_signals_fall_back_sensibly() {
        let y = [1.0, 2.0, 3.0, 4.0];
        let flat = [5.0; 4];
        let inv = [4.0, 3.0, 2.0, 1.0];
        let b = Blend::fit(&[&flat, &inv], &y, Weighting::Rank).unwrap();
        assert_eq!(b.members[0].weight, 0.0);
        assert_eq!(
            b.members[1].weight, 1.0,
            "every weight 0: equal over usable signals"
        );
        let c = Blend::fit(&[&flat], &y, Weighting::Rank).unwrap();
        assert_eq!(c.apply(&[7.0]), 2.5, "nothing usable: the labels' mean");
        assert!(Blend::fit(&[&[1.0, f64::NAN, 2.0, 3.0]], &y, Weighting::Equal).is_err());
        assert!(Blend::fit(&[&[1.0, 2.0]], &y, Weighting::Equal).is_err());
    }

    #[test]
    fn the_flops_signal_points_in_the_task_s_direction() {
        assert!(flops_signal(2.0, true) > flops_signal(1.0, true));
        assert!(flops_signal(2.0, false) < flops_signal(1.0, false));
        assert!(flops_signal(0.0, true).is_finite());
    }
}
