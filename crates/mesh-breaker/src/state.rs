//! The shared state machine: one `Arc`, all atomics on the call path.
//!
//! The state and a generation counter share one `AtomicU64` (the *word*):
//! the low byte is the [`CircuitState`], the rest counts transitions. A call
//! remembers the word it was admitted under and its result counts only if the
//! word is unchanged when it finishes, so a slow call admitted while closed
//! cannot close a half-open breaker, and a probe from an earlier half-open
//! period cannot vote in this one.
//!
//! Transitions are rare and take a small mutex (for the backoff session); the
//! word itself is only ever changed under it, after re-checking that it is
//! still the word the caller saw. A call in the closed state never takes it.
//!
//! Half-open probe permits are slots in an array of atomics, taken with a
//! compare-exchange from 0 to a stamp (start time in milliseconds and a
//! ticket). A finished probe gives its slot back with a compare-exchange from
//! its own stamp to 0; a probe older than the probe timeout loses its slot to
//! the next caller that finds every slot taken. So at most
//! `half_open_max_calls` probes are ever in flight, across all clones, and a
//! hung probe cannot wedge the breaker.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mesh_core::backoff::{Backoff, BackoffSession, Jitter};
use mesh_core::pushback::Pushback;
use mesh_core::{Availability, AvailabilityState, Outcome};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{BreakerConfig, OpenBehavior, SlowCallConfig};
use crate::error::BreakerOpen;
use crate::events::{BreakerEvent, Listener, TransitionReason};
use crate::window::{Padded, Snapshot, Window};

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CircuitState {
    /// Calls go through and are counted.
    Closed = 0,
    /// Calls are refused until the open period ends.
    Open = 1,
    /// A limited number of probe calls go through; their results decide.
    HalfOpen = 2,
    /// Refuses every call until [`reset`](crate::CircuitBreakerHandle::reset).
    ForcedOpen = 3,
    /// Lets every call through and counts nothing until reset.
    ForcedClosed = 4,
    /// Lets every call through and counts them, but never trips.
    Disabled = 5,
}

impl CircuitState {
    const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            4 => Self::ForcedClosed,
            _ => Self::Disabled,
        }
    }

    /// True when calls go through without limit (closed, forced closed, disabled).
    pub const fn admits_all(self) -> bool {
        matches!(self, Self::Closed | Self::ForcedClosed | Self::Disabled)
    }

    /// A short lowercase name, for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
            Self::Disabled => "disabled",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[inline]
const fn pack(generation: u64, state: CircuitState) -> u64 {
    generation << 8 | state as u64
}

#[inline]
pub(crate) const fn state_of(word: u64) -> CircuitState {
    CircuitState::from_u8(word as u8)
}

#[inline]
const fn generation_of(word: u64) -> u64 {
    word >> 8
}

/// `d` in nanoseconds, saturating (a `u64` holds 584 years).
fn as_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The probe slot stamp: start millisecond + 1 (never 0) and a ticket that
/// makes two probes started in the same millisecond distinct.
const TICKET_BITS: u32 = 24;

/// What the call path is allowed to do.
#[derive(Debug)]
pub(crate) enum Admit {
    /// Go ahead; count the result if the word is still `word` at the end.
    Closed { word: u64 },
    /// Go ahead as a half-open probe.
    Probe(ProbePermit),
    /// Refused.
    Rejected(BreakerOpen),
    /// Would be refused, but the breaker only reports
    /// ([`OpenBehavior::Report`]): go ahead, uncounted.
    Bypass,
}

/// The numbers the state machine decides with, copied out of the config.
#[derive(Debug)]
struct Policy {
    consecutive: Option<u32>,
    minimum_calls: u32,
    failure_rate: Option<f64>,
    slow: Option<SlowCallConfig>,
    recovery: Duration,
    max_open: Duration,
    probe_timeout_ms: u64,
    half_open_max: u32,
    behavior: OpenBehavior,
}

#[derive(Debug)]
struct Cold {
    backoff: BackoffSession,
    /// Trips since the breaker was last closed: repeated trips back off.
    trips: u32,
}

