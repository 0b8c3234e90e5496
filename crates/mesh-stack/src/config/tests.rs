use std::time::Duration;

use super::*;
use mesh_balance::Strategy;

fn paths(err: &InvalidConfig) -> Vec<&str> {
    err.errors()
        .iter()
        .map(mesh_core::config::FieldError::path)
        .collect()
}

fn sample() -> MeshConfig {
    let mut orders = ServiceConfig::with_consul(ConsulSourceConfig {
        tags: vec!["v2".into()],
        ..ConsulSourceConfig::default()
    });
    orders.attempt_timeout = Duration::from_millis(500);
    orders.retry.max_retries = 2;
    orders.retry.deadline = Some(Duration::from_secs(2));
    orders.balance.strategy = Strategy::LeastOutstanding;
    orders.breaker.consecutive_failures = Some(3);
    MeshConfig::new()
        .service(
            "users",
            ServiceConfig::with_static([
                Endpoint::from_address("127.0.0.1:8081".parse().unwrap()),
                Endpoint::from_address("127.0.0.1:8082".parse().unwrap()).with_weight(3),
            ]),
        )
        .service("orders", orders)
}

#[test]
fn defaults_are_sane_and_valid_once_endpoints_are_named() {
    let s = ServiceConfig::new();
    assert_eq!(s.attempt_timeout, DEFAULT_ATTEMPT_TIMEOUT);
    assert_eq!(s.ready_timeout, DEFAULT_READY_TIMEOUT);
    assert_eq!(s.retry.max_retries, 3);
    assert_eq!(
        s.endpoint_breaker_config().open_behavior,
        OpenBehavior::Report
    );
    sample().validate().unwrap();
    MeshConfig::new().validate().unwrap();
}

#[test]
fn a_service_without_endpoints_is_named() {
    let c = MeshConfig::new().service("users", ServiceConfig::new());
    let err = c.validate().unwrap_err();
    assert_eq!(paths(&err), ["services.users.discovery.endpoints"]);
}

#[test]
fn every_bad_field_is_reported_by_its_full_path() {
    let mut c = sample();
    let users = c.services.get_mut("users").unwrap();
    users.retry.max_retries = 1000;
    users.retry.backoff.multiplier = 0.5;
    users.breaker.half_open_max_calls = 0;
    users.balance.max_ejection_percent = 200;
    users.attempt_timeout = Duration::ZERO;
    users.ready_timeout = Duration::from_secs(3600);
    let orders = c.services.get_mut("orders").unwrap();
    orders.discovery = DiscoveryConfig::Consul(ConsulSourceConfig {
        service: Some(" ".into()),
        tags: vec![String::new()],
        wait: Duration::ZERO,
        ..ConsulSourceConfig::default()
    });
    let err = c.validate().unwrap_err();
    let p = paths(&err);
    for expected in [
        "services.users.retry.max_retries",
        "services.users.retry.backoff.multiplier",
        "services.users.breaker.half_open_max_calls",
        "services.users.balance.max_ejection_percent",
        "services.users.attempt_timeout",
        "services.users.ready_timeout",
        "services.orders.discovery.service",
        "services.orders.discovery.tags[0]",
        "services.orders.discovery.wait",
    ] {
        assert!(p.contains(&expected), "{expected} missing from {p:?}");
    }
    assert!(err.to_string().contains("must be at most 100"), "{err}");
}

#[test]
fn bad_service_names_and_consul_agent_are_reported() {
    let mut c = sample();
    let users = c.services.remove("users").unwrap();
    c.services.insert("bad name!".into(), users);
    c.consul = Some(ConsulConfig::new(""));
    let err = c.validate().unwrap_err();
    let p = paths(&err);
    assert!(p.contains(&"services.bad name!"), "{p:?}");
    assert!(p.iter().any(|p| p.starts_with("consul.")), "{p:?}");
}

#[test]
fn a_port_zero_endpoint_is_reported() {
    let c = MeshConfig::new().service(
        "users",
        ServiceConfig::with_static([Endpoint::from_address("127.0.0.1:0".parse().unwrap())]),
    );
    let err = c.validate().unwrap_err();
    assert_eq!(
        paths(&err),
        ["services.users.discovery.endpoints[0].address"]
    );
}

