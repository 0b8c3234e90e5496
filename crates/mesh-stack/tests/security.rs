//! Secrets in a mesh config file stay out of the errors about it.
#![cfg(all(feature = "toml", feature = "json", feature = "yaml"))]

use mesh_stack::{ConfigError, MeshConfig};

const TOKEN: &str = "s3cr3t-consul-token-0123456789";

fn parse_message(err: ConfigError) -> String {
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    err.to_string()
}

#[test]
fn a_typo_on_the_token_line_does_not_print_the_token() {
    // Row 8 of issue 19: toml's error quoted the whole line, token included.
    for line in [
        format!("token = \"{TOKEN}\" x"),
        format!("token = \"{TOKEN}"),
        format!("token = {TOKEN}"),
        format!("token: \"{TOKEN}\""),
        format!("token = [\"{TOKEN}\"]"),
        format!("tokn = \"{TOKEN}\""),
    ] {
        let text = format!("[consul]\naddress = \"http://127.0.0.1:8500\"\n{line}\n");
        let message = parse_message(MeshConfig::from_toml_str(&text).unwrap_err());
        assert!(!message.contains(TOKEN), "{line}: {message}");
        assert!(!message.contains("s3cr3t"), "{line}: {message}");
        assert!(message.contains("line 3"), "{line}: {message}");
    }
}

#[test]
fn quoted_values_are_never_echoed_in_json_or_yaml() {
    let json = format!(r#"{{ "consul": {{ "token": ["{TOKEN}"] }} }}"#);
    let message = parse_message(MeshConfig::from_json_str(&json).unwrap_err());
    assert!(!message.contains(TOKEN), "{message}");
    let json = format!(r#"{{ "services": {{ "a": {{ "discovery": {{ "kind": "{TOKEN}" }} }} }} }}"#);
    let message = parse_message(MeshConfig::from_json_str(&json).unwrap_err());
    assert!(!message.contains(TOKEN), "{message}");
    let yaml = format!("consul:\n  token: [\"{TOKEN}\"]\n");
    let message = parse_message(MeshConfig::from_yaml_str(&yaml).unwrap_err());
    assert!(!message.contains(TOKEN), "{message}");
}
