//! The retry budget: how many retries a service's requests may spend.
//!
//! Retries may add `ratio` of the request rate, plus `min_per_second`
//! (so a quiet service can still retry), over a sliding window of `ttl`
//! (Linkerd's model; its defaults are 20%, 10/s, 10 s). The window is ten
//! slots, each counting the requests and retries of a tenth of `ttl`.

use std::{sync::Mutex, time::Duration};
use tokio::time::Instant;

const SLOTS: usize = 10;

/// Budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub ratio: f64,
    pub min_per_second: f64,
    pub ttl: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10.0,
            ttl: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Which tenth of the timeline this slot counts; stale slots are reset.
    index: u64,
    requests: u64,
    retries: u64,
}

/// One service's budget, shared by all its requests.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    epoch: Instant,
    slot_width: Duration,
    slots: Mutex<[Slot; SLOTS]>,
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            epoch: Instant::now(),
            slot_width: (config.ttl / SLOTS as u32).max(Duration::from_millis(1)),
            slots: Mutex::new([Slot::default(); SLOTS]),
        }
    }

    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    fn index(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.slot_width.as_nanos()) as u64
    }

    /// Counts one original request (not a retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    fn deposit_at(&self, now: Instant) {
        let index = self.index(now);
        let mut slots = self.slots.lock().expect("budget lock is never poisoned");
        current(&mut slots, index).requests += 1;
    }

    fn withdraw_at(&self, now: Instant) -> bool {
        let index = self.index(now);
        let mut slots = self.slots.lock().expect("budget lock is never poisoned");
        let window = index.saturating_sub(SLOTS as u64 - 1)..=index;
        let (requests, retries) = slots
            .iter()
            .filter(|slot| window.contains(&slot.index))
            .fold((0, 0), |(q, r), slot| (q + slot.requests, r + slot.retries));
        let allowed = self.config.min_per_second * self.config.ttl.as_secs_f64()
            + self.config.ratio * requests as f64;
        if (retries as f64) < allowed {
            current(&mut slots, index).retries += 1;
            true
        } else {
            false
        }
    }
}

/// The slot for `index`, reset if it last counted an older tenth.
fn current(slots: &mut [Slot; SLOTS], index: u64) -> &mut Slot {
    let slot = &mut slots[(index % SLOTS as u64) as usize];
    if slot.index != index {
        *slot = Slot {
            index,
            ..Slot::default()
        };
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: f64) -> RetryBudget {
        RetryBudget::new(BudgetConfig {
            ratio,
            min_per_second,
            ttl: Duration::from_secs(10),
        })
    }

    #[test]
    fn a_quiet_service_gets_the_minimum_reserve() {
        let budget = budget(0.2, 1.0);
        let now = budget.epoch;
        let granted = (0..50).filter(|_| budget.withdraw_at(now)).count();
        assert_eq!(granted, 10, "1/s over 10 s");
    }

    #[test]
    fn retries_may_add_the_ratio_of_requests() {
        let budget = budget(0.2, 0.0);
        let now = budget.epoch;
        for _ in 0..1000 {
            budget.deposit_at(now);
        }
        let granted = (0..1000).filter(|_| budget.withdraw_at(now)).count();
        assert_eq!(granted, 200);
    }

    #[test]
    fn spent_retries_come_back_after_the_window() {
        let budget = budget(0.0, 1.0);
        let start = budget.epoch;
        assert_eq!((0..20).filter(|_| budget.withdraw_at(start)).count(), 10);
        // Nine tenths later the retries still count...
        assert!(!budget.withdraw_at(start + Duration::from_secs(9)));
        // ...a full window later they do not.
        let later = start + Duration::from_secs(10);
        assert_eq!((0..20).filter(|_| budget.withdraw_at(later)).count(), 10);
    }

    #[test]
    fn old_requests_stop_earning_retries() {
        let budget = budget(0.5, 0.0);
        let start = budget.epoch;
        for _ in 0..100 {
            budget.deposit_at(start);
        }
        assert!(budget.withdraw_at(start + Duration::from_secs(5)));
        assert!(!budget.withdraw_at(start + Duration::from_secs(11)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_with_the_clock() {
        let budget = budget(0.0, 0.5);
        // 0.5/s over 10 s: five retries, then none until they age out.
        assert_eq!((0..10).filter(|_| budget.withdraw()).count(), 5);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((0..10).filter(|_| budget.withdraw()).count(), 5);
    }
}
