//! Peak-EWMA latency estimate, as Linkerd and tower's `PeakEwma` keep it:
//! a slower sample than the estimate replaces it at once (the peak); faster
//! samples pull it down gradually; with no samples it decays towards zero,
//! so an endpoint that was slow is probed again in time.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    rtt_ns: f64,
    updated: Instant,
}

impl PeakEwma {
    /// Starts at `default_rtt`, the estimate for an endpoint never measured.
    pub fn new(default_rtt: Duration, now: Instant) -> Self {
        Self {
            rtt_ns: default_rtt.as_nanos() as f64,
            updated: now,
        }
    }

    /// The estimate at `now`, in nanoseconds.
    pub fn estimate(&self, now: Instant, decay: Duration) -> f64 {
        self.rtt_ns * self.weight(now, decay)
    }

    /// Folds in one round-trip sample.
    pub fn observe(&mut self, rtt: Duration, now: Instant, decay: Duration) {
        let sample = rtt.as_nanos() as f64;
        let weight = self.weight(now, decay);
        self.rtt_ns = if sample > self.rtt_ns {
            sample
        } else {
            self.rtt_ns * weight + sample * (1.0 - weight)
        };
        self.updated = now;
    }

    /// How much of the old estimate survives after the time since the last
    /// update: `exp(-elapsed / decay)`.
    fn weight(&self, now: Instant, decay: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
        (-elapsed / decay.as_nanos() as f64).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(Duration::from_millis(1), t0);
        ewma.observe(Duration::from_millis(50), t0, DECAY);
        assert_eq!(ewma.estimate(t0, DECAY), 50_000_000.0);
    }

    #[test]
    fn faster_samples_pull_the_estimate_down_gradually() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(Duration::from_millis(50), t0);
        let t1 = t0 + Duration::from_secs(1);
        ewma.observe(Duration::from_millis(1), t1, DECAY);
        let estimate = ewma.estimate(t1, DECAY);
        // exp(-0.1) of 50 ms plus the rest of 1 ms: about 45.3 ms.
        assert!((estimate - 45_336_000.0).abs() < 100_000.0, "{estimate}");
    }

    #[test]
    fn the_estimate_decays_with_no_samples() {
        let t0 = Instant::now();
        let ewma = PeakEwma::new(Duration::from_millis(100), t0);
        let later = ewma.estimate(t0 + DECAY, DECAY);
        assert!(
            (later - 100_000_000.0 / std::f64::consts::E).abs() < 1.0,
            "{later}"
        );
        assert!(ewma.estimate(t0 + DECAY * 10, DECAY) < 10_000.0);
    }
}
