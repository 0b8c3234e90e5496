//! Exponential backoff with jitter.
//!
//! # Why jitter
//!
//! When a server fails, every client that was talking to it sees the failure at
//! nearly the same moment. If they all wait `base · 2ⁿ` before trying again, they
//! all come back at nearly the same moment too, and the recovering server is hit
//! by the same wave it just fell over under. Jitter spreads the wave out:
//!
//! - [`Jitter::Full`] draws each delay uniformly from `[0, min(cap, base·multiplierⁿ)]`.
//!   Its mean is half the envelope; it spreads retries best and is the default.
//! - [`Jitter::Decorrelated`] draws `min(cap, uniform(base, 3·previous))`: each
//!   delay depends on the one before, so it grows on average but never locks
//!   clients into step (the "decorrelated jitter" of the AWS architecture blog).
//! - [`Jitter::None`] is the plain envelope, for tests and for callers that add
//!   their own spread.
//!
//! # Fresh randomness for every session
//!
//! A [`Backoff`] is the configuration; each logical operation that backs off
//! (one request's retries, one breaker's open periods) takes its own
//! [`BackoffSession`] with [`Backoff::session`], which gets its own random
//! stream. tower's `ExponentialBackoffMaker` clones one RNG into every backoff
//! it makes without advancing it, so every request in a process draws the same
//! "random" delays; here two sessions from one `Backoff` draw different delays.
//!
//! For deterministic tests use [`Backoff::session_seeded`], or seed the calling
//! thread's generator with [`fastrand::seed`]: sessions derive their streams
//! from it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::backoff::{Backoff, Jitter};
//!
//! let backoff = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(2))
//!     .with_jitter(Jitter::Full);
//! backoff.validate().unwrap();
//!
//! let mut session = backoff.session();
//! for attempt in 0..6 {
//!     let delay = session.next_delay();
//!     // Never above the envelope, which never passes the cap.
//!     assert!(delay <= backoff.envelope(attempt));
//!     assert!(delay <= Duration::from_secs(2));
//! }
//! ```

use std::time::Duration;

use crate::config::InvalidConfig;

/// How randomness is mixed into each delay. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Jitter {
    /// The plain envelope `min(cap, base·multiplierⁿ)`.
    None,
    /// Uniform in `[0, min(cap, base·multiplierⁿ)]`.
    #[default]
    Full,
    /// `min(cap, uniform(base, 3·previous))`, starting from `previous = base`.
    Decorrelated,
}

/// The longest `base` and `cap` [`Backoff::validate`] accepts: 1 hour. A
/// delay longer than that is a hang, not a backoff.
pub const MAX_BACKOFF_DELAY: Duration = Duration::from_secs(3600);

/// The largest `multiplier` [`Backoff::validate`] accepts.
pub const MAX_BACKOFF_MULTIPLIER: f64 = 100.0;

/// Exponential backoff: a base delay, a multiplier, a cap and a jitter mode.
///
/// This is configuration; draw delays from a [`BackoffSession`]. Sessions
/// never panic and never draw above `cap`, whatever the values;
/// [`validate`](Self::validate) keeps them sane.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Backoff {
    /// The first delay's envelope. 1ns..=1h.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub base: Duration,
    /// How much the envelope grows per attempt. 1..=100.
    pub multiplier: f64,
    /// No delay is ever longer. `base`..=1h.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub cap: Duration,
    /// How randomness is mixed in.
    pub jitter: Jitter,
}

impl Default for Backoff {
    /// The seed plan's retry defaults: 1 s base, ×2, capped at 30 s, full jitter.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            multiplier: 2.0,
            cap: Duration::from_secs(30),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// Exponential backoff from `base`, growing by `multiplier`, capped at `cap`,
    /// with full jitter. Check it with [`validate`](Self::validate).
    pub const fn new(base: Duration, multiplier: f64, cap: Duration) -> Self {
        Self {
            base,
            multiplier,
            cap,
            jitter: Jitter::Full,
        }
    }

