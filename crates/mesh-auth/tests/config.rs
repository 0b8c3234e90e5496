//! The config types read from JSON the way mesh-stack's `MeshConfig` carries them.
#![cfg(feature = "serde")]

use std::time::Duration;

use http::Method;
use mesh_auth::CallerIdentity;
use mesh_auth::apikey::{ApiKeyAuthConfig, ApiKeyHeader, ApiKeySet};
use mesh_auth::authz::{AuthorizationPolicy, Decision};
use mesh_auth::tls::{ClientTlsConfig, PemSource, ServerTlsConfig};
use mesh_auth::{Secret, SecretSource};

#[test]
fn authorization_policy_from_json_defaults_to_deny() {
    let policy: AuthorizationPolicy = serde_json::from_str(
        r#"{ "rules": [
              { "identity": "spiffe://td/orders", "methods": ["GET"], "paths": ["/users"] },
              { "identity": "spiffe://td/admin/*" } ] }"#,
    )
    .unwrap();
    assert_eq!(policy.default, Decision::Deny);
    let p = policy.compile().unwrap();
    let orders = CallerIdentity::spiffe("spiffe://td/orders");
    assert_eq!(
        p.decide(Some(&orders), &Method::GET, "/users/1"),
        Decision::Allow
    );
    assert_eq!(
        p.decide(Some(&orders), &Method::PUT, "/users/1"),
        Decision::Deny
    );

    let bad: AuthorizationPolicy =
        serde_json::from_str(r#"{ "rules": [ { "identity": "apikey:x", "paths": ["users"] } ] }"#)
            .unwrap();
    assert_eq!(
        bad.compile().unwrap_err().errors()[0].path(),
        "rules[0].paths[0]"
    );
}

#[test]
fn api_key_config_holds_hashes_only() {
    let hash = ApiKeySet::hash_hex(&Secret::from("k1-0123456789abcdef"));
    let json = format!(
        r#"{{ "header": "bearer", "keys": [ {{ "identity": "billing", "sha256": "{hash}" }} ] }}"#
    );
    let cfg: ApiKeyAuthConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(cfg.header, ApiKeyHeader::Bearer);
    let set = cfg.key_set().unwrap();
    assert_eq!(
        set.verify(b"k1-0123456789abcdef").unwrap().as_str(),
        "billing"
    );
    let cfg: ApiKeyAuthConfig = serde_json::from_str(r#"{ "keys": [] }"#).unwrap();
    assert_eq!(cfg.header, ApiKeyHeader::default());
    assert!(cfg.validate().is_err());
}

#[test]
fn tls_configs_and_secret_sources_from_json() {
    let client: ClientTlsConfig = serde_json::from_str(
        r#"{ "ca": { "file": "/etc/mesh/ca.pem" },
             "cert": { "file": "/etc/mesh/tls.crt" }, "key": { "file": "/etc/mesh/tls.key" },
             "server_identity": "spiffe://td/users", "reload_interval": "30s" }"#,
    )
    .unwrap();
    assert!(client.verify_hostname);
    assert_eq!(client.reload_interval, Duration::from_secs(30));
    assert_eq!(client.server_identity.as_deref(), Some("spiffe://td/users"));
    client.validate().unwrap();

    let server: ServerTlsConfig = serde_json::from_str(
        r#"{ "client_ca": { "file": "/ca.pem" }, "cert": { "pem": "..." }, "key": { "file": "/k" } }"#,
    )
    .unwrap();
    assert_eq!(server.cert, PemSource::pem("..."));
    assert_eq!(server.reload_interval, Duration::from_secs(10));

    let s: SecretSource = serde_json::from_str(r#"{ "env": "ORDERS_API_KEY" }"#).unwrap();
    assert_eq!(s, SecretSource::Env("ORDERS_API_KEY".into()));
    let v: SecretSource = serde_json::from_str(r#"{ "value": "hunter2" }"#).unwrap();
    // Writing a config back out never writes the secret.
    assert!(!serde_json::to_string(&v).unwrap().contains("hunter2"));
}

#[test]
fn written_configs_never_hold_a_key_and_placeholders_never_read_back_as_one() {
    // Row 9 of issue 19: an inline private key was serialized in clear, and
    // a redacted secret read back as a working key whose value was
    // "[redacted]".
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHUPVDZuSlnD1zVfzFXrb33ijOB1kXzpkzxZPUEwZpmD\n-----END PRIVATE KEY-----\n";
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let server = ServerTlsConfig::new(
        PemSource::pem(CERT),
        PemSource::pem(CERT),
        PemSource::pem(KEY),
    );
    let json = serde_json::to_string(&server).unwrap();
    assert!(!json.contains("MC4CAQAw"), "{json}");
    assert!(
        json.contains("AAAA"),
        "certificates are not secrets: {json}"
    );
    let err = serde_json::from_str::<ServerTlsConfig>(&json).unwrap_err();
    assert!(err.to_string().contains("placeholder"), "{err}");

    let client = ClientTlsConfig::new(PemSource::pem(CERT))
        .with_client_cert(PemSource::pem(CERT), PemSource::pem(KEY));
    let json = serde_json::to_string(&client).unwrap();
    assert!(!json.contains("MC4CAQAw"), "{json}");
    assert!(serde_json::from_str::<ClientTlsConfig>(&json).is_err());

    let secret = SecretSource::Value(Secret::from("sk-live-0123456789abcdef"));
    let json = serde_json::to_string(&secret).unwrap();
    assert_eq!(json, r#"{"value":"[redacted]"}"#);
    assert!(serde_json::from_str::<SecretSource>(&json).is_err());
}
