//! Token-bucket rate limits for a device queue (the model of Firecracker's `RateLimiter`):
//! a bytes bucket and an optional operations bucket, each refilled at a steady rate up to its
//! burst size.
//!
//! A request (a frame, a packet) is admitted while every bucket holds a token and is charged
//! in full once it is done, so a bucket may go into debt by part of one request; the next
//! admission waits until the debt is repaid. The long-run rate is therefore exact, the burst
//! is at most the bucket plus one request, and a device never has to undo work it already
//! did: a throttled device simply leaves the guest's next descriptors where they are.
//!
//! When a bucket runs dry the limiter arms its timerfd for the moment it will hold tokens
//! again; the device's VMM-loop handler watches that fd ([`RateLimiter::fd`]) and resumes the
//! queue when it fires. Until then [`RateLimiter::admit`] answers `false` without a syscall.

use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// Token units per token: time is counted in nanoseconds, so one second of refill at
/// `rate` tokens/s adds `rate * UNIT` units and one nanosecond adds `rate` units, exactly.
const UNIT: i128 = 1_000_000_000;

/// One bucket: `size` tokens at most, refilled with `rate` tokens per second.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Tokens per second.
    rate: i128,
    /// Capacity in units (`size * UNIT`).
    full: i128,
    /// Tokens now, in units; below zero while in debt.
    budget: i128,
    /// When `budget` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `size` tokens refilled with `rate` tokens per second, or `None` when
    /// `rate` is 0 (unlimited). A `size` of 0 means one second's worth (`rate`).
    pub fn new(rate: u64, size: u64, now: Instant) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let size = if size == 0 { rate } else { size };
        // Both fit with room to spare: u64::MAX * 10^9 < 2^94.
        let full = i128::from(size) * UNIT;
        Some(TokenBucket {
            rate: i128::from(rate),
            full,
            budget: full,
            last: now,
        })
    }

    /// Adds the tokens earned since the last update (up to the size).
    fn refill(&mut self, now: Instant) {
        // An `Instant` earlier than `last` (never, with a monotonic clock) earns nothing.
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = now;
        let earned = i128::try_from(elapsed)
            .unwrap_or(i128::MAX)
            .saturating_mul(self.rate);
        self.budget = self.budget.saturating_add(earned).min(self.full);
    }

    /// Whether the bucket holds at least one whole token at `now`.
    pub fn has_tokens(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.budget >= UNIT
    }

    /// Takes `tokens` (going into debt if there are fewer).
    pub fn consume(&mut self, tokens: u64, now: Instant) {
        self.refill(now);
        self.budget = self.budget.saturating_sub(i128::from(tokens) * UNIT);
    }

    /// How long from the last update until the bucket holds a whole token again (zero if it
    /// does).
    pub fn time_to_tokens(&self) -> Duration {
        let missing = UNIT.saturating_sub(self.budget);
        if missing <= 0 {
            return Duration::ZERO;
        }
        // The first moment `budget + ns * rate >= UNIT`.
        let ns = (missing + self.rate - 1) / self.rate;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Whole tokens held now (0 while in debt).
    pub fn tokens(&self) -> u64 {
        u64::try_from(self.budget.max(0) / UNIT).unwrap_or(u64::MAX)
    }
}

/// What one direction of a device may do: bytes and operations per second, each with a
/// burst. A rate of 0 is unlimited; a burst of 0 is one second's worth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes per second (0 = unlimited).
    pub bytes_per_sec: u64,
    /// Bytes the bucket holds (0 = `bytes_per_sec`).
    pub burst_bytes: u64,
    /// Operations (frames, packets) per second (0 = unlimited).
    pub ops_per_sec: u64,
    /// Operations the bucket holds (0 = `ops_per_sec`).
    pub burst_ops: u64,
}

impl RateLimit {
    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec == 0 && self.ops_per_sec == 0
    }
}

/// A limit for each direction of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Host → guest.
    pub rx: RateLimit,
    /// Guest → host.
    pub tx: RateLimit,
}

