//! What runs checks in the fake: TTL timers, probes of HTTP/TCP/gRPC targets,
//! and the reaper of critical services.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::state::{CheckKind, REAP_INTERVAL};
use super::{Health, Shared};

/// Consul's default timeout of one check run.
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl Shared {
    /// Starts (or restarts) the TTL timer of a check.
    pub(crate) fn arm_ttl(self: &Arc<Self>, check_id: String, ttl: Duration, generation: u64) {
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            shared.write(|s| {
                let Some((c, service)) = s.find_check_mut(&check_id) else {
                    return;
                };
                if c.generation != generation || c.status == Health::Critical {
                    return;
                }
                tracing::debug!(check = %check_id, "fake consul: TTL expired");
                c.set(Health::Critical, "TTL expired".to_owned());
                s.touch(&service);
            });
        });
    }

    /// Runs a probed check every interval, the first run after a random
    /// stagger within the interval (as Consul's agent does), until the check
    /// is removed or registered again.
    pub(crate) fn start_probe(self: &Arc<Self>, check_id: String, generation: u64) {
        let shared = self.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let Some((kind, interval, timeout)) = shared.probe_target(&check_id, generation)
                else {
                    return;
                };
                let pause = if first {
                    interval.mul_f64(fastrand::f64())
                } else {
                    interval
                };
                first = false;
                tokio::time::sleep(pause).await;
                if shared.probe_target(&check_id, generation).is_none() {
                    return;
                }
                let (status, output) = probe(&kind, timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT)).await;
                shared.write(|s| {
                    let Some((c, service)) = s.find_check_mut(&check_id) else {
                        return;
                    };
                    if c.generation == generation && c.probed(status, output) {
                        s.touch(&service);
                    }
                });
            }
        });
    }

    fn probe_target(
        &self,
        check_id: &str,
        generation: u64,
    ) -> Option<(CheckKind, Duration, Option<Duration>)> {
        let mut s = self.lock();
        let (c, _) = s.find_check_mut(check_id)?;
        (c.generation == generation).then(|| {
            (
                c.kind.clone(),
                c.interval.unwrap_or(Duration::from_secs(10)),
                c.timeout,
            )
        })
    }

    /// Consul's reaper: every 30 s, deregisters services whose check with
    /// `DeregisterCriticalServiceAfter` has been critical that long.
    pub(crate) fn start_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + REAP_INTERVAL, REAP_INTERVAL);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                if *shared.shutdown.borrow() {
                    return;
                }
                shared.write(|s| {
                    for id in s.reap(Instant::now()) {
                        tracing::debug!(%id, "fake consul: reaped a critical service");
                    }
                });
            }
        });
    }
}

async fn probe(kind: &CheckKind, timeout: Duration) -> (Health, String) {
    let run = async {
        match kind {
            CheckKind::Http {
                url,
                method,
                header,
            } => http_probe(url, method, header).await,
            CheckKind::Tcp(addr) => tcp_probe(addr).await,
            CheckKind::Grpc(target) => {
                let addr = target.split_once('/').map_or(target.as_str(), |(a, _)| a);
                tcp_probe(addr).await
            }
            _ => (Health::Critical, "not a probed check".to_owned()),
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| (Health::Critical, format!("timed out after {timeout:?}")))
}

async fn tcp_probe(addr: &str) -> (Health, String) {
    match TcpStream::connect(addr).await {
        Ok(_) => (Health::Passing, format!("TCP connect {addr}: Success")),
        Err(e) => (Health::Critical, format!("dial tcp {addr}: {e}")),
    }
}

/// A plain HTTP/1.1 request; 2xx passes, 429 warns, anything else fails.
async fn http_probe(url: &str, method: &str, header: &[(String, String)]) -> (Health, String) {
    let Some(rest) = url.strip_prefix("http://") else {
        return (
            Health::Critical,
            format!("the fake Consul probes only http:// URLs, not {url:?}"),
        );
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = match TcpStream::connect(authority).await {
        Ok(s) => s,
        Err(e) => return (Health::Critical, format!("{method} {url}: {e}")),
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: Consul Health Check\r\nAccept: text/plain, text/*, */*\r\nConnection: close\r\n"
    );
    for (k, v) in header {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if let Err(e) = stream.write_all(req.as_bytes()).await {
        return (Health::Critical, format!("{method} {url}: {e}"));
    }
    let mut buf = [0_u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let status = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(code @ 200..=299) => (Health::Passing, format!("HTTP {method} {url}: {code} OK")),
        Some(429) => (
            Health::Warning,
            format!("HTTP {method} {url}: 429 Too Many Requests"),
        ),
        Some(code) => (Health::Critical, format!("HTTP {method} {url}: {code}")),
        None => (
            Health::Critical,
            format!("HTTP {method} {url}: no HTTP answer"),
        ),
    }
}
