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
    /// Close the connection part-way through a response head.
    pub reset_head_rate: f64,
    /// Close a new TLS connection part-way through the server's handshake.
    pub reset_handshake_rate: f64,
    /// On a connection that already served a request, close it instead of
    /// answering (as a server that closed an idle keep-alive connection).
    pub close_keepalive_rate: f64,
    /// Extra error statuses, each with its own probability and Retry-After.
    pub status_faults: Vec<StatusFault>,
    /// 206 whose Content-Range is not the requested range.
    pub wrong_range_rate: f64,
    /// 200 with the whole object where a range was requested.
    pub ignore_range_rate: f64,
    /// A 206 whose Content-Length (and body) is shorter than its Content-Range.
    pub long_body_rate: f64,
    /// The same for a 200: a Content-Length (and body) shorter than the object.
    pub short_object_rate: f64,
    /// Objects whose published SHA1 (listing, info, headers) is wrong.
    pub wrong_sha1_names: Vec<String>,
}

/// `--status-rate CODE:P[:RETRY_AFTER_S]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatusFault {
    pub status: u16,
    pub rate: f64,
    pub retry_after_s: Option<u64>,
}

impl StatusFault {
    /// Parses `CODE:P` or `CODE:P:RETRY_AFTER_S` (CODE 400–599, 0 ≤ P ≤ 1).
    pub fn parse(text: &str) -> Result<StatusFault, String> {
        let mut parts = text.split(':');
        let (Some(code), Some(rate)) = (parts.next(), parts.next()) else {
            return Err(format!("{text:?}: expected CODE:P or CODE:P:RETRY_AFTER_S"));
        };
        let status: u16 = code
            .trim()
            .parse()
            .ok()
            .filter(|code| (400..=599).contains(code))
            .ok_or_else(|| format!("{text:?}: the status is a number from 400 to 599"))?;
        let rate: f64 = rate
            .trim()
            .parse()
            .ok()
            .filter(|rate| (0.0..=1.0).contains(rate))
            .ok_or_else(|| format!("{text:?}: the probability is between 0 and 1"))?;
        let retry_after_s = match parts.next() {
            None => None,
            Some(seconds) => Some(
                seconds
                    .trim()
                    .parse()
                    .map_err(|_| format!("{text:?}: Retry-After is whole seconds"))?,
            ),
        };
        if parts.next().is_some() {
            return Err(format!("{text:?}: too many fields"));
        }
        Ok(StatusFault {
            status,
            rate,
            retry_after_s,
        })
    }
}

/// What happens to a request before its head is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadFault {
    None,
    /// 503 `service_unavailable` with `Retry-After: 1`.
    Fail,
    /// 429 `too_many_requests`.
    Throttle,
    /// One of the `--status-rate` statuses.
    Status(StatusFault),
}

/// What happens to the framing of a download response (its head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFault {
    None,
    /// Content-Range names another range than the one requested.
    WrongRange,
    /// 200 and the whole object, as if Range were not supported.
    IgnoreRange,
    /// Content-Length (and the body sent) this many bytes short of the range
    /// a 206 claims (`--long-body-rate`), or of the object a 200 is
    /// (`--short-object-rate`).
    LongBody {
        missing_bytes: u64,
    },
}

impl RangeFault {
    pub fn label(&self) -> Option<&'static str> {
        match self {
            RangeFault::None => None,
            RangeFault::WrongRange => Some("wrong_range"),
            RangeFault::IgnoreRange => Some("ignore_range"),
            RangeFault::LongBody { .. } => Some("long_body"),
        }
    }
}

/// What happens to the connection around one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnFault {
    None,
    /// Cut the connection after this many bytes of the response head.
    ResetHead {
        at_bytes: usize,
    },
    /// Close the (reused) connection without answering.
    CloseKeepAlive,
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
    /// Attempts per request, by `attempt_key`.
    attempts: Mutex<HashMap<AttemptKey, u64>>,
}

/// A request key as the attempt table stores it: 16 bytes of its SHA1, so an
/// entry costs the same whatever the request (API keys hold bodies of up to
/// 1 MiB, which the table kept, one per distinct request, until it was cleared).
type AttemptKey = [u8; 16];