/// A [`RateLimit`] that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid rate limit {0:?} (want BYTES_PER_SEC[,BURST_BYTES[,OPS_PER_SEC[,BURST_OPS]]]; \
     integers, bytes may end in K, M or G (KiB, MiB, GiB); 0 = unlimited)"
)]
pub struct RateLimitError(String);

/// `n`, `nK`, `nM` or `nG` (powers of 1024) as a number, if it fits in a u64.
fn parse_amount(s: &str, suffixes: bool) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' if suffixes => (&s[..s.len() - 1], 10),
        b'M' | b'm' if suffixes => (&s[..s.len() - 1], 20),
        b'G' | b'g' if suffixes => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

impl FromStr for RateLimit {
    type Err = RateLimitError;

    /// `BYTES_PER_SEC[,BURST_BYTES[,OPS_PER_SEC[,BURST_OPS]]]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || RateLimitError(s.to_owned());
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if parts.len() > 4 {
            return Err(err());
        }
        let mut v = [0u64; 4];
        for (i, p) in parts.iter().enumerate() {
            v[i] = parse_amount(p, i < 2).ok_or_else(err)?;
        }
        Ok(RateLimit {
            bytes_per_sec: v[0],
            burst_bytes: v[1],
            ops_per_sec: v[2],
            burst_ops: v[3],
        })
    }
}

/// A limited queue direction: its buckets and the timer that wakes the device when they
/// hold tokens again.
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    /// The timer runs: the buckets are known to be dry until it fires.
    blocked: bool,
    /// The timer could not be armed once (then the limiter lets everything through rather
    /// than stall the device for good); logged once.
    timer_failed: bool,
}

impl RateLimiter {
    /// A limiter for `limit`, or `None` when it limits nothing. Creates a non-blocking timerfd
    /// (at VMM start-up, before the seccomp filter).
    pub fn new(limit: RateLimit) -> std::io::Result<Option<Self>> {
        if limit.is_unlimited() {
            return Ok(None);
        }
        let now = Instant::now();
        let timer = TimerFd::new()?;
        // Reads of an expiry that a later re-arm cancelled must not block the loop.
        nix::fcntl::fcntl(
            timer.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(Some(RateLimiter {
            bytes: TokenBucket::new(limit.bytes_per_sec, limit.burst_bytes, now),
            ops: TokenBucket::new(limit.ops_per_sec, limit.burst_ops, now),
            timer,
            blocked: false,
            timer_failed: false,
        }))
    }

    /// The timerfd the VMM loop watches; readable when the device may resume.
    pub fn fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Whether one more request may start now. When not, the timer is armed for the moment
    /// every bucket holds tokens again.
    pub fn admit(&mut self) -> bool {
        if self.blocked {
            return false;
        }
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for b in [&mut self.bytes, &mut self.ops].into_iter().flatten() {
            if !b.has_tokens(now) {
                wait = wait.max(b.time_to_tokens());
            }
        }
        if wait.is_zero() {
            return true;
        }
        match self.timer.reset(wait, None) {
            Ok(()) => {
                self.blocked = true;
                false
            }
            Err(e) => {
                if !self.timer_failed {
                    self.timer_failed = true;
                    log::error!("rate limiter: cannot arm the timer ({e}); not limiting");
                }
                true
            }
        }
    }

    /// Charges one request that moved `bytes`.
    pub fn charge(&mut self, bytes: u64) {
        let now = Instant::now();
        if let Some(b) = &mut self.bytes {
            b.consume(bytes, now);
        }
        if let Some(b) = &mut self.ops {
            b.consume(1, now);
        }
    }

    /// Handles readiness of [`Self::fd`]: once the timer has fired, requests are admitted
    /// again (a stale wake-up leaves the limiter blocked).
    pub fn timer_fired(&mut self) {
        // Non-blocking: EAGAIN when a re-arm cancelled the expiry this event was for.
        if self.timer.wait().is_ok() {
            self.blocked = false;
        }
    }

    /// Whether the limiter waits for its timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }
}

/// A device's limiters, one per direction (none: unlimited).
#[derive(Default)]
pub struct Limiters {
    /// Host → guest.
    pub rx: Option<RateLimiter>,
    /// Guest → host.
    pub tx: Option<RateLimiter>,
}

impl Limiters {
    /// Limiters for `limits` (none for an unlimited direction).
    pub fn new(limits: RateLimits) -> std::io::Result<Self> {
        Ok(Self {
            rx: RateLimiter::new(limits.rx)?,
            tx: RateLimiter::new(limits.tx)?,
        })
    }