/// What every call reads, on one cache line: the word (written only by
/// transitions) and constants.
#[derive(Debug)]
struct Hot {
    word: AtomicU64,
    /// Bit `s` set: a success in state `s` may need no reference to the
    /// breaker (see [`Shared::success_is_noop`]). 0 with a slow-call policy.
    lite_states: u8,
    /// Calls note their start time (slow-call policy).
    needs_start: bool,
    /// A consecutive-failures policy is on.
    consecutive: bool,
    /// The configuration: read-only, so it shares the line at no cost
    /// (inline in `Shared` it made every endpoint's breaker 128 bytes
    /// larger, issue 23).
    policy: Policy,
}

/// The state every clone of one breaker shares.
#[derive(Debug)]
pub(crate) struct Shared {
    hot: Padded<Hot>,
    consecutive: Padded<AtomicU32>,
    /// Boxed: a window is several cache lines, and most breakers (the
    /// mesh's default, consecutive failures only) have none, so inline it
    /// would cost every endpoint ~400 bytes for nothing (issue 23); a
    /// windowed breaker pays one pointer chase per call.
    window: Option<Box<Window>>,
    open_until: AtomicU64,
    probe_successes: AtomicU32,
    probes: Box<[AtomicU64]>,
    ticket: AtomicU64,
    epoch: Instant,
    availability: Availability,
    notify: Arc<Notify>,
    /// Boxed: touched on transitions only.
    cold: Box<Mutex<Cold>>,
    listener: Option<Listener>,
    name: Option<Arc<str>>,
    /// The endpoint's address, for a breaker a router built for one
    /// endpoint: what logs and metrics call it (never its volatile id).
    endpoint: Option<Arc<str>>,
    #[cfg(feature = "metrics")]
    metrics: crate::metrics::Metrics,
}

/// Who a breaker is, for its logs and metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct Labels {
    /// The breaker's name (`service`, or `service/endpoint-key` in a router).
    pub(crate) name: Option<Arc<str>>,
    /// The service it belongs to (the `service` metrics label).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) service: Option<Arc<str>>,
    /// The endpoint's address, inside a router (the `endpoint` label).
    pub(crate) endpoint: Option<Arc<str>>,
}

impl Shared {
    /// A new breaker.
    pub(crate) fn new_arc(
        config: &BreakerConfig,
        availability: Availability,
        listener: Option<Listener>,
        labels: Labels,
    ) -> Arc<Self> {
        Arc::new(Self::new(config, availability, listener, labels))
    }

    fn new(
        config: &BreakerConfig,
        availability: Availability,
        listener: Option<Listener>,
        labels: Labels,
    ) -> Self {
        let window = config.window.as_ref();
        let policy = Policy {
            consecutive: config.consecutive_failures,
            minimum_calls: window.map_or(1, |w| w.minimum_calls.max(1)),
            failure_rate: window.and_then(|w| w.failure_rate),
            slow: window.and_then(|w| w.slow_call),
            recovery: config.recovery_timeout,
            max_open: config.max_open_time.max(config.recovery_timeout),
            probe_timeout_ms: (config.probe_timeout.as_millis().min(u128::from(u32::MAX)) as u64)
                .max(1),
            half_open_max: config.half_open_max_calls.max(1),
            behavior: config.open_behavior,
        };
        let backoff = Backoff::new(
            config.recovery_timeout,
            config.open_backoff_multiplier,
            policy.max_open,
        )
        .with_jitter(Jitter::Full);
        availability.set(AvailabilityState::Available);
        let needs_start = policy.slow.is_some();
        let half_open_max = policy.half_open_max;
        // Forced closed counts nothing; closed and disabled count, so their
        // successes are no-ops only while the counters are quiet.
        let lite_states = if needs_start {
            0
        } else {
            [
                CircuitState::Closed,
                CircuitState::Disabled,
                CircuitState::ForcedClosed,
            ]
            .iter()
            .fold(0, |bits, &s| bits | 1 << s as u8)
        };
        Self {
            hot: Padded(Hot {
                word: AtomicU64::new(pack(0, CircuitState::Closed)),
                lite_states,
                needs_start,
                consecutive: policy.consecutive.is_some(),
                policy,
            }),
            consecutive: Padded(AtomicU32::new(0)),
            window: window.map(|w| Box::new(Window::new(w))),
            open_until: AtomicU64::new(0),
            probe_successes: AtomicU32::new(0),
            probes: (0..half_open_max).map(|_| AtomicU64::new(0)).collect(),
            ticket: AtomicU64::new(0),
            epoch: Instant::now(),
            availability,
            notify: Arc::new(Notify::new()),
            cold: Box::new(Mutex::new(Cold {
                backoff: backoff.session(),
                trips: 0,
            })),
            listener,
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::Metrics::new(
                labels.service.as_deref().or(labels.name.as_deref()),
                labels.endpoint.as_deref(),
            ),
            name: labels.name,
            endpoint: labels.endpoint,
        }
    }

