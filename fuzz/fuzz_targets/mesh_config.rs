//! `MeshConfig` files: TOML, YAML or JSON written by people and tools.
//!
//! The first byte picks the format (`t`: TOML, `y`: YAML, `j`: JSON, any
//! other: its value modulo 3), the rest is the text.
//!
//! Contract: parsing never panics and fails only with a typed `ConfigError`;
//! an accepted config validates again, yields its router and breaker
//! settings, and survives a round trip through its own format and through
//! JSON unchanged (except the Consul token, which is never serialized); a
//! config with an inline secret (API key `value`, PEM private key) prints
//! with it redacted, and that print does not parse back.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_stack::{ConfigError, MeshConfig};

#[derive(Clone, Copy, Debug)]
enum Format {
    Toml,
    Yaml,
    Json,
}

fn parse(format: Format, text: &str) -> Result<MeshConfig, ConfigError> {
    match format {
        Format::Toml => MeshConfig::from_toml_str(text),
        Format::Yaml => MeshConfig::from_yaml_str(text),
        Format::Json => MeshConfig::from_json_str(text),
    }
}

fn print(format: Format, config: &MeshConfig) -> Result<String, ConfigError> {
    match format {
        Format::Toml => config.to_toml_string(),
        Format::Yaml => config.to_yaml_string(),
        Format::Json => config.to_json_string(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let format = match first {
        b't' => Format::Toml,
        b'y' => Format::Yaml,
        b'j' => Format::Json,
        b => [Format::Toml, Format::Yaml, Format::Json][usize::from(b % 3)],
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let config = match parse(format, text) {
        Ok(config) => config,
        Err(ConfigError::Parse { .. } | ConfigError::Invalid(_)) => return,
        Err(e) => panic!("unexpected error kind from a string parser: {e:?}"),
    };

    config
        .validate()
        .expect("an accepted config validates again");
    for service in config.services.values() {
        let _ = service.router_config();
        service
            .endpoint_breaker_config()
            .validate()
            .expect("the mesh's breaker settings of an accepted config validate");
    }

    // Inline secrets (an API key's `value`, a PEM private key) are written
    // out as `"[redacted]"`, which reads back as an error, never as a
    // secret: such a config cannot round-trip, and must not.
    let inline_secret = config.services.values().any(|s| {
        s.api_key
            .as_ref()
            .is_some_and(|k| matches!(k.key, mesh_auth::SecretSource::Value(_)))
    }) || config.tls.as_ref().is_some_and(|t| {
        [&t.ca, &t.cert, &t.key]
            .into_iter()
            .chain(t.trust_bundles.values())
            .any(|p| matches!(p, mesh_auth::tls::PemSource::Pem(text) if text.contains("PRIVATE KEY")))
    });
    if inline_secret {
        for to in [format, Format::Json] {
            if let Ok(text) = print(to, &config) {
                assert!(
                    parse(to, &text).is_err(),
                    "a redacted secret read back\n{text}"
                );
            }
        }
        return;
    }
    let mut expected = config.clone();
    if let Some(consul) = &mut expected.consul {
        consul.token = None;
    }
    for to in [format, Format::Json] {
        let text = print(to, &config)
            .unwrap_or_else(|e| panic!("an accepted config prints as {to:?}: {e}"));
        let again =
            parse(to, &text).unwrap_or_else(|e| panic!("printed {to:?} parses again: {e}\n{text}"));
        assert_eq!(again, expected, "{to:?} round trip\n{text}");
    }
});