    /// The timer fds of the limiters there are, for the event loop.
    pub fn timer_fds(&self) -> Vec<RawFd> {
        [&self.rx, &self.tx]
            .into_iter()
            .flatten()
            .map(RateLimiter::fd)
            .collect()
    }

    /// Lets every limiter see that its timer fired.
    pub fn timer_fired(&mut self) {
        for l in [&mut self.rx, &mut self.tx].into_iter().flatten() {
            l.timer_fired();
        }
    }
}

/// Whether `limiter` (none: unlimited) admits one more request; adds one to `throttled`
/// each time it starts holding the device back.
pub fn admit(limiter: &mut Option<RateLimiter>, throttled: &mut u64) -> bool {
    let Some(l) = limiter else {
        return true;
    };
    let was_blocked = l.is_blocked();
    let ok = l.admit();
    if !ok && !was_blocked {
        *throttled += 1;
    }
    ok
}

/// Charges `bytes` and one operation to `limiter`, if any.
pub fn charge(limiter: &mut Option<RateLimiter>, bytes: u64) {
    if let Some(l) = limiter {
        l.charge(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const CENTURIES: Duration = Duration::from_secs(400 * 365 * 86_400);

    #[test]
    fn zero_rate_is_unlimited() {
        let t = Instant::now();
        assert!(TokenBucket::new(0, 100, t).is_none());
        assert!(RateLimit::default().is_unlimited());
        assert!(RateLimiter::new(RateLimit::default()).unwrap().is_none());
        let ops_only = RateLimit {
            ops_per_sec: 10,
            ..RateLimit::default()
        };
        let mut l = RateLimiter::new(ops_only).unwrap().unwrap();
        assert!(l.bytes.is_none());
        // Bytes are free; only the ten operations of the burst pass.
        for _ in 0..10 {
            assert!(l.admit());
            l.charge(u64::MAX);
        }
        assert!(!l.admit() && l.is_blocked());
    }

    #[test]
    fn starts_full_with_the_burst_and_refills_at_the_rate() {
        let t = Instant::now();
        let mut b = TokenBucket::new(1000, 5000, t).unwrap();
        assert_eq!(b.tokens(), 5000);
        b.consume(5000, t);
        assert!(!b.has_tokens(t));
        assert_eq!(b.time_to_tokens(), Duration::from_millis(1));
        b.refill(t + S / 2);
        assert_eq!(b.tokens(), 500);
        b.refill(t + 3 * S);
        assert_eq!(b.tokens(), 3000);
        // Never above the burst size.
        b.refill(t + 100 * S);
        assert_eq!(b.tokens(), 5000);
        // Size 0: one second's worth.
        assert_eq!(TokenBucket::new(1000, 0, t).unwrap().tokens(), 1000);
    }

    #[test]
    fn debt_is_repaid_before_the_next_admission() {
        let t = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t).unwrap();
        // One request bigger than the bucket passes and leaves 1900 tokens of debt: 1.9 s to
        // repay, and one more millisecond for the token the next admission needs.
        assert!(b.has_tokens(t));
        b.consume(2000, t);
        assert!(!b.has_tokens(t));
        assert_eq!(b.time_to_tokens(), Duration::from_millis(1901));
        assert!(!b.has_tokens(t + Duration::from_millis(1900)));
        assert!(b.has_tokens(t + Duration::from_millis(1901)));
        // No rounding loss: a thousand 1-ns steps earn exactly one token.
        let mut c = TokenBucket::new(1_000_000, 1, t).unwrap();
        c.consume(1, t);
        for i in 1..=1000 {
            c.refill(t + Duration::from_nanos(i));
        }
        assert_eq!(c.tokens(), 1);
    }

    #[test]
    fn the_long_run_rate_is_the_configured_rate() {
        // A greedy requester of 1500-byte requests against 64 KiB/s for 10 simulated seconds.
        let t = Instant::now();
        let mut b = TokenBucket::new(64 * 1024, 64 * 1024, t).unwrap();
        let mut now = t;
        let mut moved = 0u64;
        while now < t + 10 * S {
            if b.has_tokens(now) {
                b.consume(1500, now);
                moved += 1500;
            } else {
                now += b.time_to_tokens();
            }
        }
        let allowed = 64 * 1024 * 11 + 1500; // burst + 10 s of refill + one request
        assert!(moved <= allowed && moved > allowed - 3000, "{moved}");
    }

    #[test]
    fn huge_values_neither_overflow_nor_panic() {
        let t = Instant::now();
        let mut b = TokenBucket::new(u64::MAX, u64::MAX, t).unwrap();
        assert_eq!(b.tokens(), u64::MAX);
        for _ in 0..4 {
            b.consume(u64::MAX, t);
        }
        assert!(!b.has_tokens(t));
        // Centuries at u64::MAX tokens/s: more units than an i128 holds.
        b.refill(t + CENTURIES);
        assert_eq!(b.tokens(), u64::MAX);
        let mut slow = TokenBucket::new(1, 1, t).unwrap();
        for _ in 0..1000 {
            slow.consume(u64::MAX, t);
        }
        assert_eq!(slow.time_to_tokens(), Duration::from_nanos(u64::MAX));
        assert!(!slow.has_tokens(t + CENTURIES));
        // A clock that went backwards earns nothing.
        let mut back = TokenBucket::new(10, 10, t + S).unwrap();
        back.consume(10, t + S);
        assert!(!back.has_tokens(t));
    }

    #[test]
    fn specs_parse_with_suffixes_and_bad_ones_are_refused() {
        let l: RateLimit = "64K".parse().unwrap();
        assert_eq!(
            l,
            RateLimit {
                bytes_per_sec: 65536,
                ..RateLimit::default()
            }
        );
        let l: RateLimit = "1M, 2m,100,10".parse().unwrap();
        assert_eq!(
            l,
            RateLimit {
                bytes_per_sec: 1 << 20,
                burst_bytes: 2 << 20,
                ops_per_sec: 100,
                burst_ops: 10,
            }
        );
        assert!("0".parse::<RateLimit>().unwrap().is_unlimited());
        for bad in [
            "",
            "x",
            "-1",
            "1.5M",
            "1,2,3,4,5",
            "1T",
            "K",
            "1,,2",
            "1,2,3K",
            "18446744073709551615K",
        ] {
            let e = bad.parse::<RateLimit>().unwrap_err().to_string();
            assert!(e.contains("BYTES_PER_SEC"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_dry_limiter_arms_its_timer_and_resumes_when_it_fires() {
        let limit = RateLimit {
            bytes_per_sec: 1000,
            burst_bytes: 1000,
            ..RateLimit::default()
        };
        let mut l = RateLimiter::new(limit).unwrap().unwrap();
        assert!(l.admit());
        l.charge(1010); // 10 ms of debt
        assert!(!l.admit() && l.is_blocked());
        // Not fired yet: a stale wake-up neither blocks nor unblocks.
        l.timer_fired();
        assert!(l.is_blocked());
        std::thread::sleep(Duration::from_millis(30));
        l.timer_fired();
        assert!(!l.is_blocked());
        assert!(l.admit());
    }
}
