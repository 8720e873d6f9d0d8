//! Pareto fronts of (score: higher is better, MFLOPs: lower is better).
//!
//! Invariant: [`front`] returns the indices of non-dominated points, sorted by MFLOPs ascending
//! (ties by score descending, then index), one per distinct (score, MFLOPs) pair.

/// Whether `a` dominates `b` (at least as good in both, better in one).
pub fn dominates(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 >= b.0 && a.1 <= b.1 && (a.0 > b.0 || a.1 < b.1)
}

/// Indices of the non-dominated points among `(score, mflops)`.
pub fn front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len()).collect();
    idx.sort_by(|&i, &j| {
        points[i]
            .1
            .total_cmp(&points[j].1)
            .then(points[j].0.total_cmp(&points[i].0))
            .then(i.cmp(&j))
    });
    let mut out = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for i in idx {
        // Sorted by flops ascending: a point is on the front iff it beats every cheaper score.
        if points[i].0 > best {
            best = points[i].0;
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_keeps_the_trade_off() {
        let p = [
            (90.0, 100.0),
            (91.0, 200.0),
            (89.0, 150.0),
            (91.0, 250.0),
            (85.0, 10.0),
        ];
        assert_eq!(front(&p), vec![4, 0, 1]);
        assert!(dominates(p[0], p[2]));
        assert!(!dominates(p[0], p[1]));
    }
}
