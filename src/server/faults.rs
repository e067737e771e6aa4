//! Injected faults, off by default. Every decision is a pure function of
//! (seed, request key, attempt number of that key, fault kind), so a run is
//! reproducible and a retry of the same request meets a fresh decision.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use super::config::FAULT_ATTEMPT_KEYS_MAX;

#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    pub seed: u64,
    pub latency_ms: u64,
    pub rate_per_conn_bytes_per_s: Option<u64>,
    pub fail_rate: f64,
    pub throttle_rate: f64,
    pub retry_after_s: Option<u64>,
    pub reset_rate: f64,
    pub stall_rate: f64,
    pub corrupt_rate: f64,
    pub short_body_rate: f64,
}

/// What happens to a request before its head is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadFault {
    None,
    /// 503 `service_unavailable` with `Retry-After: 1`.
    Fail,
    /// 429 `too_many_requests`.
    Throttle,
}

/// What happens to a body, at a byte offset within the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    None,
    /// Close the connection after this many body bytes.
    Reset {
        at_bytes: u64,
    },
    /// Stop sending after this many body bytes, keep the socket open.
    Stall {
        at_bytes: u64,
    },
    /// Flip the byte at this offset of the body.
    Corrupt {
        at_bytes: u64,
    },
    /// End the body cleanly after this many bytes although Content-Length promised more.
    Short {
        at_bytes: u64,
    },
}

impl BodyFault {
    pub fn label(&self) -> Option<&'static str> {
        match self {
            BodyFault::None => None,
            BodyFault::Reset { .. } => Some("reset"),
            BodyFault::Stall { .. } => Some("stall"),
            BodyFault::Corrupt { .. } => Some("corrupt"),
            BodyFault::Short { .. } => Some("short_body"),
        }
    }
}

pub struct Faults {
    pub config: FaultConfig,
    attempts: Mutex<HashMap<String, u64>>,
}

/// One request's view of the fault dice.
pub struct Dice<'a> {
    seed: u64,
    key: &'a str,
    attempt: u64,
}

