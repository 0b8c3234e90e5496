//! The change feed: blocking queries per [`ConsulClient`] that tell which
//! services changed, so their watches refresh at once instead of waiting
//! for their turn (see the [`watch`](super::watch) module docs, "Many
//! watches, one agent").
//!
//! Two queries, `GET /v1/health/state/critical` and
//! `GET /v1/health/state/warning`, each a blocking query:
//!
//! - Consul answers them from the checks table's status index: the answer
//!   lists the checks in that state (one check, ≈ 300 bytes, at 1,000
//!   services × 100 instances with one instance down), and the query is
//!   woken when a check in or leaving that state is written. Every change
//!   of a check's status involves `critical` or `warning` on one side, so
//!   the two together see every status change, recoveries included;
//! - each answer is diffed with the last by (node, check ID) → (status,
//!   service name, service ID); the services of every check that appeared,
//!   disappeared or changed get their watches kicked: each does one
//!   non-blocking read of its service, jumping the queue of blocking turns
//!   (it needs no blocking permit). A node check (`serfHealth`,
//!   `_node_maintenance`: no service) kicks every watch of the client.
//!
//! Measured against the alternatives (`BENCHMARKS.md`, 1,000 × 100):
//! `/v1/health/state/any` sends all 100,000 checks (29.5 MB, ~1 s to parse)
//! on every change; `any` with `filter=Status != "passing"` sends only the
//! non-passing checks but makes the servers evaluate the filter on every
//! check of the datacenter at each wake-up (the fake took 0.9-1.2 s per
//! answer, against 15-30 ms for `critical`); `/v1/catalog/services` blocks
//! on registrations only and names every service (13 KB) without saying
//! which changed.
//!
//! Blind spots, left to the watches' turns (at most one rotation late):
//! an instance registered passing (no check, or a check registered
//! passing) or deregistered while passing, tag, address or metadata
//! changes (no check status moves), watches of Connect endpoints (the
//! proxies' checks carry the proxy's name), of another datacenter (the feed
//! reads the agent's own), and changes while the feed itself is down (it
//! keeps the last lists across errors and diffs the next answers with
//! them, so only a change undone meanwhile is missed).
//!
//! Each query is paced by a token bucket (a burst of 10, then 10 a second):
//! a server that ignores `index` cannot make the feed spin, and one answer
//! covers every change since the last.
//!
//! It runs only while the client's watches take turns (more watches than
//! blocking permits, see [`ConsulClient::blocking_connections`], and at
//! least 4 of those): below that every watch holds its own blocking query
//! and the feed would add nothing. While it runs it holds two blocking
//! permits, so it counts in the connection budget like two watches.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mesh_core::backoff::Backoff;
use serde::Deserialize;
use tokio::sync::Notify;

use super::client::{ConsulClient, WeakClient};
use super::watch::TokenBucket;
use crate::error::DiscoveryError;

/// How long the agent may hold the feed's blocking query.
pub(crate) const FEED_WAIT: Duration = Duration::from_secs(300);
/// The feed's token bucket: a burst of 10 queries, then one per 100 ms.
const FEED_BURST: u32 = 10;
const FEED_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The feed's state in its client: who to kick, whether it runs, counters.
#[derive(Debug, Default)]
pub(crate) struct Feed {
    kicks: Mutex<Kicks>,
    running: AtomicBool,
    /// Told when the watches may no longer need the feed.
    pub(crate) recheck: Notify,
    answers: AtomicU64,
    kicked: AtomicU64,
}

#[derive(Debug, Default)]
struct Kicks {
    next: u64,
    by_service: HashMap<String, Vec<(u64, Arc<Notify>)>>,
}

impl Feed {
    fn kicks(&self) -> MutexGuard<'_, Kicks> {
        self.kicks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Answers of the feed that were diffed.
    pub(crate) fn answers(&self) -> u64 {
        self.answers.load(Ordering::Relaxed)
    }

    /// Watches kicked so far.
    pub(crate) fn kicked(&self) -> u64 {
        self.kicked.load(Ordering::Relaxed)
    }