    // ===== reads =====

    #[inline]
    pub(crate) fn word(&self) -> u64 {
        self.hot.0.word.load(Ordering::Acquire)
    }

    pub(crate) fn state(&self) -> CircuitState {
        state_of(self.word())
    }

    pub(crate) fn availability(&self) -> &Availability {
        &self.availability
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub(crate) fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    pub(crate) fn behavior(&self) -> OpenBehavior {
        self.hot.0.policy.behavior
    }

    pub(crate) fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }

    /// Counts a call let through: in a time window (which counts calls when
    /// they start) and in the `admitted` metric.
    #[inline]
    pub(crate) fn on_admitted(&self) {
        #[cfg(feature = "metrics")]
        self.metrics.admitted.increment(1);
        // Only time windows count on admission; the others skip even the call.
        if let Some(Window::Time(w)) = self.window.as_deref() {
            w.admit();
        }
    }

    /// Whether a success admitted under `word` would change nothing: then the
    /// call's result is looked at only if it fails. Calls that overlap may see the counters in either order
    /// anyway; for calls in sequence this is exact.
    #[inline]
    pub(crate) fn success_is_noop(&self, word: u64) -> bool {
        let hot = &self.hot.0;
        // One test for "no slow-call policy, and a closed-like state".
        if (u32::from(hot.lite_states) >> (word as u8 & 7)) & 1 == 0 {
            return false;
        }
        let quiet = !(hot.consecutive && self.consecutive.0.load(Ordering::Relaxed) != 0)
            && self.window.as_deref().is_none_or(Window::is_saturated);
        quiet || state_of(word) == CircuitState::ForcedClosed
    }

    /// Whether a call must note its start time (only with a slow-call policy).
    #[inline]
    pub(crate) fn needs_start(&self) -> bool {
        self.hot.0.needs_start
    }

    /// `at` in nanoseconds since the breaker was built (no 128-bit math: this
    /// runs once per call with a time window).
    #[inline]
    fn nanos(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }

    fn instant(&self, nanos: u64) -> Instant {
        let at = Duration::from_nanos(nanos);
        self.epoch
            .checked_add(at)
            .unwrap_or_else(|| self.epoch + Duration::from_secs(86_400 * 365 * 30))
    }

    /// The time left in the open period, if the breaker is open.
    pub(crate) fn remaining_open(&self) -> Option<Duration> {
        (self.state() == CircuitState::Open).then(|| {
            let until = self.open_until.load(Ordering::Acquire);
            Duration::from_nanos(until.saturating_sub(self.nanos(Instant::now())))
        })
    }

    /// When a refused caller should look again: the end of the open period, or
    /// the moment the oldest probe's permit expires. `None`: only a transition
    /// (which notifies) can change the answer.
    pub(crate) fn next_change_at(&self) -> Option<Instant> {
        match self.state() {
            CircuitState::Open => Some(self.instant(self.open_until.load(Ordering::Acquire))),
            CircuitState::HalfOpen => self
                .probes
                .iter()
                .map(|s| s.load(Ordering::Acquire))
                .filter(|&v| v != 0)
                .map(|v| ((v >> TICKET_BITS) - 1 + self.hot.0.policy.probe_timeout_ms) * 1_000_000)
                .min()
                .map(|n| self.instant(n)),
            _ => None,
        }
    }

    // ===== admission =====