fn attempt_key(key: &str) -> AttemptKey {
    Sha1::digest(key.as_bytes())[..16]
        .try_into()
        .expect("a SHA1 has 20 bytes")
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
            || c.reset_head_rate > 0.0
            || c.close_keepalive_rate > 0.0
            || c.status_faults.iter().any(|fault| fault.rate > 0.0)
            || c.wrong_range_rate > 0.0
            || c.ignore_range_rate > 0.0
            || c.long_body_rate > 0.0
            || c.short_object_rate > 0.0
    }

    pub fn wrong_sha1(&self, name: &str) -> bool {
        self.config.wrong_sha1_names.iter().any(|n| n == name)
    }

    /// Cut point of the server's handshake bytes on a new TLS connection, or
    /// `None`. Connections have no request key: the dice key is fixed and the
    /// attempt counter numbers the connections.
    pub fn handshake_cut(&self) -> Option<usize> {
        if self.config.reset_handshake_rate <= 0.0 {
            return None;
        }
        let dice = self.roll_key("tls-handshake");
        dice.hits("reset_handshake", self.config.reset_handshake_rate)
            // The ServerHello alone is ~90 bytes; the whole flight is > 1 KiB.
            .then(|| 1 + dice.offset("reset_handshake", 600) as usize)
    }

    /// Connection fault of one response; `reused` says whether the connection
    /// served a request before this one.
    pub fn conn_fault(&self, dice: Option<&Dice<'_>>, reused: bool) -> ConnFault {
        let Some(dice) = dice else {
            return ConnFault::None;
        };
        if reused && dice.hits("close_keepalive", self.config.close_keepalive_rate) {
            ConnFault::CloseKeepAlive
        } else if dice.hits("reset_head", self.config.reset_head_rate) {
            // Every head we send is longer than 100 bytes.
            ConnFault::ResetHead {
                at_bytes: 1 + dice.offset("reset_head", 99) as usize,
            }
        } else {
            ConnFault::None
        }
    }

    /// Framing fault of a response of `body_bytes` out of `size_bytes`;
    /// `is_range`: a 206 to a range request. A 200 meets only a short
    /// Content-Length, and only by `--short-object-rate`.
    pub fn range_fault(
        &self,
        dice: Option<&Dice<'_>>,
        is_range: bool,
        body_bytes: u64,
        size_bytes: u64,
    ) -> RangeFault {
        let Some(dice) = dice else {
            return RangeFault::None;
        };
        let c = &self.config;
        if is_range && size_bytes >= 2 && dice.hits("wrong_range", c.wrong_range_rate) {
            RangeFault::WrongRange
        } else if is_range && dice.hits("ignore_range", c.ignore_range_rate) {
            RangeFault::IgnoreRange
        } else if body_bytes >= 2
            && dice.hits(
                // One dice kind for both: `--long-body-rate P
                // --short-object-rate P` places the faults that
                // `--long-body-rate P` alone placed before they were split.
                "long_body",
                if is_range {
                    c.long_body_rate
                } else {
                    c.short_object_rate
                },
            )
        {
            RangeFault::LongBody {
                missing_bytes: 1 + dice.offset("long_body", body_bytes - 1),
            }
        } else {
            RangeFault::None
        }
    }

    /// Rolls the dice for one request, identified by `key` (method, path,
    /// range, and for API calls the request body). Bumps the attempt counter.
    pub fn roll<'a>(&self, key: &'a str) -> Option<Dice<'a>> {
        if !self.any_dice_fault() {
            return None;
        }
        Some(self.roll_key(key))
    }

    fn roll_key<'a>(&self, key: &'a str) -> Dice<'a> {
        let mut attempts = self.attempts.lock().expect("fault attempts lock");
        if attempts.len() >= FAULT_ATTEMPT_KEYS_MAX {
            attempts.clear();
        }
        let counter = attempts.entry(attempt_key(key)).or_insert(0);
        let attempt = *counter;
        *counter += 1;
        Dice {
            seed: self.config.seed,
            key,
            attempt,
        }
    }

    pub fn head_fault(&self, dice: Option<&Dice<'_>>) -> HeadFault {
        let Some(dice) = dice else {
            return HeadFault::None;
        };
        if dice.hits("fail", self.config.fail_rate) {
            HeadFault::Fail
        } else if dice.hits("throttle", self.config.throttle_rate) {
            HeadFault::Throttle
        } else if let Some(fault) = self
            .config
            .status_faults
            .iter()
            .find(|fault| dice.hits(&format!("status-{}", fault.status), fault.rate))
        {
            HeadFault::Status(*fault)
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
    fn status_fault_flags_parse() {
        assert_eq!(
            StatusFault::parse("500:0.25").unwrap(),
            StatusFault {
                status: 500,
                rate: 0.25,
                retry_after_s: None
            }
        );
        assert_eq!(
            StatusFault::parse("503:1:2").unwrap().retry_after_s,
            Some(2)
        );
        for bad in [
            "500",
            "200:0.1",
            "500:1.5",
            "500:0.1:x",
            "500:0.1:1:2",
            "abc:0.1",
        ] {
            assert!(StatusFault::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_faults_and_conn_faults_follow_their_rates() {
        let faults = Faults::new(FaultConfig {
            seed: 1,
            status_faults: vec![StatusFault {
                status: 408,
                rate: 1.0,
                retry_after_s: None,
            }],
            close_keepalive_rate: 1.0,
            ..FaultConfig::default()
        });
        let dice = faults.roll("k");
        assert!(matches!(
            faults.head_fault(dice.as_ref()),
            HeadFault::Status(StatusFault { status: 408, .. })
        ));
        assert_eq!(faults.conn_fault(dice.as_ref(), false), ConnFault::None);
        assert_eq!(
            faults.conn_fault(dice.as_ref(), true),
            ConnFault::CloseKeepAlive
        );
    }

    #[test]
    fn long_bodies_of_ranges_and_of_whole_objects_have_a_flag_each() {
        let shortens = |long_body_rate, short_object_rate, is_range| {
            let faults = Faults::new(FaultConfig {
                long_body_rate,
                short_object_rate,
                ..FaultConfig::default()
            });
            match faults.range_fault(faults.roll("k").as_ref(), is_range, 10, 100) {
                RangeFault::None => false,
                RangeFault::LongBody { missing_bytes } => {
                    assert!((1..10).contains(&missing_bytes), "{missing_bytes}");
                    true
                }
                other => panic!("{other:?}"),
            }
        };
        assert!(shortens(1.0, 0.0, true));
        assert!(
            !shortens(1.0, 0.0, false),
            "--long-body-rate is for 206s only"
        );
        assert!(shortens(0.0, 1.0, false));
        assert!(
            !shortens(0.0, 1.0, true),
            "--short-object-rate is for 200s only"
        );
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
