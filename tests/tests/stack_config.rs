//! `MeshConfig` files as users write them, loaded and turned into stacks.

use mesh_stack::{ConfigError, Mesh, MeshConfig};

#[test]
fn a_config_file_with_many_mistakes_reports_them_all_at_once() {
    let text = r#"
        [services.users]
        discovery = { kind = "static", endpoints = [] }
        attempt_timeout = "0s"
        retry = { max_retries = 500, budget = { retry_ratio = -1.0 } }
        breaker = { half_open_max_calls = 0 }
        balance = { max_ejection_percent = 101 }

        [services.orders]
        discovery = { kind = "consul", wait = "1h" }
    "#;
    let ConfigError::Invalid(err) = MeshConfig::from_toml_str(text).unwrap_err() else {
        panic!("expected a validation error")
    };
    let paths: Vec<&str> = err
        .errors()
        .iter()
        .map(mesh_stack::core::config::FieldError::path)
        .collect();
    for p in [
        "services.users.discovery.endpoints",
        "services.users.attempt_timeout",
        "services.users.retry.max_retries",
        "services.users.retry.budget.retry_ratio",
        "services.users.breaker.half_open_max_calls",
        "services.users.balance.max_ejection_percent",
        "services.orders.discovery.wait",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
}

#[tokio::test]
async fn the_demo_config_builds_a_mesh() {
    let config = MeshConfig::from_toml_str(examples::demo::DEMO_CONFIG).unwrap();
    let mesh = Mesh::new(config).unwrap();
    assert!(mesh.service_config("users").is_ok());
}

#[test]
fn the_readme_config_reference_parses_and_validates() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("### Config reference")
        .nth(1)
        .expect("README has a config reference");
    let block = section
        .split("```toml")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block");
    let config = MeshConfig::from_toml_str(block).unwrap();
    let users = &config.services["users"];
    assert_eq!(users.retry.max_retries, 3);
    assert_eq!(users.balance.max_ejection_percent, 50);
    // `[consul]` is an example there (the default reads the environment);
    // mesh-stack's tests/readme_config.rs checks every default and example.
    assert!(config.consul.is_none());
}
