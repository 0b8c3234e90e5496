//! Property tests for `MeshConfig` files: any text fails only with a typed
//! `ConfigError` and never panics; generated configs survive a round trip
//! through TOML, YAML and JSON; a field set out of range is reported by its
//! full path. The cargo-fuzz target `fuzz/fuzz_targets/mesh_config.rs`
//! explores the same contract further.

#![cfg(all(feature = "toml", feature = "yaml", feature = "json"))]

use std::time::Duration;

use mesh_core::Endpoint;
use mesh_stack::{ConfigError, ConsulSourceConfig, MeshConfig, ServiceConfig, Strategy as Balance};
use proptest::prelude::*;

fn parse_all(text: &str) -> [Result<MeshConfig, ConfigError>; 3] {
    [
        MeshConfig::from_toml_str(text),
        MeshConfig::from_yaml_str(text),
        MeshConfig::from_json_str(text),
    ]
}

fn typed(r: &Result<MeshConfig, ConfigError>) -> bool {
    match r {
        Ok(c) => c.validate().is_ok(),
        Err(ConfigError::Parse { .. } | ConfigError::Invalid(_)) => true,
        Err(_) => false,
    }
}

fn millis(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Duration> {
    range.prop_map(Duration::from_millis)
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        prop_oneof![
            any::<std::net::IpAddr>().prop_map(|ip| ip.to_string()),
            "[a-z][a-z0-9-]{0,8}[a-z0-9](\\.[a-z0-9]{1,6}){0,2}",
        ],
        1u16..,
        0u32..1000,
        proptest::collection::vec("[a-z0-9]{1,6}", 0..3),
    )
        .prop_map(|(host, port, weight, tags)| {
            Endpoint::from_address(mesh_core::Address::host(&host, port).unwrap())
                .with_weight(weight)
                .with_tags(tags)
        })
}

/// A valid service: every generated value is inside its documented range.
fn service() -> impl Strategy<Value = ServiceConfig> {
    let discovery = prop_oneof![
        proptest::collection::vec(endpoint(), 1..4).prop_map(ServiceConfig::with_static),
        (
            proptest::option::of("[a-z][a-z0-9-]{0,10}"),
            proptest::collection::vec("[a-z0-9]{1,6}", 0..3),
            any::<bool>(),
            1u64..=600,
        )
            .prop_map(|(service, tags, passing_only, wait)| {
                ServiceConfig::with_consul(ConsulSourceConfig {
                    service,
                    tags,
                    passing_only,
                    wait: Duration::from_secs(wait),
                    ..ConsulSourceConfig::default()
                })
            }),
    ];
    (
        discovery,
        millis(1..=300_000),
        millis(1..=3_600_000),
        0u32..=100,
        // Above the default `min_attempt_time` (10ms), which must be shorter.
        proptest::option::of(millis(11..=60_000)),
        (1u32..50).prop_map(Some), // `None` needs a window: no trip policy otherwise
        prop::sample::select(vec![
            Balance::P2cPeakEwma,
            Balance::LeastOutstanding,
            Balance::RoundRobin,
        ]),
    )
        .prop_map(
            |(mut s, ready, attempt, retries, deadline, consecutive, strategy)| {
                s.ready_timeout = ready;
                s.attempt_timeout = attempt;
                s.retry.max_retries = retries;
                s.retry.deadline = deadline;
                s.breaker.consecutive_failures = consecutive;
                s.balance.strategy = strategy;
                s
            },
        )
}

fn config() -> impl Strategy<Value = MeshConfig> {
    proptest::collection::btree_map("[a-zA-Z0-9_-]{1,12}", service(), 0..4).prop_map(|services| {
        MeshConfig {
            services,
            ..MeshConfig::default()
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_text_never_panics_and_errors_are_typed(text in ".{0,200}") {
        for r in parse_all(&text) {
            prop_assert!(typed(&r), "{r:?}");
        }
    }

    #[test]
    fn config_shaped_text_never_panics(
        text in "(\\[services\\.[a-z]{1,3}(\\.(retry|breaker|balance|discovery))?\\]\n|[a-z_]{1,16} = (\"[a-z0-9. ]{0,8}\"|-?[0-9]{1,22}|[0-9]\\.[0-9]+|true|\\[\\]|\\{\\})\n){0,8}",
    ) {
        prop_assert!(typed(&MeshConfig::from_toml_str(&text)));
    }

    #[test]
    fn generated_configs_validate_and_round_trip(c in config()) {
        prop_assert!(c.validate().is_ok(), "{:?}", c.validate());
        let toml = c.to_toml_string().unwrap();
        prop_assert_eq!(&MeshConfig::from_toml_str(&toml).unwrap(), &c);
        let yaml = c.to_yaml_string().unwrap();
        prop_assert_eq!(&MeshConfig::from_yaml_str(&yaml).unwrap(), &c);
        let json = c.to_json_string().unwrap();
        prop_assert_eq!(&MeshConfig::from_json_str(&json).unwrap(), &c);
    }

    #[test]
    fn an_out_of_range_field_is_reported_by_its_path(
        c in config().prop_filter("needs a service", |c| !c.services.is_empty()),
        which in 0usize..4,
        pick in any::<prop::sample::Index>(),
    ) {
        let name = pick.get(&c.services.keys().cloned().collect::<Vec<_>>()).clone();
        let mut bad = c.clone();
        let s = bad.services.get_mut(&name).unwrap();
        let field = match which {
            0 => { s.retry.max_retries = 101; "retry.max_retries" }
            1 => { s.attempt_timeout = Duration::ZERO; "attempt_timeout" }
            2 => { s.ready_timeout = Duration::from_secs(301); "ready_timeout" }
            _ => { s.balance.max_ejection_percent = 101; "balance.max_ejection_percent" }
        };
        let text = bad.to_toml_string().unwrap();
        let Err(ConfigError::Invalid(e)) = MeshConfig::from_toml_str(&text) else {
            panic!("`{field}` out of range was accepted:\n{text}");
        };
        let path = format!("services.{name}.{field}");
        prop_assert!(e.errors().iter().any(|f| f.path() == path), "{path} not in {e}");
    }

    #[test]
    fn mutated_files_never_panic(
        c in config(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..6),
    ) {
        for text in [c.to_toml_string().unwrap(), c.to_yaml_string().unwrap(), c.to_json_string().unwrap()] {
            let mut chars: Vec<char> = text.chars().collect();
            if chars.is_empty() {
                continue;
            }
            for (at, ch) in &edits {
                let at = at.index(chars.len());
                chars[at] = *ch;
            }
            let text: String = chars.into_iter().collect();
            for r in parse_all(&text) {
                prop_assert!(typed(&r), "{r:?}");
            }
        }
    }
}
