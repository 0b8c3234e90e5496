//! The README's config reference tells the truth: its block of defaults
//! (between `<!-- config-defaults -->` markers) lists every field of a
//! service's config with exactly the value `ServiceConfig::default()` has,
//! and every example in the README's comments parses.

#![cfg(feature = "toml")]

use mesh_stack::{MeshConfig, ServiceConfig};

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));

/// The TOML inside the README's ```toml fence between the markers.
fn defaults_block() -> &'static str {
    let start = README
        .find("<!-- config-defaults -->")
        .expect("README has a <!-- config-defaults --> marker");
    let rest = &README[start..];
    let fence = rest
        .find("```toml\n")
        .expect("a toml fence after the marker")
        + "```toml\n".len();
    let len = rest[fence..].find("```").expect("the fence closes");
    &rest[fence..fence + len]
}

#[test]
fn the_readme_defaults_are_service_config_default() {
    let block = defaults_block();
    let config = MeshConfig::from_toml_str(block).unwrap();
    let users = &config.services["users"];
    let expected = ServiceConfig {
        discovery: users.discovery.clone(),
        ..ServiceConfig::default()
    };
    assert_eq!(users, &expected, "a value marked as a default is not one");

    // And every field is there: the block's `services.users` table, less its
    // discovery, is the serialized default, key for key.
    let mut readme: toml::Table = toml::from_str(block).unwrap();
    let mut readme_users = readme["services"]["users"].as_table().unwrap().clone();
    readme_users.remove("discovery");
    let mut default_users = toml::Table::try_from(&expected).unwrap();
    default_users.remove("discovery");
    assert_eq!(
        readme_users,
        default_users,
        "the README's defaults should read:\n{}",
        toml::to_string_pretty(&default_users).unwrap()
    );
    readme.remove("services");
    assert!(
        readme.is_empty(),
        "only services.users in the defaults block"
    );
}

#[test]
fn the_readme_examples_parse() {
    // `# example: key = value` lines are real config for the table they sit
    // in: each is merged into the defaults block and the result validated.
    let block = defaults_block();
    let base: toml::Table = toml::from_str(block).unwrap();
    let mut path: Vec<String> = Vec::new();
    let mut checked = 0;
    for line in block.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.split(']').next().unwrap();
            path = header.split('.').map(str::to_owned).collect();
        }
        let Some(example) = line.strip_prefix("# example: ") else {
            continue;
        };
        let example: toml::Table = toml::from_str(example)
            .unwrap_or_else(|e| panic!("README example `{example}` is not TOML: {e}"));
        let mut doc = base.clone();
        let mut table = &mut doc;
        for key in &path {
            table = table
                .entry(key.clone())
                .or_insert_with(|| toml::Table::new().into())
                .as_table_mut()
                .unwrap();
        }
        table.extend(example.clone());
        let text = toml::to_string(&doc).unwrap();
        if let Err(e) = MeshConfig::from_toml_str(&text) {
            panic!(
                "README example `{example}` under [{}] is refused: {e}",
                path.join(".")
            );
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} examples found");
}
