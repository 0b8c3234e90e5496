//! Session caches that forget everything when the TLS material rotates.
//!
//! A resumed TLS session skips the certificate exchange: the peer is trusted
//! because it was trusted before. That would keep a rotated-out certificate
//! (or a CA that was removed) alive for as long as tickets last, so both
//! sides swap in an empty cache whenever [`Reloading`](super::reload) installs
//! new material. Steady-state cost: one `ArcSwap` load per cache access.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls_pki_types::ServerName;

const SESSIONS: usize = 256;

#[derive(Debug)]
pub(crate) struct ServerSessions {
    cache: ArcSwap<ServerSessionMemoryCache>,
}

impl ServerSessions {
    pub(crate) fn new() -> Self {
        Self {
            cache: ArcSwap::new(ServerSessionMemoryCache::new(SESSIONS)),
        }
    }

    pub(crate) fn clear(&self) {
        self.cache.store(ServerSessionMemoryCache::new(SESSIONS));
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.cache.load().put(key, value)
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
        self.cache.load().set_tls12_session(server_name, value);
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
        self.cache.load().insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.check();
        self.cache.load().take_tls13_ticket(server_name)
    }
}
