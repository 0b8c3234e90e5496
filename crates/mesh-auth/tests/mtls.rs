//! Real mTLS handshakes on 127.0.0.1 with certificates made by rcgen: the
//! good case, every rejection, and rotation.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Ca, Leaf, ORDERS, USERS, Validity, temp_dir};
use mesh_auth::tls::{
    ClientTlsConfig, MtlsAcceptor, MtlsClientConfig, MtlsServerConfig, PemSource, ServerTlsConfig,
};
use mesh_auth::{CallerIdentity, TlsError, TlsErrorKind};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

fn server_config(ca: &Ca, leaf: &Leaf) -> MtlsServerConfig {
    ServerTlsConfig::new(ca.source(), leaf.cert(), leaf.key())
        .build()
        .unwrap()
}

fn client_config(ca: &Ca, leaf: Option<&Leaf>, expect: Option<&str>) -> MtlsClientConfig {
    let mut cfg = ClientTlsConfig::new(ca.source());
    if let Some(leaf) = leaf {
        cfg = cfg.with_client_cert(leaf.cert(), leaf.key());
    }
    if let Some(id) = expect {
        cfg = cfg.with_server_identity(id);
    }
    cfg.build().unwrap()
}

/// Accepts `n` connections; each reports what the server saw.
async fn server(
    config: &MtlsServerConfig,
    n: usize,
) -> (
    SocketAddr,
    JoinHandle<Vec<Result<CallerIdentity, TlsError>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MtlsAcceptor::new(config).with_handshake_timeout(Duration::from_secs(5));
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut stream) => {
                    stream.write_all(b"ok").await.unwrap();
                    stream.flush().await.unwrap();
                    seen.push(Ok(stream.identity().clone()));
                    // Keep the stream until the client has read.
                    let _ = stream.read(&mut [0u8; 1]).await;
                }
                Err(err) => seen.push(Err(err)),
            }
        }
        seen
    });
    (addr, task)
}

/// Connects and reads the server's greeting; returns the server's leaf.
async fn connect(
    config: &MtlsClientConfig,
    addr: SocketAddr,
    name: &str,
) -> Result<CertificateDer<'static>, TlsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = config
        .connector()
        .connect(name, tcp)
        .await
        .map_err(|e| TlsError::from_io(&e))?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let mut buf = [0u8; 2];
    // With TLS 1.3 a server's rejection of our certificate arrives here.
    tls.read_exact(&mut buf)
        .await
        .map_err(|e| TlsError::from_io(&e))?;
    assert_eq!(&buf, b"ok");
    let _ = tls.shutdown().await;
    Ok(leaf)
}

fn users_leaf(ca: &Ca) -> Leaf {
    ca.leaf(&[USERS, "localhost", "127.0.0.1"], Validity::Now)
}

#[tokio::test]
async fn good_client_is_accepted_with_its_identity() {
    let ca = Ca::new("mesh CA");
    let server_leaf = users_leaf(&ca);
    let client_leaf = ca.leaf(&[ORDERS, "orders.local"], Validity::Now);
    let (addr, task) = server(&server_config(&ca, &server_leaf), 1).await;
    let client = client_config(&ca, Some(&client_leaf), Some(USERS));
    let leaf = connect(&client, addr, "localhost").await.unwrap();
    assert_eq!(leaf, server_leaf.der);
    let seen = task.await.unwrap();
    assert_eq!(seen.len(), 1);
    let id = seen[0].as_ref().unwrap();
    assert_eq!(id, &CallerIdentity::spiffe(ORDERS));
    assert_eq!(id.trust_domain(), Some("test.mesh"));
}

#[tokio::test]
async fn dns_identity_when_there_is_no_uri_san() {
    let ca = Ca::new("mesh CA");
    let (addr, task) = server(&server_config(&ca, &users_leaf(&ca)), 1).await;
    let client = client_config(
        &ca,
        Some(&ca.leaf(&["orders.internal"], Validity::Now)),
        None,
    );
    connect(&client, addr, "127.0.0.1").await.unwrap();
    let seen = task.await.unwrap();
    assert_eq!(
        seen[0].as_ref().unwrap(),
        &CallerIdentity::dns("orders.internal")
    );
}

/// Runs one handshake with a bad client; returns the server's and the client's errors.
async fn rejected_client(ca: &Ca, client: &MtlsClientConfig) -> (TlsError, TlsError) {
    let (addr, task) = server(&server_config(ca, &users_leaf(ca)), 1).await;
    let client_err = connect(client, addr, "localhost").await.unwrap_err();
    let server_err = task.await.unwrap().pop().unwrap().unwrap_err();
    (server_err, client_err)
}