    /// The same backoff with another jitter mode.
    #[must_use]
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks every field against its range: `base` in 1ns..=1h, `cap` in
    /// `base`..=1h, `multiplier` in 1..=100.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        let base_ok = errors.check_duration(
            "base",
            self.base,
            Duration::from_nanos(1)..=MAX_BACKOFF_DELAY,
        );
        if base_ok && self.cap < self.base {
            errors.push(
                "cap",
                format!(
                    "must be at least base ({:?}), got {:?}",
                    self.base, self.cap
                ),
            );
        } else {
            errors.check_duration("cap", self.cap, Duration::ZERO..=MAX_BACKOFF_DELAY);
        }
        if !(self.multiplier.is_finite()
            && (1.0..=MAX_BACKOFF_MULTIPLIER).contains(&self.multiplier))
        {
            errors.push(
                "multiplier",
                format!(
                    "must be within 1..={MAX_BACKOFF_MULTIPLIER}, got {}",
                    self.multiplier
                ),
            );
        }
        errors.into_result()
    }

    /// The envelope for attempt `n` (0-based): `min(cap, base·multiplierⁿ)`.
    pub fn envelope(&self, attempt: u32) -> Duration {
        let cap = nanos(self.cap);
        let grown = nanos(self.base) * self.multiplier.powi(attempt.min(i32::MAX as u32) as i32);
        // NaN (from a config that failed validation) falls back to the cap.
        from_nanos(if grown < cap { grown } else { cap })
    }

    /// A new session with its own random stream, forked from this thread's
    /// generator (so it differs from every other session).
    pub fn session(&self) -> BackoffSession {
        self.session_with_rng(fastrand::Rng::new())
    }

    /// A new session whose delays are fully determined by `seed`.
    pub fn session_seeded(&self, seed: u64) -> BackoffSession {
        self.session_with_rng(fastrand::Rng::with_seed(seed))
    }

    /// A new session drawing from `rng`.
    pub fn session_with_rng(&self, rng: fastrand::Rng) -> BackoffSession {
        BackoffSession {
            backoff: *self,
            attempt: 0,
            previous: self.base,
            rng,
        }
    }
}

/// One operation's sequence of delays, drawn from its own random stream.
#[derive(Debug, Clone)]
pub struct BackoffSession {
    backoff: Backoff,
    attempt: u32,
    previous: Duration,
    rng: fastrand::Rng,
}

impl BackoffSession {
    /// The next delay. Never above the cap; never allocates.
    pub fn next_delay(&mut self) -> Duration {
        let b = &self.backoff;
        let delay = match b.jitter {
            Jitter::None => b.envelope(self.attempt),
            Jitter::Full => from_nanos(nanos(b.envelope(self.attempt)) * self.rng.f64()),
            Jitter::Decorrelated => {
                let lo = nanos(b.base);
                let hi = (nanos(self.previous) * 3.0).max(lo);
                let drawn = lo + (hi - lo) * self.rng.f64();
                from_nanos(drawn.min(nanos(b.cap)))
            }
        };
        self.attempt = self.attempt.saturating_add(1);
        self.previous = delay;
        delay
    }

