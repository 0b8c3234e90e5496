//! [`DiscoveryConfig`]'s `Deserialize`, by hand.
//!
//! serde's derive for an internally tagged enum (`kind = "static"`) buffers
//! the whole table before it reads the tag, so an error inside loses its
//! path (`services.users.discovery` instead of
//! `services.users.discovery.endpoints[1].address`) and, in TOML, its line.
//! Reading each field as it comes keeps both. Serialization stays derived.
//!
//! Keep [`FIELDS`] and the match below in step with [`ConsulSourceConfig`]'s
//! fields: the round-trip tests catch a field this misses.

use std::fmt;
use std::time::Duration;

use mesh_core::Endpoint;
use serde::de::{self, MapAccess, Visitor};

use super::{ConsulSourceConfig, DiscoveryConfig};

const FIELDS: &[&str] = &[
    "kind",
    "endpoints",
    "service",
    "tags",
    "datacenter",
    "passing_only",
    "wait",
    "min_interval",
    "burst",
];

#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Static,
    Consul,
}

impl<'de> serde::Deserialize<'de> for DiscoveryConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(DiscoveryVisitor)
    }
}

struct DiscoveryVisitor;

impl<'de> Visitor<'de> for DiscoveryVisitor {
    type Value = DiscoveryConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a discovery table with `kind = \"static\"` or `kind = \"consul\"`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kind = None;
        let mut endpoints: Option<Vec<Endpoint>> = None;
        let mut consul = ConsulSourceConfig::default();
        // The first Consul-only field seen, to refuse it in a static source.
        let mut consul_field = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "kind" => {
                    if kind.is_some() {
                        return Err(de::Error::duplicate_field("kind"));
                    }
                    kind = Some(map.next_value::<Kind>()?);
                }
                "endpoints" => {
                    if endpoints.is_some() {
                        return Err(de::Error::duplicate_field("endpoints"));
                    }
                    endpoints = Some(map.next_value()?);
                }
                "service" => {
                    consul.service = map.next_value()?;
                    consul_field.get_or_insert("service");
                }
                "tags" => {
                    consul.tags = map.next_value()?;
                    consul_field.get_or_insert("tags");
                }
                "datacenter" => {
                    consul.datacenter = map.next_value()?;
                    consul_field.get_or_insert("datacenter");
                }
                "passing_only" => {
                    consul.passing_only = map.next_value()?;
                    consul_field.get_or_insert("passing_only");
                }
                "wait" => {
                    consul.wait = map
                        .next_value::<humantime_serde::Serde<Duration>>()?
                        .into_inner();
                    consul_field.get_or_insert("wait");
                }
                "min_interval" => {
                    consul.min_interval = map
                        .next_value::<humantime_serde::Serde<Duration>>()?
                        .into_inner();
                    consul_field.get_or_insert("min_interval");
                }
                "burst" => {
                    consul.burst = map.next_value()?;
                    consul_field.get_or_insert("burst");
                }
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        match kind {
            None => Err(de::Error::missing_field("kind")),
            Some(Kind::Static) => {
                if let Some(field) = consul_field {
                    return Err(de::Error::custom(format!(
                        "`{field}` belongs to `kind = \"consul\"`, not `static`"
                    )));
                }
                let endpoints = endpoints.ok_or_else(|| de::Error::missing_field("endpoints"))?;
                Ok(DiscoveryConfig::Static { endpoints })
            }
            Some(Kind::Consul) => {
                if endpoints.is_some() {
                    return Err(de::Error::custom(
                        "`endpoints` belongs to `kind = \"static\"`, not `consul`",
                    ));
                }
                Ok(DiscoveryConfig::Consul(consul))
            }
        }
    }
}
