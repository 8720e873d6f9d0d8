//! Numbers as messages show them: a value a user gave, however large or small, in a few
//! characters (`1e-300`, not three hundred digits), ordinary ones as Rust writes them. Both
//! forms read back to the same `f64`.

/// `v` for a message: Rust's shortest form for zero and magnitudes in [1e-5, 1e16), scientific
/// notation otherwise (NaN and infinities as Rust writes them).
pub fn num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || (1e-5..1e16).contains(&v.abs()) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

#[cfg(test)]
mod tests {
    use super::num;

    #[test]
    fn extremes_are_short_and_everything_reads_back() {
        for (v, shown) in [
            (0.5, "0.5"),
            (94.86, "94.86"),
            (0.0, "0"),
            (-3.0, "-3"),
            (1e-300, "1e-300"),
            (1e308, "1e308"),
            (-2.5e20, "-2.5e20"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(num(v), shown);
            if v.is_finite() {
                assert_eq!(num(v).parse::<f64>().unwrap(), v);
            }
        }
        assert!(num(123456789.125).len() < 14);
    }
}
