//! A `[consul]` table fills in over Consul's environment field by field: a
//! file that sets only `address` keeps `CONSUL_HTTP_TOKEN` and the rest.
//!
//! The environment is the process's, so the check runs in a child process
//! of this test binary with the variables set (no `set_var` in a threaded
//! test process).

#![cfg(feature = "toml")]

use std::process::Command;

use mesh_stack::MeshConfig;

const CHILD: &str = "MESH_STACK_CONSUL_ENV_CHILD";

#[test]
fn a_consul_table_fills_in_over_the_environment() {
    if std::env::var_os(CHILD).is_some() {
        let config = MeshConfig::from_toml_str(
            "[consul]\naddress = \"http://consul.internal:8500\"\nrequest_timeout = \"3s\"\n",
        )
        .unwrap();
        let consul = config.consul.expect("the table");
        assert_eq!(
            consul.address, "http://consul.internal:8500",
            "the file wins"
        );
        assert_eq!(consul.request_timeout, std::time::Duration::from_secs(3));
        assert_eq!(
            consul
                .token
                .expect("the environment's token is kept")
                .expose(),
            "env-token"
        );
        assert_eq!(consul.namespace.as_deref(), Some("team-a"));
        let config = MeshConfig::from_toml_str("[consul]\ntoken = \"file-token\"\n").unwrap();
        let consul = config.consul.unwrap();
        assert_eq!(consul.token.unwrap().expose(), "file-token");
        assert_eq!(consul.address, "http://from-env:8500");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_consul_table_fills_in_over_the_environment",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("CONSUL_HTTP_ADDR", "http://from-env:8500")
        .env("CONSUL_HTTP_TOKEN", "env-token")
        .env("CONSUL_NAMESPACE", "team-a")
        .env_remove("CONSUL_HTTP_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child ran the check"
    );
}
