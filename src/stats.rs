//! Rank correlations and error summaries used to evaluate predictors and searches.
//!
//! Invariants: Spearman is the Pearson correlation of average ranks (ties share their mean rank);
//! Kendall is tau-b (tie-corrected), computed in O(n log n) by Knight's method; every function
//! returns `NaN` for fewer than 2 points or a constant input, never panics on finite data.

/// Arithmetic mean (NaN for an empty slice).
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Population standard deviation.
pub fn std(xs: &[f64]) -> f64 {
    let m = mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64).sqrt()
}

/// The element-wise mean of two equally long series (e.g. two models' predictions).
pub fn midpoints(a: &[f64], b: &[f64]) -> Vec<f64> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x + y) / 2.0).collect()
}

/// Mean absolute error.
pub fn mae(pred: &[f64], truth: &[f64]) -> f64 {
    assert_eq!(pred.len(), truth.len());
    pred.iter()
        .zip(truth)
        .map(|(p, t)| (p - t).abs())
        .sum::<f64>()
        / pred.len() as f64
}

/// Average ranks (1-based), ties sharing the mean of their positions.
pub fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
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
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    if a.len() < 2 {
        return f64::NAN;
    }
    let (ma, mb) = (mean(a), mean(b));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

/// Spearman rank correlation.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Kendall's tau-b.
pub fn kendall(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len();
    if n < 2 {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&i, &j| a[i].total_cmp(&a[j]).then(b[i].total_cmp(&b[j])));
    // Pairs tied in a, and tied in both.
    let pairs =
        |counts: &mut dyn Iterator<Item = u64>| counts.map(|t| t * (t - 1) / 2).sum::<u64>();
    let (mut n1, mut n3) = (0u64, 0u64);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && a[idx[j + 1]] == a[idx[i]] {
            j += 1;
        }
        n1 += pairs(&mut std::iter::once((j - i + 1) as u64));
        let mut k = i;
        while k <= j {
            let mut l = k;
            while l < j && b[idx[l + 1]] == b[idx[k]] {
                l += 1;
            }
            n3 += pairs(&mut std::iter::once((l - k + 1) as u64));
            k = l + 1;
        }
        i = j + 1;
    }
    // Discordant pairs = inversions of b in this order (merge sort).
    let mut seq: Vec<f64> = idx.iter().map(|&i| b[i]).collect();
    let mut buf = seq.clone();
    let swaps = merge_count(&mut seq, &mut buf);
    // Pairs tied in b.
    let mut n2 = 0u64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && seq[j + 1] == seq[i] {
            j += 1;
        }
        n2 += ((j - i + 1) as u64) * ((j - i) as u64) / 2;
        i = j + 1;
    }
    let n0 = (n as u64) * (n as u64 - 1) / 2;
    let concordant_minus_discordant =
        n0 as f64 - n1 as f64 - n2 as f64 + n3 as f64 - 2.0 * swaps as f64;
    concordant_minus_discordant / (((n0 - n1) as f64) * ((n0 - n2) as f64)).sqrt()
}

/// Sort `v` ascending, returning the number of strict inversions.
fn merge_count(v: &mut [f64], buf: &mut [f64]) -> u64 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let (mut s, (l, r)) = (0u64, v.split_at_mut(mid));
    {
        let (bl, br) = buf.split_at_mut(mid);
        s += merge_count(l, bl);
        s += merge_count(r, br);
    }
    let (mut i, mut j, mut k) = (0, 0, 0);
    while i < l.len() && j < r.len() {
        if r[j] < l[i] {
            buf[k] = r[j];
            s += (l.len() - i) as u64;
            j += 1;
        } else {
            buf[k] = l[i];
            i += 1;
        }
        k += 1;
    }
    while i < l.len() {
        buf[k] = l[i];
        i += 1;
        k += 1;
    }
    while j < r.len() {
        buf[k] = r[j];
        j += 1;
        k += 1;
    }
    v.copy_from_slice(&buf[..n]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kendall_naive(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len();
        let (mut c, mut d, mut ta, mut tb) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for i in 0..n {
            for j in i + 1..n {
                let x = (a[i] - a[j]).signum() * if a[i] == a[j] { 0.0 } else { 1.0 };
                let y = (b[i] - b[j]).signum() * if b[i] == b[j] { 0.0 } else { 1.0 };
                if x == 0.0 && y == 0.0 {
                } else if x == 0.0 {
                    ta += 1.0;
                } else if y == 0.0 {
                    tb += 1.0;
                } else if x == y {
                    c += 1.0;
                } else {
                    d += 1.0;
                }
            }
        }
        (c - d) / ((c + d + ta) * (c + d + tb)).sqrt()
    }

    #[test]
    fn kendall_matches_the_quadratic_definition_with_ties() {
        let mut r = crate::rng::Rng::new(5);
        for n in [2usize, 3, 10, 57] {
            let a: Vec<f64> = (0..n).map(|_| r.below(6) as f64).collect();
            let b: Vec<f64> = (0..n).map(|_| r.below(4) as f64).collect();
            let (fast, slow) = (kendall(&a, &b), kendall_naive(&a, &b));
            assert!(
                (fast - slow).abs() < 1e-12 || (fast.is_nan() && slow.is_nan()),
                "{fast} {slow}"
            );
        }
    }

    #[test]
    fn known_values() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [5.0, 6.0, 7.0, 8.0, 7.0];
        assert!((spearman(&a, &b) - 0.8207826816681233).abs() < 1e-12);
        assert!((kendall(&a, &b) - 0.7378647873726218).abs() < 1e-12);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
        assert!((mae(&[1.0, 2.0], &[2.0, 4.0]) - 1.5).abs() < 1e-12);
        assert!((std(&[1.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }
}
