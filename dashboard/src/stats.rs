//! Aggregation over scraped history: counter increases that survive a
//! counter reset (a proxy restart), rates, and latency quantiles from
//! histogram bucket increases, computed as Prometheus's `increase` and
//! `histogram_quantile` do. Pure functions; no I/O.

/// How much a counter grew over `values` (oldest first). A value below its
/// predecessor means the counter restarted from zero, so the new value is
/// all growth since the reset.
pub fn increase(values: &[f64]) -> f64 {
    values
        .windows(2)
        .map(|pair| {
            let (previous, current) = (pair[0], pair[1]);
            if current >= previous {
                current - previous
            } else {
                current
            }
        })
        .sum()
}

/// The `q` quantile (0..=1) of observations counted in cumulative
/// `buckets` of `(upper bound, count)`, sorted by bound with `+Inf` last.
/// Linear interpolation inside the bucket that holds the rank; `None` when
/// nothing was observed.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(bound, count) in buckets {
        if count >= rank && count > lower_count {
            if bound.is_infinite() {
                // Past the largest finite bound: all we know is "above it".
                return Some(lower_bound);
            }
            let share = (rank - lower_count) / (count - lower_count);
            return Some(lower_bound + (bound - lower_bound) * share);
        }
        lower_bound = if bound.is_finite() {
            bound
        } else {
            lower_bound
        };
        lower_count = count;
    }
    Some(lower_bound)
}

/// Events per second, from an increase over `seconds`.
pub fn rate(increase: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        increase / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increase_sums_growth() {
        assert_eq!(increase(&[10.0, 15.0, 15.0, 40.0]), 30.0);
        assert_eq!(increase(&[5.0]), 0.0);
        assert_eq!(increase(&[]), 0.0);
    }

    #[test]
    fn increase_survives_a_counter_reset() {
        // 100 -> 120 (+20), proxy restarts, 8 (+8), 30 (+22): 50 in all.
        assert_eq!(increase(&[100.0, 120.0, 8.0, 30.0]), 50.0);
        // A restart to exactly zero and no traffic after.
        assert_eq!(increase(&[100.0, 0.0, 0.0]), 0.0);
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        // 100 observations: 50 below 1 ms, 40 in (1, 2] ms, 10 in (2, 4] ms.
        let buckets = [
            (0.001, 50.0),
            (0.002, 90.0),
            (0.004, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // p50: rank 50, the end of the first bucket: 1 ms.
        assert!((quantile(0.5, &buckets).unwrap() - 0.001).abs() < 1e-12);
        // p75: rank 75, 25 of the 40 in (1, 2]: 1 + 25/40 ms = 1.625 ms.
        assert!((quantile(0.75, &buckets).unwrap() - 0.001625).abs() < 1e-12);
        // p95: rank 95, 5 of the 10 in (2, 4]: 3 ms.
        assert!((quantile(0.95, &buckets).unwrap() - 0.003).abs() < 1e-12);
        // p25: rank 25, half the first bucket from 0: 0.5 ms.
        assert!((quantile(0.25, &buckets).unwrap() - 0.0005).abs() < 1e-12);
    }

    #[test]
    fn quantiles_in_the_overflow_bucket_report_the_largest_bound() {
        let buckets = [(0.001, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.99, &buckets), Some(0.001));
    }

    #[test]
    fn nothing_observed_has_no_quantile() {
        assert_eq!(quantile(0.5, &[(0.001, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn quantile_of_bucket_increases_after_a_reset() {
        // Bucket counts scraped at three times; the proxy restarts between
        // the second and third. Increases per bucket: le=1ms: 10 + 4 = 14,
        // +Inf: 20 + 6 = 26 (12 above 1 ms).
        let le_1ms = increase(&[0.0, 10.0, 4.0]);
        let le_inf = increase(&[0.0, 20.0, 6.0]);
        assert_eq!((le_1ms, le_inf), (14.0, 26.0));
        // p50: rank 13 of 26 falls in the first bucket: 13/14 of 1 ms.
        let p50 = quantile(0.5, &[(0.001, le_1ms), (f64::INFINITY, le_inf)]).unwrap();
        assert!((p50 - 0.001 * 13.0 / 14.0).abs() < 1e-12, "{p50}");
    }

    #[test]
    fn rates() {
        assert_eq!(rate(120.0, 60.0), 2.0);
        assert_eq!(rate(5.0, 0.0), 0.0);
    }
}
