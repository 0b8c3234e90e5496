//! Choosing an endpoint: load-aware balancing strategies with per-endpoint
//! load and health accounting, and no I/O.
//!
//! # Why
//!
//! A client that spreads requests evenly over a service's instances sends as
//! much to a slow or failing instance as to a healthy one. Round robin is
//! fair and blind: a replica that answers in 500 ms gets the same share as one
//! that answers in 5 ms, and the requests queue behind it. Choosing the least
//! loaded instance fixes that, but looking at every instance on every request
//! costs O(n) and makes every client herd onto the same "best" instance.
//!
//! The *power of two choices* (p2c) gets nearly all of the benefit at O(1):
//! draw two instances at random and send to the less loaded. Load is
//! measured as Linkerd and Finagle do, with a **peak-EWMA** latency estimate
//! multiplied by the requests in flight: the estimate jumps up at once on a
//! slow response and comes down gradually, so a slowing instance is avoided
//! immediately. Plain peak-EWMA has one known weakness: an instance that
//! *fails fast* (a 503 in 1 ms) looks like the fastest of all and attracts
//! more traffic. Here a failure is recorded as at least a configurable
//! penalty latency, and server pushback (`Retry-After`) penalises the
//! instance until its delay passes, so failing fast never pays.
//!
//! Two more refinements keep identical replicas sharing calls at low
//! concurrency, where the estimates are mostly noise:
//!
//! - **Cold endpoints start from their peers.** An endpoint no call has
//!   measured is estimated at the *median* of its measured peers' estimates
//!   (`default_rtt` only while nobody is measured), and the median of its
//!   first three successful responses replaces that guess (the first call on
//!   a new connection pays for its setup: it is not the endpoint's peak). A fixed guess (Linkerd's and Finagle's
//!   `default_rtt`) makes the first replica measured on a fast network win
//!   every comparison against the cold ones for seconds; the median (rather
//!   than the mean) is not lifted by one failing peer recorded at the failure
//!   penalty, and (rather than the lowest, or Finagle's cost 0 for a new
//!   node) does not make a cold and slow newcomer win every comparison until
//!   it answers. The guess is refreshed when an update adds endpoints and
//!   when the number of measured endpoints doubles, never per pick.
//! - **Idle look-alikes take turns.** When neither candidate has a request
//!   in flight, estimates within a factor of 2 count as equal and the one
//!   measured longer ago wins: one slow response (a cold connection, a
//!   scheduling hiccup) no longer sends every sequential call to the other
//!   replica for the seconds the peak takes to decay; and a slower response
//!   to a call that had the endpoint to itself moves its estimate half way
//!   (a second one confirms it). A replica more than twice as slow is still
//!   avoided, and with requests in flight the plain comparison decides.
//!
//! Around the strategies sit the protections Envoy taught the industry:
//!
//! - **One owner of ejection**: an endpoint whose health signal (the
//!   [`Availability`] its breaker publishes into)
//!   says unavailable is skipped, but never more than `max_ejection_percent`
//!   of the set at once and never the last endpoint; past the cap the
//!   balancer is in *panic mode* and the rest keep taking traffic instead of
//!   every call failing locally. Breakers only count and trip; whether an
//!   endpoint gets traffic is decided here.
//! - **Gray failures**: success-rate outlier detection ([`OutlierConfig`],
//!   on by default) compares each endpoint's success rate with the median of
//!   its peers once per interval and ejects the ones well below it, within
//!   the same cap, for a time that grows with repeated ejections.
//! - **Slow start**: a new or re-admitted endpoint ramps its effective weight
//!   up over `slow_start_window` instead of taking a full share cold.
//! - **Retry elsewhere**: a pick avoids the endpoints the request already
//!   tried ([`TriedEndpoints`]) while any other
//!   can be chosen.
//!
//! # How
//!
//! A [`Balancer`] holds the current endpoint set as an immutable snapshot
//! behind an `ArcSwap`: [`Balancer::update`] builds a new one (keeping the
//! accounting of endpoints that stay) and swaps it in; [`Balancer::pick`]
//! reads it without a lock, chooses, and returns a [`LoadGuard`] that counts
//! the request in flight until [`LoadGuard::record`] (or drop). Everything a
//! strategy needs from the set (the weighted-random alias table, the smooth
//! WRR schedule, the ejection cap) is computed at update time, so a pick is
//! O(1) for p2c, least outstanding and random, and O(1) amortised for round
//! robin and smooth WRR, and allocates nothing. Per-pick randomness comes
//! from `fastrand`'s thread-local generator (seed it with `fastrand::seed`
//! in tests).
//!
//! A caller that picks often from one place (the discovery router's
//! services, a worker) takes a [`Picker`] from [`Balancer::picker`]: it
//! caches the set and sees every update at once, with one plain atomic load
//! per pick instead of the `ArcSwap` load (two atomic read-modify-writes).
//!
//! What a p2c peak-EWMA pick + record costs, and why: two reads of the
//! clock (`tokio::time::Instant`, when the request started and when it
//! ended), one atomic increment and one decrement (the guard's reference,
//! which is the in-flight count), two relaxed increments of the outlier
//! detector's counters, and a few dozen instructions: one random number
//! gives both candidates, the latency sample is stored without a
//! compare-and-swap loop, and the decay of an idle endpoint's estimate
//! calls `exp` only when it was idle for more than a thousandth of the
//! decay time.
//!
//! The crate does no I/O and knows no discovery source or service type: the
//! discovery router feeds it endpoints and maps each pick to the endpoint's
//! own stack ([`LoadGuard::slot`] says where the endpoint sits in the set).
//!
//! # Example
//!
//! ```
//! use mesh_balance::{BalanceConfig, Balancer, Strategy};
//! use mesh_core::{Endpoint, Outcome, TriedEndpoints};
//!
//! let balancer = Balancer::new(BalanceConfig {
//!     strategy: Strategy::P2cPeakEwma,
//!     ..BalanceConfig::default()
//! })?;
//! balancer.update([
//!     Endpoint::new("users-1", "10.0.0.1:8080".parse()?),
//!     Endpoint::new("users-2", "10.0.0.2:8080".parse()?),
//! ]);
//!
//! // First attempt.
//! let tried = TriedEndpoints::new();
//! let guard = balancer.pick(Some(&tried)).expect("two endpoints");
//! tried.record(guard.key());
//! // ... send the request to guard.endpoint().address(), then:
//! guard.record(Outcome::retryable());
//!
//! // The retry goes to the other endpoint.
//! let retry = balancer.pick(Some(&tried)).unwrap();
//! assert!(!tried.contains(retry.key()));
//! retry.record(Outcome::Success);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! - `serde`: `Serialize`/`Deserialize` for [`BalanceConfig`], durations in
//!   humantime form (`"10s"`).
//! - `metrics`: `mesh_balance_picks_total{service, endpoint}` (counter;
//!   `endpoint` is the endpoint's address, never its discovery id),
//!   `mesh_balance_endpoints{service}`,
//!   `mesh_balance_ejected_endpoints{service}` and
//!   `mesh_balance_panic_mode{service}` (gauges), and
//!   `mesh_attempt_duration_seconds{service}` (histogram: each attempt's
//!   latency, to the end of its response when the router records at end of
//!   stream; p2c peak-EWMA only, the strategy that reads the clock anyway).
//!   Labels are bounded by the endpoint set (services × endpoint
//!   addresses); no request data.
//!
//! Tracing events: endpoint set updated (info), endpoint added/removed
//! (debug), ejected and panic mode (warn), re-admitted and panic mode over
//! (info), pushback (debug).

#![cfg_attr(docsrs, feature(doc_cfg))]

mod balancer;
pub mod config;
mod guard;
pub mod outlier;
mod pick;
mod snapshot;
mod state;

pub use balancer::{Balancer, BalancerStats, EndpointStats, Picker, SetChanges};
pub use config::{BalanceConfig, Strategy};
pub use guard::LoadGuard;
pub use outlier::OutlierConfig;

// The mesh-core vocabulary this crate's API speaks.
pub use mesh_core::config::InvalidConfig;
pub use mesh_core::{Address, Availability, Endpoint, EndpointKey, Outcome, TriedEndpoints};