    /// How many delays this session has drawn.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts the sequence over (after a success, say), keeping the random stream.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.previous = self.backoff.base;
    }

    /// The configuration this session draws from.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn from_nanos(n: f64) -> Duration {
    // `as` saturates and maps NaN to 0: no panic for any input.
    Duration::from_nanos(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn envelope_grows_then_caps() {
        let b = Backoff::new(ms(100), 2.0, ms(1000)).with_jitter(Jitter::None);
        let mut s = b.session();
        let got: Vec<_> = (0..6).map(|_| s.next_delay()).collect();
        assert_eq!(
            got,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(b.envelope(u32::MAX), ms(1000));
        s.reset();
        assert_eq!(s.next_delay(), ms(100));
    }

    #[test]
    fn two_sessions_from_one_backoff_differ() {
        // tower's ExponentialBackoffMaker hands every backoff the same RNG state;
        // ours must not.
        let b = Backoff::new(ms(100), 2.0, Duration::from_secs(60));
        let draw = |mut s: BackoffSession| (0..8).map(|_| s.next_delay()).collect::<Vec<_>>();
        assert_ne!(draw(b.session()), draw(b.session()));
        let b = b.with_jitter(Jitter::Decorrelated);
        assert_ne!(draw(b.session()), draw(b.session()));
    }

    #[test]
    fn seeded_sessions_repeat() {
        let b = Backoff::new(ms(10), 3.0, Duration::from_secs(5));
        let draw = |mut s: BackoffSession| (0..8).map(|_| s.next_delay()).collect::<Vec<_>>();
        assert_eq!(draw(b.session_seeded(7)), draw(b.session_seeded(7)));
        assert_ne!(draw(b.session_seeded(7)), draw(b.session_seeded(8)));
        fastrand::seed(42);
        let first = draw(b.session());
        fastrand::seed(42);
        assert_eq!(first, draw(b.session()));
    }

    #[test]
    fn validation_names_each_bad_field() {
        let bad = Backoff::new(Duration::ZERO, 0.5, Duration::ZERO);
        let err = bad.validate().unwrap_err();
        let paths: Vec<_> = err.errors().iter().map(|e| e.path().to_owned()).collect();
        assert_eq!(paths, ["base", "multiplier"]);
        let err = Backoff::new(ms(10), f64::NAN, ms(5))
            .validate()
            .unwrap_err();
        let paths: Vec<_> = err.errors().iter().map(|e| e.path().to_owned()).collect();
        assert_eq!(paths, ["cap", "multiplier"]);
        Backoff::default().validate().unwrap();
    }

    #[test]
    fn delays_of_years_and_huge_multipliers_are_refused_with_the_range() {
        let years = Duration::from_secs(500_000_000_000 * 31_557_600);
        let err = Backoff::new(years, 1e9, years).validate().unwrap_err();
        let got: Vec<_> = err
            .errors()
            .iter()
            .map(|e| (e.path().to_owned(), e.reason().to_owned()))
            .collect();
        assert_eq!(got[0].0, "base");
        assert!(
            got[0].1.starts_with("must be within 1ns..=1h, got"),
            "{got:?}"
        );
        assert_eq!(got[1].0, "cap");
        assert!(
            got[1].1.starts_with("must be within 0s..=1h, got"),
            "{got:?}"
        );
        assert_eq!(
            got[2],
            (
                "multiplier".to_owned(),
                "must be within 1..=100, got 1000000000".to_owned()
            )
        );
        // The edges are allowed.
        Backoff::new(MAX_BACKOFF_DELAY, MAX_BACKOFF_MULTIPLIER, MAX_BACKOFF_DELAY)
            .validate()
            .unwrap();
        Backoff::new(Duration::from_nanos(1), 1.0, Duration::from_nanos(1))
            .validate()
            .unwrap();
    }

    #[test]
    fn full_jitter_mean_is_half_the_envelope() {
        let b = Backoff::new(ms(1000), 1.0, ms(1000));
        let mut s = b.session_seeded(1);
        let n = 20_000;
        let total: f64 = (0..n).map(|_| s.next_delay().as_secs_f64()).sum();
        let mean = total / f64::from(n);
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn decorrelated_stays_between_base_and_cap() {
        let b = Backoff::new(ms(50), 2.0, ms(2000)).with_jitter(Jitter::Decorrelated);
        let mut s = b.session_seeded(3);
        for _ in 0..1000 {
            let d = s.next_delay();
            assert!(d >= ms(50) && d <= ms(2000), "{d:?}");
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_humantime() {
        let b: Backoff =
            serde_json::from_str(r#"{"base":"250ms","cap":"10s","jitter":"decorrelated"}"#)
                .unwrap();
        assert_eq!(b.base, ms(250));
        assert_eq!(b.cap, Duration::from_secs(10));
        assert_eq!(b.multiplier, 2.0);
        assert_eq!(b.jitter, Jitter::Decorrelated);
        let back: Backoff = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        assert!(serde_json::from_str::<Backoff>(r#"{"bsae":"1s"}"#).is_err());
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Decorrelated)
        ]
    }

    proptest! {
        #[test]
        fn never_above_the_cap(
            base_ms in 1u64..10_000,
            extra_ms in 0u64..100_000,
            multiplier in 1.0f64..10.0,
            jitter in any_jitter(),
            seed in any::<u64>(),
        ) {
            let cap = ms(base_ms + extra_ms);
            let b = Backoff::new(ms(base_ms), multiplier, cap).with_jitter(jitter);
            prop_assert!(b.validate().is_ok());
            let mut s = b.session_seeded(seed);
            for attempt in 0..64 {
                let d = s.next_delay();
                prop_assert!(d <= cap, "attempt {} gave {:?} > cap {:?}", attempt, d, cap);
                if jitter != Jitter::Decorrelated {
                    prop_assert!(d <= b.envelope(attempt));
                }
            }
        }

        #[test]
        fn full_jitter_mean_is_about_half_the_envelope(
            base_ms in 1u64..5_000,
            attempt in 0u32..8,
            seed in any::<u64>(),
        ) {
            let b = Backoff::new(ms(base_ms), 2.0, Duration::from_secs(3600));
            let envelope = b.envelope(attempt).as_secs_f64();
            let mut rng = fastrand::Rng::with_seed(seed);
            let n = 4_000;
            let mut total = 0.0;
            for _ in 0..n {
                let mut s = b.session_with_rng(rng.fork());
                for _ in 0..attempt { s.next_delay(); }
                total += s.next_delay().as_secs_f64();
            }
            let mean = total / f64::from(n);
            // The mean of n uniform draws has sd envelope/sqrt(12n) ≈ 0.0046·envelope.
            prop_assert!((mean / envelope - 0.5).abs() < 0.03, "mean/envelope = {}", mean / envelope);
        }

        #[test]
        fn unvalidated_configs_never_panic(
            base in any::<u64>(),
            cap in any::<u64>(),
            multiplier in any::<f64>(),
            jitter in any_jitter(),
        ) {
            let b = Backoff::new(Duration::from_nanos(base), multiplier, Duration::from_nanos(cap))
                .with_jitter(jitter);
            let mut s = b.session_seeded(0);
            for _ in 0..70 { s.next_delay(); }
        }
    }
}
