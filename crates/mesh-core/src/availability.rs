//! The availability signal: how a breaker tells the router "skip me".
//!
//! A balancer should not send a request to an endpoint whose breaker is open,
//! and it should not have to poll that endpoint's service to find out. Each
//! endpoint therefore has an [`Availability`]: one atomic byte, written by the
//! endpoint's breaker on every state change and read by the balancer on every
//! pick. Neither crate imports the other; they meet here.
//!
//! An open breaker knows when its open period ends, but nothing polls an
//! endpoint the balancer skips, so nothing would ever find out that it may be
//! probed again. The breaker therefore publishes the deadline too
//! ([`Availability::set_unavailable_until`]): once it has passed, the signal
//! reads as available, the balancer sends the endpoint a request again, and
//! the breaker, polled at last, decides whether it is a half-open probe.
//!
//! The router creates one `Availability` per endpoint and hands it to the
//! endpoint's stack in its [`Target`](crate::target::Target); a breaker built
//! for that target publishes into it. A breaker built outside any router
//! keeps its own. The balancer reads every signal, and it alone decides who
//! gets traffic: it skips unavailable endpoints only within its ejection cap
//! (see mesh-balance).
//!
//! # Example
//!
//! ```
//! use mesh_core::availability::{Availability, AvailabilityState};
//!
//! let signal = Availability::new();
//! // The router gives a clone to the endpoint's breaker (in its target)...
//! let breakers_copy = signal.clone();
//! // ...and the breaker publishes into the same signal.
//! breakers_copy.set(AvailabilityState::Unavailable);
//! assert!(!signal.is_available());
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

/// The raw state of an `Unavailable` that may end before its deadline (see
/// [`Availability::set_unavailable_at_most_until`]); reads as `Unavailable`.
const SOON: u8 = 3;

/// Whether an endpoint takes requests now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AvailabilityState {
    /// Takes requests (breaker closed).
    Available = 0,
    /// Takes a limited number of probe requests (breaker half-open with a free
    /// probe permit).
    Probing = 1,
    /// Takes no requests (breaker open, or half-open with every probe permit
    /// taken).
    Unavailable = 2,
}

/// One endpoint's availability, shared by its breaker (writer), its
/// balancer's outlier detection (writer, through
/// [`eject_until`](Self::eject_until)) and the balancer (reader). Cloning
/// shares the signal.
#[derive(Clone, Default)]
pub struct Availability {
    inner: Arc<AtomicU64>,
}

/// The low two bits of the word hold the raw state; the rest, for
/// `Unavailable`, when it ends ([`encode`]d), 0 meaning "until further
/// notice". One word, so every write is one atomic store and an ejection
/// can be a compare-and-swap.
const STATE_BITS: u64 = 0b11;

/// Offsets from the anchor are kept within ±2^61 ns (±73 years) so that an
/// encoded instant fits above the two state bits.
const BIAS: u64 = 1 << 61;

fn pack(state: u8, until: u64) -> u64 {
    (until << 2) | u64::from(state)
}

fn until_of(word: u64) -> u64 {
    word >> 2
}

/// The instant deadlines are measured from (the first one this process used).
/// Instants before it are fine: offsets are signed.
fn anchor() -> Instant {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    *ANCHOR.get_or_init(Instant::now)
}

/// `at` as a signed nanosecond offset from the anchor, biased into `u64` so
/// that order is kept and 0 stays free to mean "no deadline".
fn encode(at: Instant) -> u64 {
    let a = anchor();
    let saturate = |d: std::time::Duration| {
        u64::try_from(d.as_nanos())
            .unwrap_or(BIAS - 1)
            .min(BIAS - 1)
    };
    if at >= a {
        BIAS + saturate(at - a)
    } else {
        BIAS - saturate(a - at)
    }
}

fn decode(n: u64) -> Instant {
    let a = anchor();
    if n >= BIAS {
        a.checked_add(std::time::Duration::from_nanos(n - BIAS))
            .unwrap_or(a)
    } else {
        a.checked_sub(std::time::Duration::from_nanos(BIAS - n))
            .unwrap_or(a)
    }
}

impl Availability {
    /// A new signal, [`AvailabilityState::Available`].
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn word(&self) -> u64 {
        self.inner.load(Ordering::Acquire)
    }

    /// Publishes a new state; `Unavailable` lasts until further notice.
    #[inline]
    pub fn set(&self, state: AvailabilityState) {
        self.inner.store(pack(state as u8, 0), Ordering::Release);
    }

    /// Publishes `Unavailable` until `until`: after that instant the signal
    /// reads as available again (see the [module docs](self)), without anyone
    /// having to write it.
    #[inline]
    pub fn set_unavailable_until(&self, until: Instant) {
        self.inner.store(
            pack(AvailabilityState::Unavailable as u8, encode(until)),
            Ordering::Release,
        );
    }

    /// Publishes `Unavailable` until `until` *at the latest*: it may end
    /// sooner, when the writer says so. A half-open breaker whose probe
    /// permits are all taken publishes this: it turns available as soon as
    /// its probes answer, and by itself when the oldest probe's permit
    /// expires at `until`. Reads exactly like
    /// [`set_unavailable_until`](Self::set_unavailable_until) except for
    /// [`may_be_available_by`](Self::may_be_available_by).
    #[inline]
    pub fn set_unavailable_at_most_until(&self, until: Instant) {
        self.inner
            .store(pack(SOON, encode(until)), Ordering::Release);
    }