#[cfg(feature = "toml")]
#[test]
fn toml_round_trips_and_reads_the_documented_form() {
    let c = sample();
    let text = c.to_toml_string().unwrap();
    assert_eq!(MeshConfig::from_toml_str(&text).unwrap(), c);

    let doc = r#"
        [services.users.discovery]
        kind = "static"
        endpoints = [{ address = "127.0.0.1:8081" }, { address = "127.0.0.1:8082" }]

        [services.orders]
        discovery = { kind = "consul", tags = ["v2"] }
        attempt_timeout = "500ms"
        retry = { max_retries = 2, deadline = "2s" }
        breaker = { consecutive_failures = 3, recovery_timeout = "5s" }
        balance = { strategy = "least_outstanding" }
    "#;
    let c = MeshConfig::from_toml_str(doc).unwrap();
    let orders = &c.services["orders"];
    assert_eq!(orders.attempt_timeout, Duration::from_millis(500));
    assert_eq!(orders.retry.deadline, Some(Duration::from_secs(2)));
    assert_eq!(orders.breaker.recovery_timeout, Duration::from_secs(5));
    assert_eq!(orders.balance.strategy, Strategy::LeastOutstanding);
    assert_eq!(
        orders.ready_timeout, DEFAULT_READY_TIMEOUT,
        "defaults fill the rest"
    );
}

#[cfg(feature = "toml")]
#[test]
fn toml_errors_are_typed_and_never_panic() {
    for bad in [
        "services = 3",
        "[services.users]\nunknown_field = 1",
        "[services.users]\nattempt_timeout = \"soon\"",
        "[services.users.discovery]\nkind = \"carrier-pigeon\"",
        "[[[",
    ] {
        let err = MeshConfig::from_toml_str(bad).unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse { format: "toml", .. }),
            "{bad}: {err}"
        );
    }
    let err = MeshConfig::from_toml_str("[services.users.retry]\nmax_retries = 1000").unwrap_err();
    let ConfigError::Invalid(invalid) = err else {
        panic!("expected Invalid, got {err}")
    };
    assert_eq!(
        paths(&invalid),
        [
            "services.users.discovery.endpoints",
            "services.users.retry.max_retries"
        ]
    );
}

#[cfg(feature = "yaml")]
#[test]
fn yaml_round_trips() {
    let c = sample();
    let text = c.to_yaml_string().unwrap();
    assert_eq!(MeshConfig::from_yaml_str(&text).unwrap(), c);
    let doc = "services:\n  users:\n    discovery:\n      kind: static\n      endpoints:\n        - address: 127.0.0.1:9000\n    attempt_timeout: 250ms\n";
    let c = MeshConfig::from_yaml_str(doc).unwrap();
    assert_eq!(
        c.services["users"].attempt_timeout,
        Duration::from_millis(250)
    );
    assert!(matches!(
        MeshConfig::from_yaml_str("services: [1, 2"),
        Err(ConfigError::Parse { format: "yaml", .. })
    ));
}

#[cfg(feature = "json")]
#[test]
fn json_round_trips() {
    let c = sample();
    let text = c.to_json_string().unwrap();
    assert_eq!(MeshConfig::from_json_str(&text).unwrap(), c);
    assert!(matches!(
        MeshConfig::from_json_str(
            "{\"services\": {\"users\": {\"retry\": {\"max_retries\": -1}}}}"
        ),
        Err(ConfigError::Parse { format: "json", .. })
    ));
}