impl Dice<'_> {
    /// A uniform value in [0, 1) for one fault kind.
    fn uniform(&self, kind: &str) -> f64 {
        (self.value(kind) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn value(&self, kind: &str) -> u64 {
        let mut hasher = Sha1::new();
        hasher.update(self.seed.to_be_bytes());
        hasher.update(self.key.as_bytes());
        hasher.update([0u8]);
        hasher.update(self.attempt.to_be_bytes());
        hasher.update(kind.as_bytes());
        let digest = hasher.finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    fn hits(&self, kind: &str, rate: f64) -> bool {
        rate > 0.0 && self.uniform(kind) < rate
    }

    /// Offset in `0..len` (len > 0) where a body fault strikes.
    fn offset(&self, kind: &str, len: u64) -> u64 {
        self.value(&format!("{kind}-offset")) % len
    }

    /// Offset in `1..len` for faults that cut the body: at least one body
    /// byte goes out, so the client sees a response that broke mid-body.
    fn cut_offset(&self, kind: &str, len: u64) -> u64 {
        if len < 2 {
            0
        } else {
            1 + self.value(&format!("{kind}-offset")) % (len - 1)
        }
    }
}

impl Faults {
    pub fn new(config: FaultConfig) -> Faults {
        Faults {
            config,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    fn any_dice_fault(&self) -> bool {
        let c = &self.config;
        c.fail_rate > 0.0
            || c.throttle_rate > 0.0
            || c.reset_rate > 0.0
            || c.stall_rate > 0.0
            || c.corrupt_rate > 0.0
            || c.short_body_rate > 0.0
    }

    /// Rolls the dice for one request, identified by `key` (method, path,
    /// range, and for API calls the request body). Bumps the attempt counter.
    pub fn roll<'a>(&self, key: &'a str) -> Option<Dice<'a>> {
        if !self.any_dice_fault() {
            return None;
        }
        let mut attempts = self.attempts.lock().expect("fault attempts lock");
        if attempts.len() >= FAULT_ATTEMPT_KEYS_MAX {
            attempts.clear();
        }
        let counter = attempts.entry(key.to_string()).or_insert(0);
        let attempt = *counter;
        *counter += 1;
        Some(Dice {
            seed: self.config.seed,
            key,
            attempt,
        })
    }

    pub fn head_fault(&self, dice: Option<&Dice<'_>>) -> HeadFault {
        let Some(dice) = dice else {
            return HeadFault::None;
        };
        if dice.hits("fail", self.config.fail_rate) {
            HeadFault::Fail
        } else if dice.hits("throttle", self.config.throttle_rate) {
            HeadFault::Throttle
        } else {
            HeadFault::None
        }
    }

    /// At most one body fault per response; none for empty bodies.
    pub fn body_fault(&self, dice: Option<&Dice<'_>>, body_bytes: u64) -> BodyFault {
        let Some(dice) = dice else {
            return BodyFault::None;
        };
        if body_bytes == 0 {
            return BodyFault::None;
        }
        let c = &self.config;
        if dice.hits("reset", c.reset_rate) {
            BodyFault::Reset {
                at_bytes: dice.cut_offset("reset", body_bytes),
            }
        } else if dice.hits("stall", c.stall_rate) {
            BodyFault::Stall {
                at_bytes: dice.cut_offset("stall", body_bytes),
            }
        } else if dice.hits("corrupt", c.corrupt_rate) {
            BodyFault::Corrupt {
                at_bytes: dice.offset("corrupt", body_bytes),
            }
        } else if dice.hits("short", c.short_body_rate) {
            BodyFault::Short {
                at_bytes: dice.cut_offset("short", body_bytes),
            }
        } else {
            BodyFault::None
        }
    }
}

/// Token bucket of one connection: `rate` bytes/s, burst of a tenth of a
/// second (at least 16 KiB). Debit first, then wait off the debt, so the
/// average rate holds without splitting every write.
pub struct TokenBucket {
    rate_bytes_per_s: u64,
    burst_bytes: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    pub fn new(rate_bytes_per_s: u64) -> TokenBucket {
        let burst_bytes = (rate_bytes_per_s as f64 / 10.0).max(16.0 * 1024.0);
        TokenBucket {
            rate_bytes_per_s,
            burst_bytes,
            tokens: burst_bytes,
            refilled_at: Instant::now(),
        }
    }

    /// Piece size that keeps pacing smooth at this rate.
    pub fn piece_bytes(&self) -> usize {
        self.burst_bytes as usize
    }

    /// Takes `bytes` tokens and returns how long to wait before sending more.
    pub fn debit(&mut self, bytes: usize) -> Duration {
        let now = Instant::now();
        let elapsed_s = now.duration_since(self.refilled_at).as_secs_f64();
        self.refilled_at = now;
        self.tokens =
            (self.tokens + elapsed_s * self.rate_bytes_per_s as f64).min(self.burst_bytes);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate_bytes_per_s as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_deterministic_and_change_per_attempt() {
        let config = FaultConfig {
            seed: 7,
            fail_rate: 0.5,
            ..FaultConfig::default()
        };
        let run = || {
            let faults = Faults::new(config.clone());
            (0..64)
                .map(|_| faults.head_fault(faults.roll("GET /file/b/x").as_ref()))
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        assert!(first.contains(&HeadFault::Fail));
        assert!(first.contains(&HeadFault::None));
    }

    #[test]
    fn no_faults_no_dice() {
        let faults = Faults::new(FaultConfig::default());
        assert!(faults.roll("k").is_none());
    }

    #[test]
    fn token_bucket_waits_off_debt() {
        let mut bucket = TokenBucket::new(1_000_000);
        assert_eq!(bucket.debit(100_000), Duration::ZERO);
        let wait = bucket.debit(500_000);
        assert!(
            wait >= Duration::from_millis(450) && wait <= Duration::from_millis(510),
            "{wait:?}"
        );
    }
}