#[tokio::test]
async fn client_from_an_unknown_ca_is_rejected() {
    let ca = Ca::new("mesh CA");
    let rogue = Ca::new("rogue CA");
    let client = client_config(&ca, Some(&rogue.leaf(&[ORDERS], Validity::Now)), None);
    let (server_err, client_err) = rejected_client(&ca, &client).await;
    assert_eq!(server_err.kind(), TlsErrorKind::UnknownCa);
    assert_eq!(client_err.kind(), TlsErrorKind::UnknownCa);
}

#[tokio::test]
async fn expired_client_certificate_is_rejected() {
    let ca = Ca::new("mesh CA");
    let client = client_config(&ca, Some(&ca.leaf(&[ORDERS], Validity::Expired)), None);
    let (server_err, client_err) = rejected_client(&ca, &client).await;
    assert_eq!(server_err.kind(), TlsErrorKind::Expired);
    assert_eq!(client_err.kind(), TlsErrorKind::Expired);
}

#[tokio::test]
async fn not_yet_valid_client_certificate_is_rejected() {
    let ca = Ca::new("mesh CA");
    let client = client_config(&ca, Some(&ca.leaf(&[ORDERS], Validity::NotYetValid)), None);
    let (server_err, _client_err) = rejected_client(&ca, &client).await;
    assert_eq!(server_err.kind(), TlsErrorKind::NotYetValid);
}

#[tokio::test]
async fn missing_client_certificate_is_rejected() {
    let ca = Ca::new("mesh CA");
    let client = client_config(&ca, None, None);
    let (server_err, client_err) = rejected_client(&ca, &client).await;
    assert_eq!(server_err.kind(), TlsErrorKind::MissingClientCertificate);
    assert_eq!(client_err.kind(), TlsErrorKind::MissingClientCertificate);
}

#[tokio::test]
async fn server_with_the_wrong_identity_is_rejected() {
    let ca = Ca::new("mesh CA");
    // A valid certificate for the host, but it belongs to another service.
    let impostor = ca.leaf(&[ORDERS, "localhost"], Validity::Now);
    let (addr, _task) = server(&server_config(&ca, &impostor), 1).await;
    let client = client_config(&ca, Some(&ca.leaf(&[ORDERS], Validity::Now)), Some(USERS));
    let err = connect(&client, addr, "localhost").await.unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::WrongIdentity);
}

#[tokio::test]
async fn server_from_an_unknown_ca_or_expired_is_rejected() {
    let ca = Ca::new("mesh CA");
    let rogue = Ca::new("rogue CA");
    let client = client_config(&ca, Some(&ca.leaf(&[ORDERS], Validity::Now)), Some(USERS));

    let (addr, _t) = server(
        &server_config(&ca, &rogue.leaf(&[USERS, "localhost"], Validity::Now)),
        1,
    )
    .await;
    let err = connect(&client, addr, "localhost").await.unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::UnknownCa);

    let (addr, _t) = server(
        &server_config(&ca, &ca.leaf(&[USERS, "localhost"], Validity::Expired)),
        1,
    )
    .await;
    let err = connect(&client, addr, "localhost").await.unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::Expired);

    let (addr, _t) = server(
        &server_config(&ca, &ca.leaf(&[USERS, "localhost"], Validity::NotYetValid)),
        1,
    )
    .await;
    let err = connect(&client, addr, "localhost").await.unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::NotYetValid);
}

#[tokio::test]
async fn identity_check_can_replace_the_hostname_check_for_bare_ips() {
    let ca = Ca::new("mesh CA");
    // Discovery hands out IPs; the certificate names only the service.
    let server_leaf = ca.leaf(&[USERS], Validity::Now);
    let client_leaf = ca.leaf(&[ORDERS], Validity::Now);
    let (addr, _t) = server(&server_config(&ca, &server_leaf), 2).await;

    let strict = client_config(&ca, Some(&client_leaf), Some(USERS));
    let err = connect(&strict, addr, "127.0.0.1").await.unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::Handshake);

    let by_identity = ClientTlsConfig::new(ca.source())
        .with_client_cert(client_leaf.cert(), client_leaf.key())
        .with_server_identity(USERS)
        .without_hostname_verification()
        .build()
        .unwrap();
    connect(&by_identity, addr, "127.0.0.1").await.unwrap();
}

