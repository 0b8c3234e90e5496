//! Counters through the `metrics` facade (feature `metrics`); no-ops without it.
//!
//! Every series carries `service`: the name given with
//! [`RetryLayer::named`](crate::RetryLayer::named) (mesh-stack names each
//! service's layer), `unnamed` otherwise. Handles are registered once, at
//! the policy's first call, with the recorder in effect then.
//!
//! - `mesh_retry_requests_total{service}`: logical requests seen.
//! - `mesh_retry_retries_total{service, reason}`: retries sent, by what the
//!   failed attempt returned: `status` (a response classified as a failure)
//!   or `error` (a transport or timeout error).
//! - `mesh_retry_requeues_total{service}`: requeues sent (requests that never
//!   reached a server, sent again at once).
//! - `mesh_retry_budget_exhausted_total{service}`: retries refused by the budget.
//! - `mesh_retry_give_ups_total{service, reason}`: retryable failures not
//!   retried, by [`GiveUp`] reason (a fixed, small label set).
//!
//! Cardinality: services × (1 + 2 + 1 + 1 + 6).

use crate::policy::GiveUp;

/// The cached handles of one policy (and its clones).
#[derive(Clone)]
pub(crate) struct Metrics {
    #[cfg(feature = "metrics")]
    inner: std::sync::Arc<Handles>,
}

#[cfg(feature = "metrics")]
struct Handles {
    requests: metrics::Counter,
    retries_status: metrics::Counter,
    retries_error: metrics::Counter,
    requeues: metrics::Counter,
    budget_exhausted: metrics::Counter,
    give_ups: [metrics::Counter; GiveUp::ALL.len()],
}

impl Metrics {
    /// Registers the handles for `service`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(service: Option<&str>) -> Self {
        #[cfg(feature = "metrics")]
        {
            let service = service.unwrap_or("unnamed").to_owned();
            let s = || service.clone();
            Self {
                inner: std::sync::Arc::new(Handles {
                    requests: metrics::counter!("mesh_retry_requests_total", "service" => s()),
                    retries_status: metrics::counter!("mesh_retry_retries_total", "service" => s(), "reason" => "status"),
                    retries_error: metrics::counter!("mesh_retry_retries_total", "service" => s(), "reason" => "error"),
                    requeues: metrics::counter!("mesh_retry_requeues_total", "service" => s()),
                    budget_exhausted: metrics::counter!("mesh_retry_budget_exhausted_total", "service" => s()),
                    give_ups: GiveUp::ALL.map(|why| {
                        metrics::counter!("mesh_retry_give_ups_total", "service" => s(), "reason" => why.as_str())
                    }),
                }),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    #[inline]
    pub(crate) fn request(&self) {
        #[cfg(feature = "metrics")]
        self.inner.requests.increment(1);
    }

    /// A retry after a failed response (`status`) or an error.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn retry(&self, status: bool) {
        #[cfg(feature = "metrics")]
        if status {
            self.inner.retries_status.increment(1);
        } else {
            self.inner.retries_error.increment(1);
        }
    }

    #[inline]
    pub(crate) fn requeue(&self) {
        #[cfg(feature = "metrics")]
        self.inner.requeues.increment(1);
    }

    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn give_up(&self, why: GiveUp) {
        #[cfg(feature = "metrics")]
        {
            if why == GiveUp::Budget {
                self.inner.budget_exhausted.increment(1);
            }
            self.inner.give_ups[why as usize].increment(1);
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}
