//! Ranking and error metrics of predictions against labels: Spearman's ρ (Pearson correlation
//! of average ranks, so ties are handled), Kendall's τ-b (tie-corrected), MAE.
//!
//! Invariants: inputs are equal-length slices of finite numbers; a metric that is undefined
//! (fewer than two points, or a constant input) is `NaN`, never a panic. Kendall is the
//! O(n²) pair count, meant for evaluation sets of up to some ten thousand points.

/// Average ranks (1-based), ties sharing the mean of their positions.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    let n = x.len() as f64;
    if x.len() < 2 {
        return f64::NAN;
    }
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's rank correlation.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Kendall's τ-b.
pub fn kendall(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    if n < 2 {
        return f64::NAN;
    }
    let (mut conc, mut disc, mut tx, mut ty) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i].total_cmp(&x[j]) as i64;
            let dy = y[i].total_cmp(&y[j]) as i64;
            match (dx, dy) {
                (0, 0) => {}
                (0, _) => tx += 1,
                (_, 0) => ty += 1,
                _ if dx == dy => conc += 1,
                _ => disc += 1,
            }
        }
    }
    let n1 = (conc + disc + tx) as f64;
    let n2 = (conc + disc + ty) as f64;
    if n1 == 0.0 || n2 == 0.0 {
        return f64::NAN;
    }
    (conc - disc) as f64 / (n1 * n2).sqrt()
}

/// Mean absolute error.
pub fn mae(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    if x.is_empty() {
        return f64::NAN;
    }
    x.iter().zip(y).map(|(a, b)| (a - b).abs()).sum::<f64>() / x.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 1.0, 4.0, 3.0, 5.0];
        // d² = 1+1+1+1+0 = 4 → ρ = 1 − 6·4/(5·24) = 0.8
        assert!((spearman(&x, &y) - 0.8).abs() < 1e-12);
        // 8 concordant, 2 discordant → τ = 0.6
        assert!((kendall(&x, &y) - 0.6).abs() < 1e-12);
        assert!((spearman(&x, &x) - 1.0).abs() < 1e-12);
        let rev: Vec<f64> = x.iter().map(|v| -v).collect();
        assert!((kendall(&x, &rev) + 1.0).abs() < 1e-12);
        assert!((mae(&x, &y) - 0.8).abs() < 1e-12);
    }

    #[test]
    fn ties_are_averaged_and_tau_b_corrected() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        // x ties one pair: 5 concordant, 0 discordant, n1 = 5, n2 = 6.
        let x = [1.0, 2.0, 2.0, 3.0];
        let y = [1.0, 2.0, 3.0, 4.0];
        assert!((kendall(&x, &y) - 5.0 / 30f64.sqrt()).abs() < 1e-12);
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
        assert!(kendall(&[1.0], &[1.0]).is_nan());
    }
}