    /// Kicks the watches of `services`, or every watch with `all`.
    fn kick(&self, services: &HashSet<String>, all: bool) {
        let kicks = self.kicks();
        let mut n = 0;
        let mut wake = |list: &Vec<(u64, Arc<Notify>)>| {
            for (_, notify) in list {
                notify.notify_one();
                n += 1;
            }
        };
        if all {
            kicks.by_service.values().for_each(&mut wake);
        } else {
            for s in services {
                if let Some(list) = kicks.by_service.get(s) {
                    wake(list);
                }
            }
        }
        self.kicked.fetch_add(n, Ordering::Relaxed);
    }
}

/// A watch's place in the feed's list: kicked when its service changes,
/// removed on drop.
pub(crate) struct KickGuard {
    client: ConsulClient,
    service: String,
    id: u64,
    notify: Arc<Notify>,
}

impl KickGuard {
    pub(crate) fn new(client: &ConsulClient, service: &str) -> Self {
        let notify = Arc::new(Notify::new());
        let id = {
            let mut kicks = client.feed().kicks();
            kicks.next += 1;
            let id = kicks.next;
            kicks
                .by_service
                .entry(service.to_owned())
                .or_default()
                .push((id, notify.clone()));
            id
        };
        Self {
            client: client.clone(),
            service: service.to_owned(),
            id,
            notify,
        }
    }

    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for KickGuard {
    fn drop(&mut self) {
        let mut kicks = self.client.feed().kicks();
        if let Some(list) = kicks.by_service.get_mut(&self.service) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                kicks.by_service.remove(&self.service);
            }
        }
    }
}

/// Starts the client's feed if its watches take turns and it is not
/// running. Needs a tokio runtime (watches are spawned on one).
pub(crate) fn ensure_running(client: &ConsulClient) {
    if !client.feed_wanted() || client.feed().running.swap(true, Ordering::SeqCst) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(run(client.downgrade()));
        }
        Err(_) => client.feed().running.store(false, Ordering::SeqCst),
    }
}

/// One check of the feed's answer: what is diffed.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FeedCheck<'a> {
    #[serde(default, borrow)]
    node: Cow<'a, str>,
    #[serde(rename = "CheckID", default, borrow)]
    check_id: Cow<'a, str>,
    #[serde(default, borrow)]
    status: Cow<'a, str>,
    #[serde(default, borrow)]
    service_name: Cow<'a, str>,
    #[serde(rename = "ServiceID", default, borrow)]
    service_id: Cow<'a, str>,
}

/// (node, check ID) → (status, service name, service ID).
type CheckList = HashMap<(String, String), (String, String, String)>;

/// Parses a feed answer into the list it is diffed as.
fn parse(body: &[u8]) -> Result<CheckList, DiscoveryError> {
    let checks: Vec<FeedCheck<'_>> = serde_json::from_slice(body).map_err(|e| {
        DiscoveryError::invalid_response(format!("health state answer is not a check list: {e}"))
    })?;
    Ok(checks
        .into_iter()
        .map(|c| {
            (
                (c.node.into_owned(), c.check_id.into_owned()),
                (
                    c.status.into_owned(),
                    c.service_name.into_owned(),
                    c.service_id.into_owned(),
                ),
            )
        })
        .collect())
}

/// The services whose checks differ between `old` and `new`, and whether a
/// node check (no service) did.
fn diff(old: &CheckList, new: &CheckList) -> (HashSet<String>, bool) {
    let mut services = HashSet::new();
    let mut node = false;
    let mut note = |(_, name, _): &(String, String, String)| {
        if name.is_empty() {
            node = true;
        } else {
            services.insert(name.clone());
        }
    };
    for (k, v) in new {
        match old.get(k) {
            Some(o) if o == v => {}
            Some(o) => {
                note(o);
                note(v);
            }
            None => note(v),
        }
    }
    for (k, v) in old {
        if !new.contains_key(k) {
            note(v);
        }
    }
    (services, node)
}

async fn run(weak: WeakClient) {
    loop {
        if let Some(client) = weak.upgrade() {
            feed_loop(&client).await;
            client.feed().running.store(false, Ordering::SeqCst);
            // A watch that started while this one was stopping saw it
            // running and started none: look again.
            if client.feed_wanted() && !client.feed().running.swap(true, Ordering::SeqCst) {
                continue;
            }
        }
        return;
    }
}

/// The states the feed follows, one blocking query each.
pub(crate) const FEED_STATES: [&str; 2] = ["critical", "warning"];

