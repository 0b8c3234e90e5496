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
//! The router creates one `Availability` per endpoint and builds the endpoint's
//! stack inside [`Availability::scope`]; a breaker layer built in that scope
//! finds it with [`Availability::current`] and publishes into it. A breaker
//! built outside any scope keeps its own.
//!
//! # Example
//!
//! ```
//! use mesh_core::availability::{Availability, AvailabilityState};
//!
//! let signal = Availability::new();
//! // The router builds the endpoint's stack inside the scope...
//! let seen_by_breaker = signal.scope(|| Availability::current());
//! // ...and the breaker publishes into the same signal.
//! seen_by_breaker.unwrap().set(AvailabilityState::Unavailable);
//! assert!(!signal.is_available());
//! assert!(Availability::current().is_none());
//! ```

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
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

/// One endpoint's availability, shared by its breaker (writer) and the
/// balancer (reader). Cloning shares the signal.
#[derive(Clone, Default)]
pub struct Availability {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: AtomicU8,
    /// For `Unavailable`: when it ends, [`encode`]d; 0 means "until further
    /// notice".
    until: AtomicU64,
}

thread_local! {
    static CURRENT: RefCell<Option<Availability>> = const { RefCell::new(None) };
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
    const BIAS: u64 = 1 << 63;
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
    const BIAS: u64 = 1 << 63;
    let a = anchor();
    if n >= BIAS {
        a + std::time::Duration::from_nanos(n - BIAS)
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

    /// Publishes a new state; `Unavailable` lasts until further notice.
    #[inline]
    pub fn set(&self, state: AvailabilityState) {
        self.inner.until.store(0, Ordering::Release);
        self.inner.state.store(state as u8, Ordering::Release);
    }

    /// Publishes `Unavailable` until `until`: after that instant the signal
    /// reads as available again (see the [module docs](self)), without anyone
    /// having to write it.
    #[inline]
    pub fn set_unavailable_until(&self, until: Instant) {
        self.inner.until.store(encode(until), Ordering::Release);
        self.inner
            .state
            .store(AvailabilityState::Unavailable as u8, Ordering::Release);
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
        self.inner.until.store(encode(until), Ordering::Release);
        self.inner.state.store(SOON, Ordering::Release);
    }

    /// Whether the endpoint may take requests at or before `at`: it is
    /// available now, or its unavailability ends by then, or may end sooner
    /// than its deadline (see
    /// [`set_unavailable_at_most_until`](Self::set_unavailable_at_most_until)).
    /// False for an endpoint unavailable until further notice or past `at`:
    /// a router can fail a request at once instead of waiting for it.
    pub fn may_be_available_by(&self, at: Instant) -> bool {
        match self.inner.state.load(Ordering::Acquire) {
            SOON => true,
            _ if self.is_available() => true,
            _ => self.unavailable_until().is_some_and(|until| until <= at),
        }
    }

    /// The state as last published: one atomic load. An `Unavailable` whose
    /// deadline has passed still reads `Unavailable` here; use
    /// [`is_available`](Self::is_available) to decide where to send.
    #[inline]
    pub fn state(&self) -> AvailabilityState {
        match self.inner.state.load(Ordering::Acquire) {
            0 => AvailabilityState::Available,
            1 => AvailabilityState::Probing,
            _ => AvailabilityState::Unavailable,
        }
    }

    /// When a deadline-bound `Unavailable` ends, if one is published.
    pub fn unavailable_until(&self) -> Option<Instant> {
        if self.state() != AvailabilityState::Unavailable {
            return None;
        }
        match self.inner.until.load(Ordering::Acquire) {
            0 => None,
            n => Some(decode(n)),
        }
    }

    /// True unless the state is [`AvailabilityState::Unavailable`] and its
    /// deadline, if any, has not passed yet. Reads the clock only for an
    /// unavailable endpoint with a deadline.
    #[inline]
    pub fn is_available(&self) -> bool {
        if self.state() != AvailabilityState::Unavailable {
            return true;
        }
        match self.inner.until.load(Ordering::Acquire) {
            0 => false,
            until => encode(Instant::now()) >= until,
        }
    }

    /// True when both handles share one signal.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Runs `f` with this signal as the [`current`](Self::current) one on this
    /// thread, restoring the previous one afterwards (even if `f` panics).
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Availability>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let prev = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = prev);
            }
        }
        let prev = CURRENT.with(|c| c.borrow_mut().replace(self.clone()));
        let _restore = Restore(prev);
        f()
    }

    /// The signal of the endpoint whose stack is being built on this thread,
    /// if any (see [`scope`](Self::scope)).
    pub fn current() -> Option<Availability> {
        CURRENT.with(|c| c.borrow().clone())
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
    fn scopes_nest_and_restore() {
        let outer = Availability::new();
        let inner = Availability::new();
        outer.scope(|| {
            assert!(Availability::current().unwrap().ptr_eq(&outer));
            inner.scope(|| assert!(Availability::current().unwrap().ptr_eq(&inner)));
            assert!(Availability::current().unwrap().ptr_eq(&outer));
        });
        assert!(Availability::current().is_none());
        let r = std::panic::catch_unwind(|| outer.scope(|| panic!("boom")));
        assert!(r.is_err());
        assert!(Availability::current().is_none());
    }

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
}