    /// Decides whether a call may go through now, moving an open breaker whose
    /// open period ended to half-open on the way.
    pub(crate) fn admit(self: &Arc<Self>) -> Admit {
        loop {
            let word = self.word();
            let state = state_of(word);
            match state {
                s if s.admits_all() => return Admit::Closed { word },
                CircuitState::Open => {
                    let now = self.nanos(Instant::now());
                    let until = self.open_until.load(Ordering::Acquire);
                    if now >= until {
                        self.transition(
                            word,
                            CircuitState::HalfOpen,
                            TransitionReason::OpenPeriodElapsed,
                            None,
                        );
                        continue;
                    }
                    return self.reject(state, Some(Duration::from_nanos(until - now)));
                }
                CircuitState::HalfOpen => {
                    if let Some(permit) = self.try_probe(word) {
                        return Admit::Probe(permit);
                    }
                    if self.word() != word {
                        continue;
                    }
                    return self.reject(state, None);
                }
                _ => return self.reject(state, None),
            }
        }
    }

    fn reject(&self, state: CircuitState, remaining: Option<Duration>) -> Admit {
        if self.hot.0.policy.behavior == OpenBehavior::Report {
            return Admit::Bypass;
        }
        tracing::trace!(breaker = self.name.as_deref(), endpoint = self.endpoint.as_deref(), %state, "circuit breaker refused a call");
        #[cfg(feature = "metrics")]
        self.metrics.rejected.increment(1);
        self.emit(|| BreakerEvent::Rejected { state });
        Admit::Rejected(BreakerOpen::new(state, remaining))
    }

