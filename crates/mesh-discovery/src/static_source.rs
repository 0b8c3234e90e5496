//! A fixed list of endpoints, from code or config.
//!
//! Useful for development, for services behind a stable load-balancer address,
//! and for tests. The set never changes and the source is always healthy.
//!
//! # Example
//!
//! ```
//! use mesh_core::Endpoint;
//! use mesh_discovery::{StaticConfig, StaticSource};
//!
//! let config = StaticConfig {
//!     endpoints: vec![
//!         Endpoint::from_address("10.0.0.1:8080".parse()?),
//!         Endpoint::from_address("db.internal:5432".parse()?).with_weight(2),
//!     ],
//! };
//! let discovery = StaticSource::from_config(&config).discovery();
//! assert_eq!(discovery.current().len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use mesh_core::{Address, Endpoint};

use crate::source::{Discovery, EndpointSet, Publisher};

/// Config for a [`StaticSource`]: a list of endpoints.
///
/// With the `serde` feature each entry is an [`Endpoint`] in its serde form
/// (`{ address = "10.0.0.1:80", weight = 2, tags = [..] }`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct StaticConfig {
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A source whose endpoints never change.
#[derive(Debug)]
pub struct StaticSource {
    publisher: Publisher,
}

impl StaticSource {
    /// A source with these endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        let (publisher, _) = Publisher::new("static", EndpointSet::empty());
        publisher.publish(endpoints.into_iter().collect());
        publisher.record_success();
        Self { publisher }
    }

    /// A source with one endpoint per address, each keyed by its address.
    pub fn from_addresses(addresses: impl IntoIterator<Item = Address>) -> Self {
        Self::new(addresses.into_iter().map(Endpoint::from_address))
    }

    /// A source from config.
    pub fn from_config(config: &StaticConfig) -> Self {
        Self::new(config.endpoints.iter().cloned())
    }

    /// A handle on the endpoints. The handle keeps working after the source is
    /// dropped (the set simply never changes).
    pub fn discovery(&self) -> Discovery {
        self.publisher.discovery()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_sets_are_ready_at_once() {
        let src = StaticSource::from_addresses(["10.0.0.1:1".parse().unwrap()]);
        let d = src.discovery();
        drop(src);
        assert_eq!(d.current().len(), 1);
        assert_eq!(d.current().version(), 1);
        assert!(d.health().is_healthy());
    }

    #[cfg(feature = "serde")]
    #[test]
    fn config_parses_and_rejects_bad_addresses() {
        let c: StaticConfig = serde_json::from_str(
            r#"{"endpoints":[{"address":"10.0.0.1:80","weight":2},{"address":"api.local:443"}]}"#,
        )
        .unwrap();
        assert_eq!(c.endpoints[0].weight(), 2);
        let e = serde_json::from_str::<StaticConfig>(r#"{"endpoints":[{"address":"nope:99999"}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
    }
}
