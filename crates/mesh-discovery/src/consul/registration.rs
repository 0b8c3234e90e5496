//! Registering this process with the local Consul agent.
//!
//! A [`Registration`] registers the instance, keeps its TTL checks passing in
//! the background (re-registering if the agent forgot it, e.g. after an agent
//! restart), and deregisters on graceful shutdown: call
//! [`Registration::deregister`] after the server stopped accepting, or rely on
//! the best-effort deregistration when the handle is dropped.
//!
//! Set the TTL check to critical first ([`Registration::set_status`]) to drain
//! traffic before shutting down: watchers stop sending new requests while
//! in-flight ones finish.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::client::{CheckStatus, ConsulClient};
use super::model::{CheckKind, ServiceRegistration};
use crate::error::{DiscoveryError, ErrorKind};

/// A registered service instance. Deregisters on [`deregister`](Self::deregister)
/// (or, best effort, on drop).
#[derive(Debug)]
pub struct Registration {
    client: ConsulClient,
    registration: Arc<ServiceRegistration>,
    status: watch::Sender<(CheckStatus, String)>,
    heartbeats: Vec<tokio::task::JoinHandle<()>>,
    deregistered: bool,
}

impl Registration {
    /// Registers `registration` with the agent and starts a heartbeat for each
    /// TTL check (every third of its TTL), reporting `passing`.
    pub async fn register(
        client: ConsulClient,
        registration: ServiceRegistration,
    ) -> Result<Self, DiscoveryError> {
        client.register(&registration).await?;
        let registration = Arc::new(registration);
        tracing::info!(service = %registration.name, id = %registration.effective_id(), "registered with consul");
        let (status, _) = watch::channel((CheckStatus::Passing, String::from("ok")));
        let mut heartbeats = Vec::new();
        for check in &registration.checks {
            if let CheckKind::Ttl(ttl) = check.kind {
                heartbeats.push(tokio::spawn(heartbeat(
                    client.clone(),
                    registration.clone(),
                    check.check_id.clone(),
                    ttl,
                    status.subscribe(),
                )));
            }
        }
        Ok(Self {
            client,
            registration,
            status,
            heartbeats,
            deregistered: false,
        })
    }

    /// The registered instance ID.
    pub fn service_id(&self) -> &str {
        self.registration.effective_id()
    }

    /// Changes what the TTL heartbeats report from now on (sent at once).
    /// `Critical` drains traffic before a shutdown.
    pub fn set_status(&self, status: CheckStatus, output: impl Into<String>) {
        self.status.send_replace((status, output.into()));
    }

    /// Stops the heartbeats and deregisters the instance.
    pub async fn deregister(mut self) -> Result<(), DiscoveryError> {
        self.stop();
        self.deregistered = true;
        let r = self.client.deregister(self.service_id()).await;
        match &r {
            Ok(()) => tracing::info!(id = %self.service_id(), "deregistered from consul"),
            Err(e) => {
                tracing::warn!(id = %self.service_id(), error = %e, "consul deregistration failed")
            }
        }
        r
    }

    fn stop(&mut self) {
        for h in self.heartbeats.drain(..) {
            h.abort();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stop();
        if self.deregistered {
            return;
        }
        // Best effort: only possible while a runtime is still running.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let id = self.service_id().to_owned();
            handle.spawn(async move {
                if let Err(e) = client.deregister(&id).await {
                    tracing::warn!(%id, error = %e, "consul deregistration on drop failed");
                }
            });
        }
    }
}

async fn heartbeat(
    client: ConsulClient,
    registration: Arc<ServiceRegistration>,
    check_id: String,
    ttl: Duration,
    mut status: watch::Receiver<(CheckStatus, String)>,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    loop {
        let (s, output) = status.borrow_and_update().clone();
        match client.update_check(&check_id, s, &output).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::warn!(check = %check_id, "consul forgot the check; registering again");
                match client.register(&registration).await {
                    // Report at once: a fresh TTL check starts critical.
                    Ok(()) => {
                        let _ = client.update_check(&check_id, s, &output).await;
                    }
                    Err(e) => {
                        tracing::warn!(check = %check_id, error = %e, "re-registration failed");
                    }
                }
            }
            Err(e) => tracing::warn!(check = %check_id, error = %e, "TTL heartbeat failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            r = status.changed() => if r.is_err() { return },
        }
    }
}