    /// Publishes `Unavailable` until `until`, but only if the signal reads
    /// available now (a closed breaker, or an ejection that has ended): the
    /// balancer's outlier detection ejects an endpoint this way without ever
    /// overwriting what its breaker published. Returns whether it did.
    pub fn eject_until(&self, until: Instant) -> bool {
        let current = self.word();
        if !self.is_available_word(current) {
            return false;
        }
        let next = pack(AvailabilityState::Unavailable as u8, encode(until));
        self.inner
            .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the endpoint may take requests at or before `at`: it is
    /// available now, or its unavailability ends by then, or may end sooner
    /// than its deadline (see
    /// [`set_unavailable_at_most_until`](Self::set_unavailable_at_most_until)).
    /// False for an endpoint unavailable until further notice or past `at`.
    pub fn may_be_available_by(&self, at: Instant) -> bool {
        let word = self.word();
        if (word & STATE_BITS) as u8 == SOON || self.is_available_word(word) {
            return true;
        }
        self.unavailable_until().is_some_and(|until| until <= at)
    }

    /// The state as last published: one atomic load. An `Unavailable` whose
    /// deadline has passed still reads `Unavailable` here; use
    /// [`is_available`](Self::is_available) to decide where to send.
    #[inline]
    pub fn state(&self) -> AvailabilityState {
        match self.word() & STATE_BITS {
            0 => AvailabilityState::Available,
            1 => AvailabilityState::Probing,
            _ => AvailabilityState::Unavailable,
        }
    }

    /// When a deadline-bound `Unavailable` ends, if one is published.
    pub fn unavailable_until(&self) -> Option<Instant> {
        let word = self.word();
        if word & STATE_BITS < 2 {
            return None;
        }
        match until_of(word) {
            0 => None,
            n => Some(decode(n)),
        }
    }

    /// True unless the state is [`AvailabilityState::Unavailable`] and its
    /// deadline, if any, has not passed yet. Reads the clock only for an
    /// unavailable endpoint with a deadline.
    #[inline]
    pub fn is_available(&self) -> bool {
        self.is_available_word(self.word())
    }

    #[inline]
    fn is_available_word(&self, word: u64) -> bool {
        if word & STATE_BITS < 2 {
            return true;
        }
        match until_of(word) {
            0 => false,
            until => encode(Instant::now()) >= until,
        }
    }

    /// True when both handles share one signal.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Availability").field(&self.state()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let a = Availability::new();
        assert_eq!(a.state(), AvailabilityState::Available);
        a.set(AvailabilityState::Probing);
        assert!(a.is_available());
        a.clone().set(AvailabilityState::Unavailable);
        assert!(!a.is_available());
        assert_eq!(format!("{a:?}"), "Availability(Unavailable)");
        assert_eq!(a.unavailable_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_makes_the_endpoint_available_again_by_itself() {
        let a = Availability::new();
        let until = Instant::now() + std::time::Duration::from_secs(5);
        a.set_unavailable_until(until);
        assert!(!a.is_available());
        let published = a.unavailable_until().unwrap();
        assert!(published.max(until) - published.min(until) < std::time::Duration::from_micros(1));
        tokio::time::advance(std::time::Duration::from_secs(4)).await;
        assert!(!a.is_available());
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(a.is_available(), "no writer needed");
        assert_eq!(a.state(), AvailabilityState::Unavailable);
        // A plain `set` clears the deadline.
        a.set(AvailabilityState::Unavailable);
        assert!(!a.is_available());
        // A deadline in the past is available at once.
        a.set_unavailable_until(Instant::now() - std::time::Duration::from_secs(1));
        assert!(a.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn may_be_available_by_tells_whether_waiting_can_help() {
        use std::time::Duration;
        let a = Availability::new();
        let now = Instant::now();
        assert!(a.may_be_available_by(now), "available now");
        a.set(AvailabilityState::Unavailable);
        assert!(!a.may_be_available_by(now + Duration::from_secs(3600)));
        a.set_unavailable_until(now + Duration::from_secs(60));
        assert!(!a.may_be_available_by(now + Duration::from_secs(1)));
        assert!(a.may_be_available_by(now + Duration::from_secs(60)));
        // May end sooner than its deadline: reads as unavailable until then,
        // but waiting can help.
        a.set_unavailable_at_most_until(now + Duration::from_secs(60));
        assert_eq!(a.state(), AvailabilityState::Unavailable);
        assert!(!a.is_available());
        assert!(a.unavailable_until().is_some());
        assert!(a.may_be_available_by(now + Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(a.is_available(), "the deadline still ends it by itself");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_never_overrides_what_the_breaker_published() {
        use std::time::Duration;
        let a = Availability::new();
        let now = Instant::now();
        assert!(a.eject_until(now + Duration::from_secs(10)));
        assert!(!a.is_available());
        assert_eq!(a.unavailable_until(), Some(now + Duration::from_secs(10)));
        // Already unavailable: a second ejection changes nothing.
        assert!(!a.eject_until(now + Duration::from_secs(99)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(a.is_available(), "the ejection ends by itself");
        // The breaker opened: the detector cannot shorten or lengthen that.
        a.set(AvailabilityState::Unavailable);
        assert!(!a.eject_until(Instant::now() + Duration::from_secs(1)));
        assert_eq!(a.unavailable_until(), None);
    }
}