#[test]
fn malformed_pem_is_a_typed_error() {
    let ca = Ca::new("mesh CA");
    let leaf = users_leaf(&ca);
    let err = ServerTlsConfig::new(
        ca.source(),
        leaf.cert(),
        PemSource::pem("-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n"),
    )
    .build()
    .unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::MalformedPem);
    let err = ServerTlsConfig::new(PemSource::pem("not a pem"), leaf.cert(), leaf.key())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::MalformedPem);
    let err = ClientTlsConfig::new(ca.source())
        .with_client_cert(PemSource::pem(""), leaf.key())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::MalformedPem);
    // A key that does not belong to the certificate.
    let other = users_leaf(&ca);
    let err = ServerTlsConfig::new(ca.source(), leaf.cert(), other.key())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::Config);
}

#[tokio::test]
async fn server_certificate_rotates_without_restart() {
    let ca = Ca::new("mesh CA");
    let dir = temp_dir("rotate-server");
    let first = users_leaf(&ca);
    let (cert, key) = first.write(&dir, "server");
    let ca_path = dir.join("ca.pem");
    common::write_atomic(&ca_path, &ca.pem());
    let config = ServerTlsConfig::new(
        PemSource::file(&ca_path),
        PemSource::file(&cert),
        PemSource::file(&key),
    )
    .with_reload_interval(Duration::ZERO)
    .build()
    .unwrap();
    let (addr, _t) = server(&config, 3).await;
    let client = client_config(&ca, Some(&ca.leaf(&[ORDERS], Validity::Now)), Some(USERS));
    assert_eq!(
        connect(&client, addr, "localhost").await.unwrap(),
        first.der
    );

    let second = users_leaf(&ca);
    second.write(&dir, "server");
    assert_eq!(
        connect(&client, addr, "localhost").await.unwrap(),
        second.der
    );

    // A broken file is refused; the last good certificate stays in use.
    common::write_atomic(&key, "garbage");
    assert_eq!(
        config.reload_now().unwrap_err().kind(),
        TlsErrorKind::MalformedPem
    );
    assert_eq!(
        connect(&client, addr, "localhost").await.unwrap(),
        second.der
    );
}

#[tokio::test]
async fn client_certificate_rotates_without_restart() {
    let ca = Ca::new("mesh CA");
    let dir = temp_dir("rotate-client");
    let (cert, key) = ca.leaf(&[ORDERS], Validity::Now).write(&dir, "client");
    let client = ClientTlsConfig::new(ca.source())
        .with_client_cert(PemSource::file(&cert), PemSource::file(&key))
        .with_reload_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (addr, task) = server(&server_config(&ca, &users_leaf(&ca)), 2).await;
    connect(&client, addr, "localhost").await.unwrap();
    ca.leaf(&["spiffe://test.mesh/orders-v2"], Validity::Now)
        .write(&dir, "client");
    // The interval is long: an explicit reload picks the new files up now.
    assert!(client.reload_now().unwrap());
    connect(&client, addr, "localhost").await.unwrap();
    let seen: Vec<_> = task
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        seen,
        [
            CallerIdentity::spiffe(ORDERS),
            CallerIdentity::spiffe("spiffe://test.mesh/orders-v2")
        ]
    );
}

#[tokio::test]
async fn resuming_clients_still_notice_rotated_files() {
    let ca = Ca::new("mesh CA");
    let dir = temp_dir("rotate-resume");
    let (cert, key) = ca.leaf(&[ORDERS], Validity::Now).write(&dir, "client");
    let client = ClientTlsConfig::new(ca.source())
        .with_client_cert(PemSource::file(&cert), PemSource::file(&key))
        .with_reload_interval(Duration::ZERO)
        .build()
        .unwrap();
    let (addr, task) = server(&server_config(&ca, &users_leaf(&ca)), 3).await;
    // The second connection resumes the first one's session.
    connect(&client, addr, "localhost").await.unwrap();
    connect(&client, addr, "localhost").await.unwrap();
    ca.leaf(&["spiffe://test.mesh/orders-v2"], Validity::Now)
        .write(&dir, "client");
    connect(&client, addr, "localhost").await.unwrap();
    let seen: Vec<_> = task
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        seen,
        [
            CallerIdentity::spiffe(ORDERS),
            CallerIdentity::spiffe(ORDERS),
            CallerIdentity::spiffe("spiffe://test.mesh/orders-v2")
        ]
    );
}
