//! The Consul token never follows a redirect (issue 19, row 7): a 307 from
//! the agent's address is an error, not a second request carrying
//! `X-Consul-Token` to the host it names.

use std::sync::{Arc, Mutex};

use mesh_discovery::consul::{ConsulClient, ConsulConfig, ConsulToken};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers every connection with `response`, and records what it was sent.
async fn raw_server(response: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            s.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = tcp.write_all(response.as_bytes()).await;
            let _ = tcp.shutdown().await;
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn the_token_is_not_sent_along_a_redirect() {
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned();
    let (elsewhere, stolen) = raw_server(ok).await;
    let redirect = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{elsewhere}/steal\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n"
    );
    let (agent, asked) = raw_server(redirect).await;
    let mut config = ConsulConfig::new(format!("http://{agent}"));
    config.token = Some(ConsulToken::new("t0ken-secret-0123456789"));
    let client = ConsulClient::new(&config).unwrap();
    assert!(client.deregister("orders-1").await.is_err());
    assert_eq!(asked.lock().unwrap().len(), 1);
    assert!(asked.lock().unwrap()[0].contains("t0ken-secret"));
    assert!(
        stolen.lock().unwrap().is_empty(),
        "the token followed the redirect"
    );
}
