//! When and how long to wait before calling the endpoint again, following
//! justbuild's rules (the one policy of the CAS client and the executor),
//! and a small random source for the jitter and for upload ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Code;

use crate::config::RetryConfig;

/// Status codes worth another attempt: the endpoint is (maybe briefly)
/// unreachable, overloaded or too slow. Everything else is an answer.
pub(crate) fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
    )
}

/// The base wait after failed attempt number `attempt` (1-based): the
/// initial backoff, doubled for every further attempt, at most the maximum.
pub(crate) fn backoff(config: &RetryConfig, attempt: u32) -> Duration {
    let mut wait = config.initial_backoff;
    for _ in 1..attempt {
        wait = wait.saturating_mul(2);
        if wait >= config.max_backoff {
            return config.max_backoff;
        }
    }
    wait
}

/// Adds up to three times the base wait at random (`unit` in [0, 1)), as
/// justbuild does, so that many clients do not retry in lock-step.
pub(crate) fn with_jitter(base: Duration, unit: f64) -> Duration {
    base + base.mul_f64(3.0 * unit.clamp(0.0, 1.0))
}

/// The wait before the attempt after failed attempt `attempt`: the
/// backoff with its jitter.
pub(crate) fn wait(config: &RetryConfig, attempt: u32, random: &Random) -> Duration {
    with_jitter(backoff(config, attempt), random.unit())
}

/// A xorshift64* generator, seeded per client from the clock, the process id
/// and a process-wide counter. Not for secrets; good for jitter and ids.
pub(crate) struct Random(Mutex<u64>);

static SEED_COUNTER: AtomicU64 = AtomicU64::new(0);

/// SplitMix64's finaliser: spreads the seed's few changing bits over the word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Random {
    pub(crate) fn new() -> Random {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let count = SEED_COUNTER.fetch_add(1, Ordering::Relaxed);
        let local = 0u8;
        let place = &local as *const u8 as u64;
        let seed = mix(nanos ^ (u64::from(std::process::id()) << 32))
            ^ mix(count.wrapping_add(0x9e37_79b9_7f4a_7c15))
            ^ mix(place);
        Random(Mutex::new(if seed == 0 {
            0x2545_f491_4f6c_dd1d
        } else {
            seed
        }))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut x = *state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in [0, 1).
    pub(crate) fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A random (version 4) UUID in its usual text form.
    pub(crate) fn uuid(&self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex = hex::encode(bytes);
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(initial_ms: u64, max_ms: u64) -> RetryConfig {
        RetryConfig {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let c = config(100, 1000);
        let waits: Vec<u64> = (1..=6).map(|a| backoff(&c, a).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        // A huge attempt number neither overflows nor exceeds the maximum.
        assert_eq!(backoff(&c, u32::MAX), Duration::from_millis(1000));
        assert_eq!(backoff(&config(0, 10), 5), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_within_three_times_the_base() {
        let r = Random::new();
        let base = Duration::from_millis(100);
        for _ in 0..1000 {
            let w = with_jitter(base, r.unit());
            assert!(w >= base && w <= base * 4, "{w:?}");
        }
        assert_eq!(with_jitter(base, 0.0), base);
    }

    #[test]
    fn only_transient_codes_are_retried() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
        ] {
            assert!(is_retryable(code), "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Internal,
            Code::Unimplemented,
        ] {
            assert!(!is_retryable(code), "{code:?}");
        }
    }

    #[test]
    fn uuids_are_well_formed_and_distinct() {
        let a = Random::new();
        let b = Random::new();
        let ids: Vec<String> = (0..100).map(|_| a.uuid()).chain([b.uuid()]).collect();
        for id in &ids {
            assert_eq!(id.len(), 36);
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(parts[2].starts_with('4'));
            assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"));
        }
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }
}
