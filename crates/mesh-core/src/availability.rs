//! The availability signal: how a breaker tells the router "skip me".
//!
//! A balancer should not send a request to an endpoint whose breaker is open,
//! and it should not have to poll that endpoint's service to find out. Each
//! endpoint therefore has an [`Availability`]: one atomic byte, written by the
//! endpoint's breaker on every state change and read by the balancer on every
//! pick. Neither crate imports the other; they meet here.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

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
    state: Arc<AtomicU8>,
}

thread_local! {
    static CURRENT: RefCell<Option<Availability>> = const { RefCell::new(None) };
}

impl Availability {
    /// A new signal, [`AvailabilityState::Available`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes a new state.
    #[inline]
    pub fn set(&self, state: AvailabilityState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// The current state: one atomic load.
    #[inline]
    pub fn state(&self) -> AvailabilityState {
        match self.state.load(Ordering::Acquire) {
            0 => AvailabilityState::Available,
            1 => AvailabilityState::Probing,
            _ => AvailabilityState::Unavailable,
        }
    }

    /// True unless the state is [`AvailabilityState::Unavailable`].
    #[inline]
    pub fn is_available(&self) -> bool {
        self.state() != AvailabilityState::Unavailable
    }

    /// True when both handles share one signal.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
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
    }
}
