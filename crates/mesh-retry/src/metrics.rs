//! Counters through the `metrics` facade (feature `metrics`); no-ops without it.
//!
//! - `mesh_retry_requests_total`: logical requests seen.
//! - `mesh_retry_retries_total`: retries sent.
//! - `mesh_retry_requeues_total`: requeues sent (requests that never reached
//!   a server, sent again at once).
//! - `mesh_retry_budget_exhausted_total`: retries refused by the budget.
//! - `mesh_retry_give_ups_total{reason}`: retryable failures not retried, by
//!   [`GiveUp`] reason (a fixed, small label set).

use crate::policy::GiveUp;

#[inline]
pub(crate) fn request() {
    #[cfg(feature = "metrics")]
    metrics::counter!("mesh_retry_requests_total").increment(1);
}

#[inline]
pub(crate) fn retry() {
    #[cfg(feature = "metrics")]
    metrics::counter!("mesh_retry_retries_total").increment(1);
}

#[inline]
pub(crate) fn requeue() {
    #[cfg(feature = "metrics")]
    metrics::counter!("mesh_retry_requeues_total").increment(1);
}

#[inline]
pub(crate) fn give_up(why: GiveUp) {
    #[cfg(feature = "metrics")]
    {
        if why == GiveUp::Budget {
            metrics::counter!("mesh_retry_budget_exhausted_total").increment(1);
        }
        metrics::counter!("mesh_retry_give_ups_total", "reason" => why.as_str()).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = why;
}