/// Runs while the client's watches take turns.
async fn feed_loop(client: &ConsulClient) {
    // One blocking permit per query, held while the feed runs.
    let mut slots = 0;
    while slots < FEED_STATES.len() {
        let slot = tokio::select! {
            s = client.take_blocking_slot() => s,
            () = stopped(client) => break,
        };
        if slot.is_err() {
            break;
        }
        slots += 1;
    }
    if slots == FEED_STATES.len() {
        tracing::debug!("consul change feed started");
        tokio::join!(
            follow(client, FEED_STATES[0]),
            follow(client, FEED_STATES[1])
        );
        tracing::debug!("consul change feed stopped: the watches no longer take turns");
    }
    for _ in 0..slots {
        client.return_blocking_slot();
    }
}

/// Follows the checks in `state` until the feed is no longer wanted.
async fn follow(client: &ConsulClient, state: &str) {
    let feed = client.feed();
    let mut backoff =
        Backoff::new(Duration::from_millis(500), 2.0, Duration::from_secs(30)).session();
    let mut index = 0;
    let mut last: Option<CheckList> = None;
    // A server that ignores `index` (or answers every write at once) must
    // not make the feed spin: at most 10 answers a second after a burst of
    // 10; each answer covers every change since the last.
    let mut bucket = TokenBucket::new(FEED_BURST, FEED_MIN_INTERVAL);
    while client.feed_wanted() {
        tokio::select! {
            () = bucket.acquire() => {}
            () = stopped(client) => continue,
        }
        let answer = tokio::select! {
            a = client.health_state_held(state, None, index, Some(FEED_WAIT)) => a,
            () = stopped(client) => continue,
        };
        let parsed = answer.and_then(|a| {
            let new_index = a
                .index
                .ok_or_else(|| DiscoveryError::invalid_response("answer has no X-Consul-Index"))?;
            Ok((new_index, parse(&a.body)?))
        });
        match parsed {
            Ok((new_index, list)) => {
                backoff.reset();
                index = if new_index < index {
                    0
                } else {
                    new_index.max(1)
                };
                feed.answers.fetch_add(1, Ordering::Relaxed);
                if let Some(old) = &last {
                    let (services, node) = diff(old, &list);
                    if node || !services.is_empty() {
                        tracing::debug!(
                            state,
                            changed = services.len(),
                            node,
                            "consul change feed: kicking watches"
                        );
                        feed.kick(&services, node);
                    }
                }
                last = Some(list);
            }
            Err(e) => {
                index = 0;
                let delay = backoff.next_delay();
                tracing::debug!(state, error = %e, retry_in = ?delay, "consul change feed backing off");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(client) => {}
                }
            }
        }
    }
}

/// Completes when the feed should look again whether it is still wanted.
async fn stopped(client: &ConsulClient) {
    loop {
        // Registered before the check, so a change right after it is not
        // missed (`notify_waiters` stores nothing).
        let told = client.feed().recheck.notified();
        tokio::pin!(told);
        told.as_mut().enable();
        if !client.feed_wanted() {
            return;
        }
        told.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_names_the_services_whose_checks_moved() {
        let old = parse(
            br#"[{"Node":"n1","CheckID":"service:a1","Status":"critical","ServiceName":"a","ServiceID":"a1"},
                 {"Node":"n1","CheckID":"service:b1","Status":"warning","ServiceName":"b","ServiceID":"b1"},
                 {"Node":"n1","CheckID":"service:c1","Status":"critical","ServiceName":"c","ServiceID":"c1"}]"#,
        )
        .unwrap();
        let new = parse(
            br#"[{"Node":"n1","CheckID":"service:a1","Status":"critical","ServiceName":"a","ServiceID":"a1","Output":"new"},
                 {"Node":"n1","CheckID":"service:b1","Status":"critical","ServiceName":"b","ServiceID":"b1"},
                 {"Node":"n1","CheckID":"service:d1","Status":"critical","ServiceName":"d","ServiceID":"d1"}]"#,
        )
        .unwrap();
        let (services, node) = diff(&old, &new);
        let mut services: Vec<_> = services.into_iter().collect();
        services.sort();
        assert_eq!(services, ["b", "c", "d"], "a: same status; c left, d came");
        assert!(!node);
        let dead = parse(br#"[{"Node":"n2","CheckID":"serfHealth","Status":"critical"}]"#).unwrap();
        assert!(diff(&new, &dead).1, "a node check kicks every watch");
        assert!(parse(b"{}").is_err());
    }
}
