//! How a [`Balancer`](crate::Balancer) chooses: the strategy and its knobs.
//!
//! Every field has a default that suits most services; [`BalanceConfig::validate`]
//! checks each against its allowed range and names every bad one.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mesh_balance::{BalanceConfig, Strategy};
//!
//! let config = BalanceConfig {
//!     strategy: Strategy::WeightedRoundRobin,
//!     slow_start_window: Duration::from_secs(30),
//!     ..BalanceConfig::default()
//! };
//! assert!(config.validate().is_ok());
//!
//! let bad = BalanceConfig { max_ejection_percent: 120, ..BalanceConfig::default() };
//! let err = bad.validate().unwrap_err();
//! assert_eq!(err.errors()[0].path(), "max_ejection_percent");
//! ```

use std::time::Duration;

use mesh_core::config::InvalidConfig;

use crate::outlier::OutlierConfig;

/// Which endpoint a pick chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Strategy {
    /// Power of two choices over a peak-EWMA latency estimate: draw two
    /// endpoints at random, send to the one with the lower
    /// `latency × (in-flight + 1) / weight`. Failures record a penalised
    /// latency and server pushback adds a penalty, so an endpoint that fails
    /// fast does not attract traffic. The default.
    #[default]
    P2cPeakEwma,
    /// The endpoint with the fewest requests in flight per unit of weight:
    /// exact for small sets, power of two choices for large ones.
    LeastOutstanding,
    /// Each endpoint in turn, ignoring weights.
    RoundRobin,
    /// Each endpoint in proportion to its weight, interleaved smoothly (a
    /// weight-5 endpoint does not get five requests in a row).
    WeightedRoundRobin,
    /// A random endpoint, in proportion to its weight.
    Random,
}

/// The balancer's configuration. Durations serialize in humantime form
/// (`"10s"`, `"250ms"`) with the `serde` feature.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BalanceConfig {
    /// How an endpoint is chosen. Default [`Strategy::P2cPeakEwma`].
    pub strategy: Strategy,
    /// The largest share of the endpoints (with a weight above zero) that may
    /// be skipped at once because their breaker marked them unavailable,
    /// 0..=100. Past it, further "ejected" endpoints keep taking traffic
    /// (panic mode) rather than sending all load to a few; the last endpoint
    /// is never ejected. 0 disables ejection. Default 50 (Envoy's
    /// `max_ejection_percent`).
    pub max_ejection_percent: u8,
    /// How long a new or re-admitted endpoint takes to ramp its effective
    /// weight up to its full weight (Envoy's `slow_start_window`). Zero turns
    /// slow start off; at most 1 hour. Default zero. Endpoints of the very
    /// first set never ramp: there is nobody to protect them from.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub slow_start_window: Duration,
    /// The effective weight, in percent of the full weight, an endpoint starts
    /// its slow start with, 1..=100. Default 10.
    pub slow_start_min_weight_percent: u8,
    /// The time constant of the latency EWMA: a sample's influence fades by
    /// a factor e every `ewma_decay`, and an idle endpoint's estimate decays
    /// towards zero at that pace so it is tried again. 1ms..=10min, default 10s
    /// (Linkerd's and Finagle's).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ewma_decay: Duration,
    /// The latency an endpoint is assumed to have before its first
    /// response when no endpoint of the set was measured yet; once some are,
    /// a new endpoint starts from the median of their estimates instead (see
    /// the [crate docs](crate)). 1µs..=1min, default 30ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub default_rtt: Duration,
    /// The latency a failed call is recorded with when it failed faster than
    /// that, so an endpoint that fails fast looks slow instead of fast. Zero
    /// records failures at their real latency (plain peak-EWMA); at most 5
    /// minutes. Default 1s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub failure_penalty: Duration,
    /// Success-rate outlier detection: endpoints that fail well more often
    /// than their peers are ejected (within `max_ejection_percent`). On by
    /// default; see [`OutlierConfig`].
    pub outlier: OutlierConfig,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            max_ejection_percent: 50,
            slow_start_window: Duration::ZERO,
            slow_start_min_weight_percent: 10,
            ewma_decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            failure_penalty: Duration::from_secs(1),
            outlier: OutlierConfig::default(),
        }
    }
}

impl BalanceConfig {
    /// Checks every field against its allowed range and names each bad one.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if self.max_ejection_percent > 100 {
            errors.push(
                "max_ejection_percent",
                format!("must be in 0..=100 (got {})", self.max_ejection_percent),
            );
        }
        if self.slow_start_window > Duration::from_secs(3600) {
            errors.push(
                "slow_start_window",
                format!("must be at most 1h (got {:?})", self.slow_start_window),
            );
        }
        if !(1..=100).contains(&self.slow_start_min_weight_percent) {
            errors.push(
                "slow_start_min_weight_percent",
                format!(
                    "must be in 1..=100 (got {})",
                    self.slow_start_min_weight_percent
                ),
            );
        }
        if self.ewma_decay < Duration::from_millis(1) || self.ewma_decay > Duration::from_secs(600)
        {
            errors.push(
                "ewma_decay",
                format!("must be in 1ms..=10min (got {:?})", self.ewma_decay),
            );
        }
        if self.default_rtt < Duration::from_micros(1) || self.default_rtt > Duration::from_secs(60)
        {
            errors.push(
                "default_rtt",
                format!("must be in 1µs..=1min (got {:?})", self.default_rtt),
            );
        }
        if self.failure_penalty > Duration::from_secs(300) {
            errors.push(
                "failure_penalty",
                format!("must be at most 5min (got {:?})", self.failure_penalty),
            );
        }
        errors.merge_nested("outlier", self.outlier.validate());
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(BalanceConfig::default().validate(), Ok(()));
    }

    #[test]
    fn names_every_bad_field() {
        let bad = BalanceConfig {
            strategy: Strategy::Random,
            max_ejection_percent: 101,
            slow_start_window: Duration::from_secs(7200),
            slow_start_min_weight_percent: 0,
            ewma_decay: Duration::ZERO,
            default_rtt: Duration::from_secs(120),
            failure_penalty: Duration::from_secs(301),
            outlier: OutlierConfig::default(),
        };
        let err = bad.validate().unwrap_err();
        let paths: Vec<_> = err
            .errors()
            .iter()
            .map(mesh_core::config::FieldError::path)
            .collect();
        assert_eq!(
            paths,
            [
                "max_ejection_percent",
                "slow_start_window",
                "slow_start_min_weight_percent",
                "ewma_decay",
                "default_rtt",
                "failure_penalty"
            ]
        );
        assert!(err.to_string().contains("must be in 0..=100 (got 101)"));
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_humantime_and_snake_case() {
        let c: BalanceConfig = serde_json::from_str(
            r#"{"strategy":"weighted_round_robin","slow_start_window":"30s","ewma_decay":"5s"}"#,
        )
        .unwrap();
        assert_eq!(c.strategy, Strategy::WeightedRoundRobin);
        assert_eq!(c.slow_start_window, Duration::from_secs(30));
        assert_eq!(c.ewma_decay, Duration::from_secs(5));
        assert_eq!(c.max_ejection_percent, 50);
        let back: BalanceConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<BalanceConfig>(r#"{"strategy":"fastest"}"#).is_err());
        assert!(serde_json::from_str::<BalanceConfig>(r#"{"unknown":1}"#).is_err());
    }
}