#[cfg(all(feature = "toml", feature = "json"))]
#[test]
fn from_path_picks_the_format_by_extension() {
    let dir = std::env::temp_dir().join(format!("mesh-stack-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = sample();
    let toml_path = dir.join("mesh.toml");
    std::fs::write(&toml_path, c.to_toml_string().unwrap()).unwrap();
    assert_eq!(MeshConfig::from_path(&toml_path).unwrap(), c);
    let json_path = dir.join("mesh.json");
    std::fs::write(&json_path, c.to_json_string().unwrap()).unwrap();
    assert_eq!(MeshConfig::from_path(&json_path).unwrap(), c);
    let ini = dir.join("mesh.ini");
    std::fs::write(&ini, "").unwrap();
    assert!(matches!(
        MeshConfig::from_path(&ini),
        Err(ConfigError::UnsupportedFormat(e)) if e == "ini"
    ));
    assert!(matches!(
        MeshConfig::from_path(dir.join("missing.toml")),
        Err(ConfigError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn duplicate_static_endpoints_are_named_by_their_index() {
    let c = MeshConfig::new().service(
        "users",
        ServiceConfig::with_static([
            Endpoint::from_address("127.0.0.1:8081".parse().unwrap()),
            Endpoint::from_address("127.0.0.1:8082".parse().unwrap()),
            Endpoint::from_address("127.0.0.1:8081".parse().unwrap()).with_weight(3),
            // Another key, the same place: double traffic to one server.
            Endpoint::new("users-b", "127.0.0.1:8082".parse().unwrap()),
        ]),
    );
    let err = c.validate().unwrap_err();
    assert_eq!(
        paths(&err),
        [
            "services.users.discovery.endpoints[2]",
            "services.users.discovery.endpoints[3]"
        ]
    );
    let reasons: Vec<_> = err
        .errors()
        .iter()
        .map(mesh_core::config::FieldError::reason)
        .collect();
    assert!(
        reasons[0].starts_with("duplicates endpoints[0]"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("duplicates endpoints[1]: the same address 127.0.0.1:8082"),
        "{reasons:?}"
    );
}

#[cfg(feature = "toml")]
#[test]
fn duplicate_endpoints_in_a_file_are_an_error_naming_the_path() {
    let text = r#"
        [services.users.discovery]
        kind = "static"
        endpoints = [
            { address = "127.0.0.1:8081" },
            { address = "127.0.0.1:8082" },
            { address = "127.0.0.1:8081", weight = 5 },
        ]
    "#;
    let ConfigError::Invalid(err) = MeshConfig::from_toml_str(text).unwrap_err() else {
        panic!("expected Invalid")
    };
    assert_eq!(paths(&err), ["services.users.discovery.endpoints[2]"]);
}

#[test]
fn a_max_pushback_the_classifiers_cannot_see_past_is_refused() {
    let mut s =
        ServiceConfig::with_static([Endpoint::from_address("127.0.0.1:8081".parse().unwrap())]);
    s.retry.max_pushback = Duration::from_secs(300);
    let err = MeshConfig::new()
        .service("users", s)
        .validate()
        .unwrap_err();
    assert_eq!(paths(&err), ["services.users.retry.max_pushback"]);
    assert!(err.to_string().contains("must be below 5min"), "{err}");
}

#[cfg(all(feature = "toml", feature = "yaml", feature = "json"))]
#[test]
fn parse_errors_name_the_field_path_in_every_format() {
    let cases: [(&str, &str, &str); 3] = [
        (
            "toml",
            "[services.users]\nattempt_timeout = \"soon\"\n[services.users.retry]\nmax_retries = -1\n",
            "services.users.attempt_timeout",
        ),
        (
            "yaml",
            "services:\n  users:\n    retry:\n      backoff:\n        cap: soon\n",
            "services.users.retry.backoff.cap",
        ),
        (
            "json",
            r#"{"services": {"users": {"breaker": {"half_open_max_calls": "three"}}}}"#,
            "services.users.breaker.half_open_max_calls",
        ),
    ];
    for (format, text, want) in cases {
        let err = match format {
            "toml" => MeshConfig::from_toml_str(text),
            "yaml" => MeshConfig::from_yaml_str(text),
            _ => MeshConfig::from_json_str(text),
        }
        .unwrap_err();
        let ConfigError::Parse { path, .. } = &err else {
            panic!("{format}: expected Parse, got {err}")
        };
        assert_eq!(path.as_deref(), Some(want), "{format}: {err}");
        assert!(err.to_string().contains(&format!("at `{want}`")), "{err}");
    }
    // The same mistake in each format: the same path.
    let toml = "[services.users.retry]\nmax_retries = \"3\"\n";
    let yaml = "services:\n  users:\n    retry:\n      max_retries: \"3\"\n";
    let json = r#"{"services":{"users":{"retry":{"max_retries":"3"}}}}"#;
    for err in [
        MeshConfig::from_toml_str(toml).unwrap_err(),
        MeshConfig::from_yaml_str(yaml).unwrap_err(),
        MeshConfig::from_json_str(json).unwrap_err(),
    ] {
        let ConfigError::Parse { path, .. } = &err else {
            panic!("expected Parse, got {err}")
        };
        assert_eq!(
            path.as_deref(),
            Some("services.users.retry.max_retries"),
            "{err}"
        );
    }
    // A syntax error before any field has no path, and still a location;
    // one inside a field names it.
    let err = MeshConfig::from_json_str("{\"services\": ").unwrap_err();
    assert!(err.to_string().contains("at `services`: EOF"), "{err}");
    let err = MeshConfig::from_json_str("nonsense").unwrap_err();
    assert!(
        matches!(&err, ConfigError::Parse { path: None, .. }),
        "{err}"
    );
}

#[cfg(all(feature = "toml", feature = "yaml", feature = "json"))]
#[test]
fn errors_inside_a_discovery_source_name_their_path() {
    let toml = "[services.users.discovery]\nkind = \"static\"\nendpoints = [{ address = \"127.0.0.1:1\" }, { address = \"nope\" }]\n";
    let yaml = "services:\n  users:\n    discovery:\n      kind: static\n      endpoints:\n        - address: 127.0.0.1:1\n        - address: nope\n";
    let json = r#"{"services":{"users":{"discovery":{"endpoints":[{"address":"127.0.0.1:1"},{"address":"nope"}],"kind":"static"}}}}"#;
    for err in [
        MeshConfig::from_toml_str(toml).unwrap_err(),
        MeshConfig::from_yaml_str(yaml).unwrap_err(),
        MeshConfig::from_json_str(json).unwrap_err(),
    ] {
        let ConfigError::Parse { path, .. } = &err else {
            panic!("expected Parse, got {err}")
        };
        assert_eq!(
            path.as_deref(),
            Some("services.users.discovery.endpoints[1].address"),
            "{err}"
        );
    }
    // TOML still points at the line.
    let err = MeshConfig::from_toml_str(toml).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");

    let err = MeshConfig::from_toml_str(
        "[services.users.discovery]\nkind = \"consul\"\nwait = \"soon\"\n",
    )
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Parse { path: Some(p), .. } if p == "services.users.discovery.wait"),
        "{err}"
    );
    // Fields of the other kind, unknown fields and a missing kind are errors.
    for bad in [
        "[services.users.discovery]\nkind = \"static\"\nendpoints = []\nwait = \"5s\"\n",
        "[services.users.discovery]\nkind = \"consul\"\nendpoints = []\n",
        "[services.users.discovery]\nkind = \"static\"\nendpoints = []\nendpoint = 1\n",
        "[services.users.discovery]\nendpoints = []\n",
        "[services.users.discovery]\nkind = \"static\"\n",
    ] {
        assert!(
            matches!(
                MeshConfig::from_toml_str(bad),
                Err(ConfigError::Parse { .. })
            ),
            "{bad}"
        );
    }
    // Every Consul field reads back.
    let c = MeshConfig::new().service(
        "users",
        ServiceConfig::with_consul(ConsulSourceConfig {
            service: Some("users-v2".into()),
            tags: vec!["v2".into()],
            datacenter: Some("dc2".into()),
            passing_only: false,
            wait: Duration::from_secs(30),
            min_interval: Duration::from_secs(5),
            burst: 3,
        }),
    );
    for text in [c.to_toml_string().unwrap(), c.to_json_string().unwrap()] {
        let back = MeshConfig::from_toml_str(&text).or_else(|_| MeshConfig::from_json_str(&text));
        assert_eq!(back.unwrap(), c, "{text}");
    }
    assert_eq!(
        MeshConfig::from_yaml_str(&c.to_yaml_string().unwrap()).unwrap(),
        c
    );
}
