//! Session caches that forget everything when the TLS material rotates.
//!
//! A resumed TLS session skips the certificate exchange: the peer is trusted
//! because it was trusted before. That would keep a rotated-out certificate
//! (or a CA that was removed) alive for as long as tickets last, so both
//! sides swap in an empty cache whenever [`Reloading`](super::reload) installs
//! new material. Steady-state cost: one `ArcSwap` load per cache access.
//!
//! Clearing alone is not enough: a handshake that began with the old
//! material may finish after the clear and store its session (a TLS 1.3
//! ticket arrives after the handshake) in the new cache, and every
//! resumption of it gets a fresh ticket, so the old certificate would live
//! on until it expired, when its resumed connection would be refused. So for
//! [`GRACE`] after a rotation (the acceptor's handshake timeout: no handshake
//! that began before the rotation outlives it) no session is stored at all;
//! connections meanwhile do full handshakes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwap;
use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls_pki_types::ServerName;

const SESSIONS: usize = 256;

/// How long after a rotation no session is stored.
pub(crate) const GRACE: Duration = Duration::from_secs(10);

/// The window after a rotation in which sessions are not stored.
#[derive(Debug)]
struct Grace {
    origin: Instant,
    /// Milliseconds since `origin` until which nothing is stored; 0: none.
    until_ms: AtomicU64,
}

impl Grace {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn start(&self) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(GRACE.as_millis()).unwrap_or(u64::MAX))
            .max(1);
        self.until_ms.store(until, Ordering::Release);
    }

    /// Whether a session may be stored now (one atomic load outside a grace).
    fn may_store(&self) -> bool {
        let until = self.until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now_ms() < until {
            return false;
        }
        let _ = self
            .until_ms
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed);
        true
    }
}

#[derive(Debug)]
pub(crate) struct ServerSessions {
    cache: ArcSwap<ServerSessionMemoryCache>,
    grace: Grace,
}

impl ServerSessions {
    pub(crate) fn new() -> Self {
        Self {
            cache: ArcSwap::new(ServerSessionMemoryCache::new(SESSIONS)),
            grace: Grace::new(),
        }
    }

    pub(crate) fn clear(&self) {
        self.grace.start();
        self.cache.store(ServerSessionMemoryCache::new(SESSIONS));
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.grace.may_store() && self.cache.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

type Check = Box<dyn Fn() + Send + Sync>;

pub(crate) struct ClientSessions {
    cache: ArcSwap<ClientSessionMemoryCache>,
    grace: Grace,
    // A resumed handshake never reaches the verifier, so the client checks
    // its files here, where every handshake starts.
    check: OnceLock<Check>,
}

impl std::fmt::Debug for ClientSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSessions")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl ClientSessions {
    pub(crate) fn new() -> Self {
        Self {
            cache: ArcSwap::from_pointee(ClientSessionMemoryCache::new(SESSIONS)),
            grace: Grace::new(),
            check: OnceLock::new(),
        }
    }

    pub(crate) fn set_check(&self, check: Check) {
        let _ = self.check.set(check);
    }

    fn check(&self) {
        if let Some(check) = self.check.get() {
            check();
        }
    }

    pub(crate) fn clear(&self) {
        self.grace.start();
        self.cache
            .store(Arc::new(ClientSessionMemoryCache::new(SESSIONS)));
    }
}

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.cache.load().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.cache.load().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        if self.grace.may_store() {
            self.cache.load().set_tls12_session(server_name, value);
        }
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.check();
        self.cache.load().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache.load().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        if self.grace.may_store() {
            self.cache.load().insert_tls13_ticket(server_name, value);
        }
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.check();
        self.cache.load().take_tls13_ticket(server_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn nothing_is_stored_for_a_grace_after_a_rotation() {
        let server = ServerSessions::new();
        assert!(server.put(b"a".to_vec(), b"1".to_vec()));
        server.clear();
        // A handshake that began before the rotation finishes now: its
        // session must not survive into the new cache.
        assert!(!server.put(b"b".to_vec(), b"2".to_vec()));
        assert_eq!(server.get(b"a"), None);
        tokio::time::advance(GRACE).await;
        assert!(server.put(b"c".to_vec(), b"3".to_vec()));
        assert_eq!(server.get(b"c"), Some(b"3".to_vec()));
    }
}
