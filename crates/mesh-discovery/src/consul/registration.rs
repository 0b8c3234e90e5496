//! Registering this process with the local Consul agent.
//!
//! A [`Registration`] registers the instance, keeps its TTL checks passing in
//! the background (re-registering if the agent forgot it, e.g. after an agent
//! restart), and deregisters on graceful shutdown: call
//! [`Registration::deregister`] after the server stopped accepting, or rely on
//! the best-effort deregistration when the handle is dropped.
//!
//! See [`Registration`] for when the instance becomes routable.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{CheckStatus, ConsulClient};
use super::model::{CheckDefinition, CheckKind, ServiceRegistration};
use crate::error::{DiscoveryError, ErrorKind};

/// How long [`Registration::register`] waits for Consul to report a new
/// instance passing when it has HTTP/TCP/gRPC checks.
pub const DEFAULT_ROUTABLE_WITHIN: Duration = Duration::from_secs(30);

/// A registered service instance. Deregisters on [`deregister`](Self::deregister)
/// (or, best effort, on drop).
///
/// # Routable when `register` returns
///
/// Consul starts every check critical: a TTL check until its first report,
/// an HTTP/TCP/gRPC check until its first run (after a random stagger within
/// its interval). An instance is therefore not discoverable right after
/// `PUT /v1/agent/service/register`. [`Registration::register`] closes that
/// gap before it returns:
///
/// 1. each TTL check without an initial `Status` gets its first pass at once;
/// 2. if the instance has checks Consul runs itself, it asks the agent
///    (`GET /v1/agent/health/service/id/:id`) until the instance is passing
///    or warning, polling from 50 ms up to every second, for at most
///    [`DEFAULT_ROUTABLE_WITHIN`] (or the bound given to
///    [`Registration::register_within`]). If that bound passes first, the
///    instance is deregistered again and the call fails with an
///    [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) error naming the instance.
///
/// Set the TTL check to critical first ([`Registration::set_status`]) to drain
/// traffic before shutting down: watchers stop sending new requests while
/// in-flight ones finish. [`Registration::set_maintenance`] does the same for
/// instances with HTTP/TCP/gRPC checks.
#[derive(Debug)]
pub struct Registration {
    client: ConsulClient,
    registration: Arc<ServiceRegistration>,
    status: watch::Sender<(CheckStatus, String)>,
    heartbeats: Vec<tokio::task::JoinHandle<()>>,
    deregistered: bool,
}

impl Registration {
    /// Registers `registration` with the agent, makes it routable (see
    /// [`Registration`], bounded by [`DEFAULT_ROUTABLE_WITHIN`]), and starts
    /// a heartbeat for each TTL check (every third of its TTL), reporting
    /// `passing`.
    pub async fn register(
        client: ConsulClient,
        registration: ServiceRegistration,
    ) -> Result<Self, DiscoveryError> {
        Self::register_within(client, registration, DEFAULT_ROUTABLE_WITHIN).await
    }

    /// [`register`](Self::register), waiting at most `bound` for Consul to
    /// report an instance with HTTP/TCP/gRPC checks passing.
    pub async fn register_within(
        client: ConsulClient,
        mut registration: ServiceRegistration,
        bound: Duration,
    ) -> Result<Self, DiscoveryError> {
        registration.id = Some(registration.effective_id().into_owned());
        client.register(&registration).await?;
        let registration = Arc::new(registration);
        let id = registration.effective_id().into_owned();
        tracing::info!(service = %registration.name, %id, "registered with consul");
        let (status, _) = watch::channel((CheckStatus::Passing, String::from("ok")));
        let mut this = Self {
            client: client.clone(),
            registration: registration.clone(),
            status,
            heartbeats: Vec::new(),
            deregistered: false,
        };
        // The first pass of each TTL check, before anyone looks.
        for check in &registration.checks {
            if matches!(check.kind, CheckKind::Ttl(_)) && check.status.is_none() {
                client
                    .update_check(&check.check_id, CheckStatus::Passing, "ok")
                    .await?;
            }
        }
        if registration.checks.iter().any(CheckDefinition::is_probed) {
            this.wait_routable(bound).await?;
        }
        for check in &registration.checks {
            if let CheckKind::Ttl(ttl) = check.kind {
                this.heartbeats.push(tokio::spawn(heartbeat(
                    client.clone(),
                    registration.clone(),
                    check.check_id.clone(),
                    ttl,
                    this.status.subscribe(),
                )));
            }
        }
        Ok(this)
    }

    /// Polls the agent until the instance is passing or warning, for at most
    /// `bound`.
    async fn wait_routable(&mut self, bound: Duration) -> Result<(), DiscoveryError> {
        let id = self.service_id().to_owned();
        let deadline = Instant::now() + bound;
        let mut pause = Duration::from_millis(50);
        let mut last = None;
        loop {
            match self.client.agent_service_status(&id).await {
                Ok(CheckStatus::Passing | CheckStatus::Warning) => return Ok(()),
                Ok(s) => last = Some(s),
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(e),
                Err(e) => {
                    tracing::debug!(%id, error = %e, "asking the agent for the instance's health failed")
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        self.deregistered = true;
        let _ = self.client.deregister(&id).await;
        Err(DiscoveryError::new(
            ErrorKind::Timeout,
            format!(
                "instance {id} was not passing within {bound:?} of registering (last status: {}); deregistered it again",
                last.map_or("unknown", CheckStatus::as_str)
            ),
        ))
    }

    /// The registered instance ID.
    pub fn service_id(&self) -> &str {
        // `register_within` stored the effective ID.
        self.registration
            .id
            .as_deref()
            .unwrap_or(&self.registration.name)
    }

    /// Puts the instance in maintenance (`Some(reason)`): Consul adds a
    /// critical check, so watchers stop routing to it whatever its other
    /// checks say; `None` ends maintenance.
    pub async fn set_maintenance(&self, reason: Option<&str>) -> Result<(), DiscoveryError> {
        self.client
            .service_maintenance(self.service_id(), reason)
            .await
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
