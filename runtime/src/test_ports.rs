//! Loopback ports a test hands to a process it starts, which binds them
//! itself.
//!
//! A port bound to `:0` and released is not reserved: the kernel hands the
//! same ephemeral range to every `connect` and every `bind(0)` on the
//! machine, so a test running alongside can take it before the child binds
//! it ("Address already in use"). The ports given here come from just below
//! the ephemeral range, which the kernel never picks by itself, and one
//! counter per test process hands each out once; each is checked free when
//! given. What remains is a clash with another process choosing fixed ports
//! in the same stretch, which the process-id-seeded start makes unlikely.

use std::{
    net::TcpListener,
    sync::atomic::{AtomicU32, Ordering},
};

/// How many ports below the ephemeral range are handed out.
const STRETCH: u32 = 12_000;

/// The lowest port handed out, whatever the ephemeral range.
const LOWEST: u32 = 10_000;

/// The next offset into the stretch; starts at a process-dependent point.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A loopback port nothing listens on, given to no other caller in this
/// process.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `count` consecutive loopback ports nothing listens on, none
/// given to another caller in this process.
pub fn free_ports(count: u16) -> u16 {
    let (low, len) = stretch();
    let count = u32::from(count.max(1));
    assert!(count < len, "{count} ports asked for at once");
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % len,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..len / count {
        let offset = NEXT.fetch_add(count, Ordering::Relaxed) % len;
        if offset + count > len {
            continue;
        }
        let first = low + offset;
        let all_free = (first..first + count)
            .all(|port| TcpListener::bind(("127.0.0.1", port as u16)).is_ok());
        if all_free {
            return first as u16;
        }
    }
    panic!("no {count} consecutive free ports in {low}..{}", low + len);
}

/// The ports handed out: `(lowest, how many)`, just below the kernel's
/// ephemeral range.
fn stretch() -> (u32, u32) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let low = ephemeral_low.saturating_sub(STRETCH).max(LOWEST);
    assert!(
        ephemeral_low > low + 100,
        "the ephemeral port range starts at {ephemeral_low}: no room below it for tests' ports"
    );
    (low, ephemeral_low - low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_below_the_ephemeral_range_given_once_and_skipped_when_taken() {
        let (low, len) = stretch();
        let mut given = std::collections::HashSet::new();
        let mut taken = Vec::new();
        for _ in 0..200 {
            let first = free_ports(3);
            for port in first..first + 3 {
                assert!((low..low + len).contains(&u32::from(port)), "{port}");
                assert!(given.insert(port), "{port} given twice");
            }
            // Taken now, as a child would: the next ones still come free.
            taken.push(TcpListener::bind(("127.0.0.1", first)).unwrap());
        }

        // One test only: a second one alongside would take ports from the
        // same counter. A port someone listens on is skipped.
        let mut first = free_port();
        while u32::from(first) + 2 >= low + len {
            first = free_port(); // the counter wraps there
        }
        let _held = TcpListener::bind(("127.0.0.1", first + 1)).unwrap();
        assert_eq!(free_port(), first + 2);
    }
}