    fn try_probe(self: &Arc<Self>, word: u64) -> Option<ProbePermit> {
        let now_ms = self.nanos(Instant::now()) / 1_000_000;
        for pass in 0..2 {
            for (slot, cell) in self.probes.iter().enumerate() {
                if cell.load(Ordering::Acquire) != 0 {
                    continue;
                }
                let ticket = self.ticket.fetch_add(1, Ordering::Relaxed) & ((1 << TICKET_BITS) - 1);
                let stamp = (now_ms + 1) << TICKET_BITS | ticket;
                if cell
                    .compare_exchange(0, stamp, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                let permit = ProbePermit {
                    shared: Arc::clone(self),
                    slot,
                    stamp,
                    word,
                    done: false,
                };
                if self.word() != word {
                    // The period we were admitted for ended meanwhile.
                    drop(permit);
                    return None;
                }
                self.publish();
                return Some(permit);
            }
            if pass == 0 && !self.reclaim_expired(now_ms) {
                break;
            }
        }
        None
    }

    /// Takes back the permits of probes older than the probe timeout.
    fn reclaim_expired(&self, now_ms: u64) -> bool {
        let mut reclaimed = false;
        for cell in &self.probes {
            let stamp = cell.load(Ordering::Acquire);
            if stamp == 0 {
                continue;
            }
            let started = (stamp >> TICKET_BITS) - 1;
            if started + self.hot.0.policy.probe_timeout_ms <= now_ms
                && cell
                    .compare_exchange(stamp, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                reclaimed = true;
                tracing::warn!(
                    breaker = self.name.as_deref(),
                    endpoint = self.endpoint.as_deref(),
                    timeout_ms = self.hot.0.policy.probe_timeout_ms,
                    "half-open probe did not finish within the probe timeout; permit released"
                );
                self.emit(|| BreakerEvent::ProbeTimedOut);
            }
        }
        reclaimed
    }

    // ===== results =====

    /// Counts the result of a call admitted in a closed-like state.
    #[inline]
    pub(crate) fn on_closed_result(&self, word: u64, outcome: Outcome, start: Option<Instant>) {
        let (failure, pushback) = match outcome {
            Outcome::Success => (false, None),
            Outcome::Failure(f) => (true, f.pushback),
            Outcome::Ignored => return,
        };
        let current = self.word();
        if current != word {
            // Admitted under an earlier state: it no longer counts, but a
            // server asking for a longer pause still extends an open period.
            self.extend_open(current, pushback);
            return;
        }
        let state = state_of(word);
        if state == CircuitState::ForcedClosed {
            return;
        }
        let slow = self.is_slow(start);
        #[cfg(feature = "metrics")]
        self.metrics.record(failure, slow);
        let may_trip = state == CircuitState::Closed;
        if let Some(threshold) = self.hot.0.policy.consecutive {
            let c = &self.consecutive.0;
            if failure {
                let count = c.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                if may_trip && count >= threshold {
                    let reason = TransitionReason::ConsecutiveFailures { count, threshold };
                    let pushback = pushback.and_then(Pushback::delay);
                    self.transition(word, CircuitState::Open, reason, pushback);
                    return;
                }
            } else if c.load(Ordering::Relaxed) != 0 {
                // Only write when there is something to clear: in steady state
                // a success is read-only and clones on other cores never
                // fight over this cache line.
                c.store(0, Ordering::Relaxed);
            }
        }
        if let Some(window) = &self.window
            && let Some(snapshot) = window.record(failure, slow)
            && may_trip
            && let Some(reason) = self.rate_reason(snapshot)
        {
            let pushback = pushback.and_then(Pushback::delay);
            self.transition(word, CircuitState::Open, reason, pushback);
        }
    }

    /// Counts the result of a half-open probe.
    pub(crate) fn on_probe_result(
        &self,
        mut permit: ProbePermit,
        outcome: Outcome,
        start: Option<Instant>,
    ) {
        permit.done = true;
        if !permit.release() {
            // Reclaimed after the probe timeout: its vote was given up with it.
            return;
        }
        let current = self.word();
        if current != permit.word {
            self.extend_open(current, outcome.pushback());
            self.publish();
            self.notify.notify_waiters();
            return;
        }
        let slow = self.is_slow(start);
        #[cfg(feature = "metrics")]
        self.metrics.record(outcome.is_failure(), slow);
        match outcome {
            Outcome::Failure(_) => {
                let pushback = outcome.pushback().and_then(Pushback::delay);
                let reason = TransitionReason::ProbeFailed;
                self.transition(current, CircuitState::Open, reason, pushback);
            }
            Outcome::Success if slow => {
                let reason = TransitionReason::ProbeFailed;
                self.transition(current, CircuitState::Open, reason, None);
            }
            Outcome::Success => {
                let count = self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1;
                if count >= self.hot.0.policy.half_open_max {
                    let reason = TransitionReason::ProbesSucceeded { count };
                    self.transition(current, CircuitState::Closed, reason, None);
                } else {
                    self.publish();
                    self.notify.notify_waiters();
                }
            }
            Outcome::Ignored => {
                self.publish();
                self.notify.notify_waiters();
            }
        }
    }

    /// Whether a call that started at `start` (noted only with a slow-call
    /// policy) was slow: the one place a call needs the precise clock.
    fn is_slow(&self, start: Option<Instant>) -> bool {
        let (Some(start), Some(slow)) = (start, self.hot.0.policy.slow) else {
            return false;
        };
        let elapsed = Instant::now().saturating_duration_since(start);
        if elapsed < slow.threshold {
            return false;
        }
        self.emit(|| BreakerEvent::SlowCall {
            elapsed,
            threshold: slow.threshold,
        });
        true
    }

    fn rate_reason(&self, s: Snapshot) -> Option<TransitionReason> {
        if s.calls < self.hot.0.policy.minimum_calls || s.calls == 0 {
            return None;
        }
        let calls = f64::from(s.calls);
        if let Some(threshold) = self.hot.0.policy.failure_rate {
            let rate = f64::from(s.failures) / calls;
            if rate >= threshold {
                return Some(TransitionReason::FailureRate {
                    rate,
                    threshold,
                    calls: s.calls,
                });
            }
        }
        if let Some(slow) = self.hot.0.policy.slow {
            let rate = f64::from(s.slow) / calls;
            if rate >= slow.rate {
                return Some(TransitionReason::SlowCallRate {
                    rate,
                    threshold: slow.rate,
                    calls: s.calls,
                });
            }
        }
        None
    }

    /// Pushback that arrives while the breaker is open keeps it open at least
    /// that long, up to `max_open_time` from now.
    fn extend_open(&self, current: u64, pushback: Option<Pushback>) {
        if let Some(delay) = pushback.and_then(Pushback::delay)
            && state_of(current) == CircuitState::Open
        {
            let delay = delay.min(self.hot.0.policy.max_open);
            let until = self.nanos(Instant::now()).saturating_add(as_nanos(delay));
            if self.open_until.fetch_max(until, Ordering::AcqRel) < until {
                // Move the published deadline too.
                self.publish();
            }
        }
    }

    // ===== transitions =====

    /// Moves from `from` (the word the caller saw) to `to`. Returns false, and
    /// does nothing, if someone else changed the word first.
    pub(crate) fn transition(
        &self,
        from: u64,
        to: CircuitState,
        reason: TransitionReason,
        pushback: Option<Duration>,
    ) -> bool {
        let mut cold = self.cold.lock().unwrap_or_else(PoisonError::into_inner);
        if self.word() != from {
            return false;
        }
        let mut open_for = None;
        match to {
            CircuitState::Open => {
                let mut d = if self.hot.0.policy.behavior == OpenBehavior::Report {
                    // Ejection, as Envoy's outlier detection times it: the
                    // base time multiplied by the consecutive ejections,
                    // capped.
                    self.hot
                        .0
                        .policy
                        .recovery
                        .saturating_mul(cold.trips.saturating_add(1))
                        .min(self.hot.0.policy.max_open)
                } else if cold.trips == 0 {
                    self.hot.0.policy.recovery
                } else {
                    // Repeated trips: recovery plus an exponentially growing,
                    // jittered extra, capped at max_open_time.
                    (self
                        .hot
                        .0
                        .policy
                        .recovery
                        .saturating_add(cold.backoff.next_delay()))
                    .min(self.hot.0.policy.max_open)
                };
                cold.trips = cold.trips.saturating_add(1);
                // Pushback keeps it open longer, never past max_open_time.
                if let Some(p) = pushback
                    && p > d
                {
                    d = p.min(self.hot.0.policy.max_open).max(d);
                }
                let until = self.nanos(Instant::now()).saturating_add(as_nanos(d));
                self.open_until.store(until, Ordering::Release);
                open_for = Some(d);
            }
            CircuitState::HalfOpen => {
                for cell in &self.probes {
                    cell.store(0, Ordering::Release);
                }
                self.probe_successes.store(0, Ordering::Release);
            }
            _ => {
                self.consecutive.0.store(0, Ordering::Relaxed);
                if let Some(w) = &self.window {
                    w.reset();
                }
                if to == CircuitState::Closed || reason == TransitionReason::Manual {
                    cold.trips = 0;
                    cold.backoff.reset();
                }
            }
        }
        self.hot
            .0
            .word
            .store(pack(generation_of(from) + 1, to), Ordering::Release);
        self.publish();
        drop(cold);
        self.announce(state_of(from), to, reason, open_for);
        self.notify.notify_waiters();
        true
    }

    /// Moves to `to` from whatever state the breaker is in.
    pub(crate) fn force(&self, to: CircuitState) {
        loop {
            let word = self.word();
            if state_of(word) == to && to != CircuitState::Closed {
                return;
            }
            if self.transition(word, to, TransitionReason::Manual, None) {
                return;
            }
        }
    }

    fn announce(
        &self,
        from: CircuitState,
        to: CircuitState,
        reason: TransitionReason,
        open_for: Option<Duration>,
    ) {
        let name = self.name.as_deref();
        let endpoint = self.endpoint.as_deref();
        // Transitions are bounded by the open backoff (one trip per open
        // period at most), so these lines cannot flood the log.
        match to {
            CircuitState::Open | CircuitState::ForcedOpen => tracing::warn!(
                breaker = name,
                endpoint,
                %from,
                %to,
                ?open_for,
                "circuit breaker {from} -> {to}: {reason}"
            ),
            _ => tracing::info!(
                breaker = name,
                endpoint,
                %from,
                %to,
                "circuit breaker {from} -> {to}: {reason}"
            ),
        }
        #[cfg(feature = "metrics")]
        self.metrics.transition(from, to);
        self.emit(|| BreakerEvent::Transition { from, to, reason });
    }

    /// Publishes the availability the current state implies, re-reading the
    /// word until no transition slipped in between.
    fn publish(&self) {
        loop {
            let word = self.word();
            let a = match state_of(word) {
                s if s.admits_all() => AvailabilityState::Available,
                CircuitState::HalfOpen => {
                    if self.probes.iter().any(|c| c.load(Ordering::Acquire) == 0) {
                        AvailabilityState::Probing
                    } else {
                        AvailabilityState::Unavailable
                    }
                }
                _ => AvailabilityState::Unavailable,
            };
            let half_open = matches!(state_of(word), CircuitState::HalfOpen);
            match (a, self.next_change_at()) {
                // Nothing polls an endpoint the balancer skips: publish when
                // the open period (or the oldest probe permit) ends, so the
                // signal turns available by itself and the next pick probes.
                // Half-open, it may end sooner: when the probes answer (a
                // router waits for that rather than failing at once).
                (AvailabilityState::Unavailable, Some(at)) if half_open => {
                    self.availability.set_unavailable_at_most_until(at);
                }
                (AvailabilityState::Unavailable, Some(at)) => {
                    self.availability.set_unavailable_until(at);
                }
                _ => self.availability.set(a),
            }
            if self.word() == word {
                return;
            }
        }
    }

    #[inline]
    fn emit(&self, event: impl FnOnce() -> BreakerEvent) {
        if let Some(l) = &self.listener {
            (l.0)(&event());
        }
    }
}

// ===== impl ProbePermit =====

/// One half-open probe's permit. Dropping it (the call's future was dropped)
/// gives the permit back without counting anything.
pub(crate) struct ProbePermit {
    shared: Arc<Shared>,
    slot: usize,
    stamp: u64,
    word: u64,
    done: bool,
}

impl ProbePermit {
    /// Frees the slot if it is still ours (not reclaimed after a timeout).
    fn release(&self) -> bool {
        self.shared.probes[self.slot]
            .compare_exchange(self.stamp, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(feature = "metrics")]
impl Drop for Shared {
    fn drop(&mut self) {
        self.metrics.dropped(self.state());
    }
}

impl Drop for ProbePermit {
    fn drop(&mut self) {
        if !self.done && self.release() {
            self.shared.publish();
            self.shared.notify.notify_waiters();
        }
    }
}

impl fmt::Debug for ProbePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbePermit")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_packs_state_and_generation() {
        let w = pack(41, CircuitState::HalfOpen);
        assert_eq!(state_of(w), CircuitState::HalfOpen);
        assert_eq!(generation_of(w), 41);
        for s in 0..=5u8 {
            assert_eq!(CircuitState::from_u8(s) as u8, s);
        }
        assert!(CircuitState::Disabled.admits_all() && !CircuitState::HalfOpen.admits_all());
        assert_eq!(CircuitState::HalfOpen.to_string(), "half_open");
    }

