//! Percentiles and number formatting.

/// Nearest-rank percentile (`p` in 0..=100) of `v`; `NaN` if empty.
pub fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// p50 / p99 / max of a sample, as a JSON object.
pub fn summary(v: &[f64]) -> serde_json::Value {
    serde_json::json!({
        "n": v.len(),
        "p50": round1(pct(v, 50.0)),
        "p99": round1(pct(v, 99.0)),
        "max": round1(max(v)),
        "mean": round1(mean(v)),
    })
}

pub fn round1(x: f64) -> Option<f64> {
    x.is_finite().then(|| (x * 10.0).round() / 10.0)
}

/// A duration in microseconds, shown in µs below 10 ms and in ms above.
pub fn us(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x < 10_000.0 {
        format!("{x:.0} µs")
    } else {
        format!("{:.1} ms", x / 1000.0)
    }
}

/// `p50 / p99 / max` of a sample in microseconds.
pub fn trio(v: &[f64]) -> String {
    format!(
        "{} / {} / {}",
        us(pct(v, 50.0)),
        us(pct(v, 99.0)),
        us(max(v))
    )
}

pub fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.0} MiB", n as f64 / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.0} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

pub fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

pub fn yes(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}
