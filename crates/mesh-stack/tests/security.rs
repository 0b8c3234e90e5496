//! Secrets in a mesh config file stay out of the errors about it.
#![cfg(all(feature = "toml", feature = "json", feature = "yaml"))]

use mesh_stack::{ConfigError, MeshConfig};

const TOKEN: &str = "s3cr3t-consul-token-0123456789";

fn parse_message(err: &ConfigError) -> String {
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
        let message = parse_message(&MeshConfig::from_toml_str(&text).unwrap_err());
        assert!(!message.contains(TOKEN), "{line}: {message}");
        assert!(!message.contains("s3cr3t"), "{line}: {message}");
        assert!(message.contains("line 3"), "{line}: {message}");
    }
}

#[test]
fn quoted_values_are_never_echoed_in_json_or_yaml() {
    let json = format!(r#"{{ "consul": {{ "token": ["{TOKEN}"] }} }}"#);
    let message = parse_message(&MeshConfig::from_json_str(&json).unwrap_err());
    assert!(!message.contains(TOKEN), "{message}");
    let json =
        format!(r#"{{ "services": {{ "a": {{ "discovery": {{ "kind": "{TOKEN}" }} }} }} }}"#);
    let message = parse_message(&MeshConfig::from_json_str(&json).unwrap_err());
    assert!(!message.contains(TOKEN), "{message}");
    let yaml = format!("consul:\n  token: [\"{TOKEN}\"]\n");
    let message = parse_message(&MeshConfig::from_yaml_str(&yaml).unwrap_err());
    assert!(!message.contains(TOKEN), "{message}");
}

// ===== [tls], [services.x.api_key], [server] end to end on 127.0.0.1 =====

mod e2e {
    use std::io::Write;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use axum::routing::get;
    use axum::{Extension, Router};
    use mesh_stack::auth::CallerIdentity;
    use mesh_stack::auth::tls::{MtlsAcceptor, serve};
    use mesh_stack::{Mesh, MeshConfig};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
        SanType,
    };
    use tokio::net::TcpListener;
    use tower::ServiceExt;

    const ORDERS: &str = "spiffe://test.mesh/orders";
    const USERS: &str = "spiffe://test.mesh/users";
    const KEY: &str = "sk-reports-0123456789abcdef";

    struct Pki {
        dir: PathBuf,
        ca: CertifiedIssuer<'static, KeyPair>,
    }

    impl Pki {
        fn new(name: &str) -> Pki {
            let dir = std::env::temp_dir()
                .join(format!("mesh-stack-security-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            Pki { dir, ca }
        }

        /// Writes `<name>.crt` and `<name>.key` for this SPIFFE ID.
        fn issue(&self, name: &str, id: &str) {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            std::fs::write(self.dir.join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }

        fn tls_section(&self, me: &str) -> String {
            let p = |f: &str| self.dir.join(f).display().to_string();
            format!(
                "[tls]\nca = {{ file = {:?} }}\ncert = {{ file = {:?} }}\nkey = {{ file = {:?} }}\n",
                p("ca.pem"),
                p(&format!("{me}.crt")),
                p(&format!("{me}.key"))
            )
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn users_app() -> Router {
        Router::new().route(
            "/users/{id}",
            get(|Extension(who): Extension<CallerIdentity>| async move { who.to_string() })
                .delete(|| async { "deleted" }),
        )
    }

    const SERVER_POLICY: &str = r#"
[server.authorization]
rules = [ { identity = "spiffe://test.mesh/orders", methods = ["GET"], paths = ["/users"] },
          { identity = "apikey:reports", methods = ["GET"], paths = ["/users"] } ]
"#;

    async fn call<B: http_body::Body<Error: std::fmt::Debug>>(
        svc: &(
             impl tower::Service<
            http::Request<String>,
            Response = http::Response<B>,
            Error = mesh_stack::core::BoxError,
        > + Clone
         ),
        method: http::Method,
        uri: &str,
    ) -> (u16, String) {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(String::new())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_mesh_serves_and_calls_over_mtls_with_the_policy_of_its_file() {
        let pki = Pki::new("mtls");
        pki.issue("users", USERS);
        pki.issue("orders", ORDERS);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();

        // The users service: [tls] and [server] from its file.
        let users_file = format!("{}{SERVER_POLICY}", pki.tls_section("users"));
        let users = Mesh::new(MeshConfig::from_toml_str(&users_file).unwrap()).unwrap();
        let tls = users.server_tls().unwrap().unwrap();
        let app = users_app().layer(users.server_layer().unwrap());
        tokio::spawn(serve(listener, MtlsAcceptor::new(&tls), app));

        // The orders service calls users, expecting its identity.
        let orders_file = format!(
            "{}\n[tls.server_identities]\nusers = {USERS:?}\n\n\
             [services.users.discovery]\nkind = \"static\"\nendpoints = [{{ address = \"{addr}\" }}]\n",
            pki.tls_section("orders")
        );
        let orders = Mesh::new(MeshConfig::from_toml_str(&orders_file).unwrap()).unwrap();
        let client = orders.secure_reqwest_client("users").unwrap();
        assert_eq!(
            call(&client, http::Method::GET, "https://users/users/7").await,
            (200, ORDERS.to_owned())
        );
        assert_eq!(
            call(&client, http::Method::DELETE, "https://users/users/7")
                .await
                .0,
            403
        );

        // A caller expecting another identity for users never sends a request.
        let wrong = orders_file.replace(
            &format!("users = {USERS:?}"),
            "users = \"spiffe://test.mesh/other\"",
        );
        let wrong = Mesh::new(MeshConfig::from_toml_str(&wrong).unwrap()).unwrap();
        let client = wrong.secure_reqwest_client("users").unwrap();
        let req = http::Request::get("https://users/users/7")
            .body(String::new())
            .unwrap();
        assert!(client.oneshot(req).await.is_err());
    }

    #[tokio::test]
    async fn a_mesh_presents_the_api_key_of_its_file_and_the_server_checks_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let hash = mesh_stack::auth::apikey::ApiKeySet::hash_hex(&KEY.into());
        let server_file = format!(
            "{SERVER_POLICY}\n[server.api_keys]\nkeys = [ {{ identity = \"reports\", sha256 = \"{hash}\" }} ]\n"
        );
        let server = Mesh::new(MeshConfig::from_toml_str(&server_file).unwrap()).unwrap();
        let app = users_app().layer(server.server_layer().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        // The key comes from a file, as in production (an `env` source
        // would need `set_var`, which is `unsafe` in edition 2024).
        let key_file = std::env::temp_dir().join(format!("mesh-stack-key-{}", std::process::id()));
        std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
        let client_file = format!(
            "[services.users]\ndiscovery = {{ kind = \"static\", endpoints = [{{ address = \"{addr}\" }}] }}\n\
             api_key = {{ key = {{ file = {:?} }} }}\n",
            key_file.display().to_string()
        );
        let client = Mesh::new(MeshConfig::from_toml_str(&client_file).unwrap()).unwrap();
        let users = client.secure_reqwest_client("users").unwrap();
        assert_eq!(
            call(&users, http::Method::GET, "http://users/users/7").await,
            (200, "reports".to_owned())
        );
        // The same call without the key: 401.
        let bare = client
            .reqwest_client(
                "users",
                mesh_stack::auth::apikey::reqwest_builder().build().unwrap(),
            )
            .unwrap();
        assert_eq!(
            call(&bare, http::Method::GET, "http://users/users/7")
                .await
                .0,
            401
        );
        let _ = std::fs::remove_file(&key_file);
    }

    #[test]
    fn insecure_consul_settings_are_warned_about() {
        // Row 12 of issue 19: none of these was logged.
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let file = "[consul]\naddress = \"10.1.2.3:8500\"\ntoken = \"t0ken-0123456789\"\ntls_skip_verify = true\n\n\
                    [services.users]\ndiscovery = { kind = \"static\", endpoints = [{ address = \"127.0.0.1:1\" }] }\n\
                    api_key = { key = { value = \"sk-inline-0123456789abcdef\" } }\n";
        Mesh::new(MeshConfig::from_toml_str(file).unwrap()).unwrap();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("tls_skip_verify"), "{text}");
        assert!(
            text.contains("plain HTTP to a non-loopback agent"),
            "{text}"
        );
        assert!(text.contains("written into the config file"), "{text}");
        assert!(
            !text.contains("t0ken") && !text.contains("sk-inline"),
            "{text}"
        );
    }
}

// The contract of the `config_secrets` fuzz target, as a proptest.
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn parse_errors_never_contain_the_token(
        before in "(\\[consul\\]\n|address = \"127.0.0.1:8500\"\n|[\\[\\]a-z=\"{}:,. \n#'0-9]){0,12}",
        after in "[\\[\\]a-z=\"{}:,. \n#'0-9x]{0,30}",
        format in 0u8..3,
    ) {
        const SECRET: &str = "Zq9-SECRET-v4lu3-8KxP2mW7";
        let line = match format {
            0 => format!("token = \"{SECRET}\""),
            1 => format!("token: \"{SECRET}\""),
            _ => format!("\"token\": \"{SECRET}\""),
        };
        let document = format!("{before}\n{line}\n{after}");
        let parsed = match format {
            0 => MeshConfig::from_toml_str(&document),
            1 => MeshConfig::from_yaml_str(&document),
            _ => MeshConfig::from_json_str(&document),
        };
        if let Err(err @ ConfigError::Parse { .. }) = parsed {
            let text = format!("{err} {err:?}");
            proptest::prop_assert!(!text.contains("SECRET-v4lu3"), "{}", text);
        }
    }
}