    fn shared(config: &BreakerConfig) -> Shared {
        Shared::new(config, Availability::new(), None, Labels::default())
    }

    /// The steady-state shortcut: only where a success changes nothing.
    #[test]
    fn a_success_is_a_noop_only_where_it_changes_nothing() {
        use CircuitState::*;
        let s = shared(&BreakerConfig::default());
        let at = |state| pack(7, state);
        for (state, noop) in [
            (Closed, true),
            (Disabled, true),
            (ForcedClosed, true),
            (Open, false),
            (HalfOpen, false),
            (ForcedOpen, false),
        ] {
            assert_eq!(s.success_is_noop(at(state)), noop, "{state}");
        }
        // A failure in a row: the next success must clear it...
        s.consecutive.0.store(1, Ordering::Relaxed);
        assert!(!s.success_is_noop(at(Closed)) && !s.success_is_noop(at(Disabled)));
        // ...except where nothing is counted.
        assert!(s.success_is_noop(at(ForcedClosed)));

        // A count window that is not yet full must count the success.
        let s = shared(&BreakerConfig {
            consecutive_failures: None,
            window: Some(crate::WindowConfig::count(2, 1, 0.5)),
            ..BreakerConfig::default()
        });
        assert!(!s.success_is_noop(at(Closed)));
        for _ in 0..2 {
            s.window.as_ref().unwrap().record(false, false);
        }
        assert!(s.success_is_noop(at(Closed)));

        // A slow-call policy needs every call's start time.
        let s = shared(&BreakerConfig {
            window: Some(
                crate::WindowConfig::count(2, 1, 0.5).with_slow_calls(Duration::from_secs(1), 0.5),
            ),
            ..BreakerConfig::default()
        });
        assert!(s.needs_start());
        for state in [Closed, Disabled, ForcedClosed] {
            assert!(!s.success_is_noop(at(state)), "{state}");
        }
    }
}
