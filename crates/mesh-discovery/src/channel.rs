//! A source fed by the program itself.
//!
//! For programs that learn endpoints their own way (a config file watcher, a
//! custom registry, a control plane) and want the rest of mesh (snapshots,
//! `Discover`, the router) to follow. [`ChannelSource`] publishes whole sets
//! or single changes; it deduplicates on content like every source.
//!
//! # Example
//!
//! ```
//! use mesh_core::Endpoint;
//! use mesh_discovery::ChannelSource;
//!
//! let (source, discovery) = ChannelSource::new("users");
//! source.insert(Endpoint::from_address("10.0.0.1:80".parse()?));
//! source.insert(Endpoint::from_address("10.0.0.2:80".parse()?));
//! source.remove(&"10.0.0.1:80".into());
//! assert_eq!(discovery.current().len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use mesh_core::{Endpoint, EndpointKey};

use crate::error::DiscoveryError;
use crate::source::{Discovery, EndpointSet, Publisher};

/// The writing side of a channel source. Dropping it (and every
/// [`Discovery`]) ends the [`Changes`](crate::discover::Changes) streams.
#[derive(Debug)]
pub struct ChannelSource {
    publisher: Publisher,
}

impl ChannelSource {
    /// A new, empty source named `name` (for logs) and its reading side.
    pub fn new(name: &str) -> (Self, Discovery) {
        let (publisher, discovery) =
            Publisher::new(format!("channel:{name}"), EndpointSet::empty());
        (Self { publisher }, discovery)
    }

    /// Replaces the whole set. Returns false when the content was the same
    /// (nothing published).
    pub fn set(&self, endpoints: impl IntoIterator<Item = Endpoint>) -> bool {
        let changed = self.publisher.publish(endpoints.into_iter().collect()).1;
        self.publisher.record_success();
        changed
    }

    /// Adds an endpoint, or replaces the one with the same key.
    pub fn insert(&self, endpoint: Endpoint) -> bool {
        let mut all = self.publisher.current().endpoints().to_vec();
        all.push(endpoint);
        self.set(all)
    }

    /// Removes the endpoint with this key.
    pub fn remove(&self, key: &EndpointKey) -> bool {
        let current = self.publisher.current();
        self.set(current.iter().filter(|e| e.key() != key).cloned())
    }

    /// Reports that the program's own discovery failed: the set is kept and
    /// the failure shows in [`Discovery::health`].
    pub fn fail(&self, message: impl Into<String>) {
        self.publisher
            .record_failure(DiscoveryError::new(crate::error::ErrorKind::Other, message));
    }

    /// Another reading handle.
    pub fn discovery(&self) -> Discovery {
        self.publisher.discovery()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_insert_remove_and_fail() {
        let (src, d) = ChannelSource::new("x");
        let a = Endpoint::from_address("10.0.0.1:1".parse().unwrap());
        assert!(src.set([a.clone()]));
        assert!(!src.set([a.clone()]));
        assert!(src.insert(a.clone().with_weight(5)));
        assert_eq!(d.current().endpoints()[0].weight(), 5);
        src.fail("registry down");
        assert_eq!(d.current().len(), 1, "fail static");
        assert_eq!(d.health().consecutive_failures(), 1);
        assert!(src.remove(a.key()));
        assert!(d.current().is_empty());
        assert!(d.health().is_healthy());
    }
}
