//! Secrets in a `MeshConfig` file never reach the errors about it.
//!
//! A config file holds the Consul token and may hold an API key. A typo
//! near one must not put it into the error message, which ends up in logs
//! and crash reports (issue 19, row 8: toml quoted the whole offending
//! line).
//!
//! Input: one mode byte (format: `% 3` -> TOML, YAML, JSON; bit 2: the
//! secret is the Consul token, else a service's inline API key), then the
//! text before the secret's line, a `0` byte, and the text after it. The
//! document is `before`, the secret's line (`token = "<secret>"` in the
//! format's syntax), then `after`.
//!
//! Contract: when the secret appears in the document exactly once, a
//! `ConfigError::Parse` never contains it (nor a 10-character piece of
//! it), and an accepted config never serializes it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_stack::{ConfigError, MeshConfig};

/// Long and unusual enough that the fuzzer does not write it by chance.
const SECRET: &str = "Zq9-SECRET-v4lu3-8KxP2mW7";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let (before, after) = rest.split_once('\0').unwrap_or((rest, ""));
    let token = mode & 4 != 0;
    let line = match (mode % 3, token) {
        (0, true) => format!("token = \"{SECRET}\""),
        (0, false) => format!("api_key = {{ key = {{ value = \"{SECRET}\" }} }}"),
        (1, true) => format!("token: \"{SECRET}\""),
        (1, false) => format!("api_key: {{ key: {{ value: \"{SECRET}\" }} }}"),
        (_, true) => format!("\"token\": \"{SECRET}\""),
        (_, false) => format!("\"api_key\": {{ \"key\": {{ \"value\": \"{SECRET}\" }} }}"),
    };
    let document = format!("{before}\n{line}\n{after}");
    if document.matches(SECRET).count() != 1 {
        return;
    }
    let parsed = match mode % 3 {
        0 => MeshConfig::from_toml_str(&document),
        1 => MeshConfig::from_yaml_str(&document),
        _ => MeshConfig::from_json_str(&document),
    };
    match parsed {
        Err(err @ ConfigError::Parse { .. }) => {
            let text = format!("{err} {err:?}");
            assert!(!text.contains(SECRET), "secret in a parse error: {text}");
            for piece in SECRET.as_bytes().windows(10) {
                let piece = std::str::from_utf8(piece).unwrap_or_default();
                assert!(!text.contains(piece), "part of the secret in: {text}");
            }
        }
        Err(_) => {}
        Ok(config) => {
            for printed in [config.to_toml_string(), config.to_json_string()] {
                if let Ok(printed) = printed {
                    assert!(!printed.contains(SECRET), "secret serialized: {printed}");
                }
            }
            assert!(!format!("{config:?}").contains(SECRET), "secret in Debug");
        }
    }
});
