//! `tower::discover` adapters: endpoint sets as streams of changes.
//!
//! tower's balancers (`tower::balance::p2c::Balance`) and tonic's
//! `Channel::balance_channel` consume *changes* (`Insert(key, service)`,
//! `Remove(key)`), not snapshots. [`Changes`] turns a source's snapshots into
//! that stream by diffing each new snapshot against the previous one, so a
//! balancer sees exactly one `Insert` per new or changed endpoint and one
//! `Remove` per vanished one, and nothing at all when a source republishes the
//! same content.
//!
//! [`Changes`] yields `Change<EndpointKey, Endpoint>` and implements
//! [`Discover`](tower::discover::Discover) (through tower's blanket impl for
//! `TryStream`s). [`Changes::map`] builds a service per endpoint for p2c;
//! [`Changes::forward`] feeds any `mpsc::Sender<Change<EndpointKey, T>>` of
//! tower's `Change`. tonic's `Channel::balance_channel` takes its own
//! `tonic::transport::channel::Change`: map each change onto it in a small
//! loop over [`Changes`] (`tests/tonic_balance.rs` shows the whole thing).
//!
//! # Example
//!
//! ```
//! use futures_util::StreamExt;
//! use mesh_core::Endpoint;
//! use mesh_discovery::ChannelSource;
//! use tower::discover::Change;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (source, discovery) = ChannelSource::new("users");
//! let mut changes = discovery.changes();
//! source.set([Endpoint::from_address("10.0.0.1:80".parse()?)]);
//! match changes.next().await {
//!     Some(Ok(Change::Insert(key, ep))) => assert_eq!(key, *ep.key()),
//!     other => panic!("{other:?}"),
//! }
//! source.set([]);
//! assert!(matches!(changes.next().await, Some(Ok(Change::Remove(_)))));
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use mesh_core::{Endpoint, EndpointKey};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::ReusableBoxFuture;
use tower::discover::Change;

use crate::source::{EndpointSet, SetChange};

type Changed = (
    Result<(), watch::error::RecvError>,
    watch::Receiver<EndpointSet>,
);

async fn changed(mut rx: watch::Receiver<EndpointSet>) -> Changed {
    let r = rx.changed().await;
    (r, rx)
}

/// A stream of `Change<EndpointKey, Endpoint>` from a source's snapshots; a
/// [`tower::discover::Discover`]. Made by
/// [`Discovery::changes`](crate::Discovery::changes).
///
/// The stream ends when the source stops.
pub struct Changes {
    next: ReusableBoxFuture<'static, Changed>,
    last: EndpointSet,
    pending: VecDeque<SetChange>,
    first: Option<watch::Receiver<EndpointSet>>,
}

impl Changes {
    pub(crate) fn new(rx: watch::Receiver<EndpointSet>) -> Self {
        let idle = rx.clone();
        Self {
            next: ReusableBoxFuture::new(changed(idle)),
            last: EndpointSet::empty(),
            pending: VecDeque::new(),
            first: Some(rx),
        }
    }

    /// The snapshot the changes yielded so far add up to (once the pending
    /// ones are taken).
    pub fn last_set(&self) -> &EndpointSet {
        &self.last
    }

    fn absorb(&mut self, set: EndpointSet) {
        self.pending.extend(self.last.diff(&set));
        self.last = set;
    }

    /// Builds a service for every inserted endpoint (`make` runs once per
    /// insertion): a [`Discover`](tower::discover::Discover) of services, ready
    /// for `tower::balance::p2c::Balance`.
    pub fn map<S, F>(self, make: F) -> MapChanges<F>
    where
        F: FnMut(&Endpoint) -> S,
    {
        MapChanges { inner: self, make }
    }

    /// Spawns a task that sends every change, mapped by `make`, into `tx`,
    /// until the source stops or the receiver is dropped.
    ///
    /// The sender carries tower's `Change`. tonic's `Channel::balance_channel`
    /// wants `tonic::transport::channel::Change` instead: iterate [`Changes`]
    /// and convert each change (see the module docs).
    pub fn forward<T, F>(
        self,
        tx: mpsc::Sender<Change<EndpointKey, T>>,
        make: F,
    ) -> tokio::task::JoinHandle<()>
    where
        T: Send + 'static,
        F: FnMut(&Endpoint) -> T + Send + 'static,
    {
        let mut stream = self.map(make);
        tokio::spawn(async move {
            while let Some(Ok(change)) =
                std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await
            {
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        })
    }
}

impl Stream for Changes {
    type Item = Result<Change<EndpointKey, Endpoint>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(mut rx) = this.first.take() {
            let set = rx.borrow_and_update().clone();
            this.next.set(changed(rx));
            this.absorb(set);
        }
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(match change {
                    SetChange::Upsert(ep) => Change::Insert(ep.key().clone(), ep),
                    SetChange::Remove(key) => Change::Remove(key),
                })));
            }
            let (result, mut rx) = ready!(this.next.poll(cx));
            if result.is_err() {
                // The source stopped; keep the future parked so we stay ended.
                this.next.set(changed(rx));
                return Poll::Ready(None);
            }
            let set = rx.borrow_and_update().clone();
            this.next.set(changed(rx));
            this.absorb(set);
        }
    }
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changes")
            .field("last_version", &self.last.version())
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// [`Changes`] with a service built per endpoint; see [`Changes::map`].
pub struct MapChanges<F> {
    inner: Changes,
    make: F,
}

// `make` is never pinned: it is only called through `&mut`.
impl<F> Unpin for MapChanges<F> {}

impl<S, F> Stream for MapChanges<F>
where
    F: FnMut(&Endpoint) -> S,
{
    type Item = Result<Change<EndpointKey, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Poll::Ready(
            ready!(Pin::new(&mut this.inner).poll_next(cx)).map(|change| {
                Ok(match change {
                    Ok(Change::Insert(k, ep)) => Change::Insert(k, (this.make)(&ep)),
                    Ok(Change::Remove(k)) => Change::Remove(k),
                    Err(never) => match never {},
                })
            }),
        )
    }
}

impl<F> fmt::Debug for MapChanges<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapChanges")
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChannelSource;
    use futures_util::StreamExt;

    fn ep(addr: &str) -> Endpoint {
        Endpoint::from_address(addr.parse().unwrap())
    }

    #[tokio::test]
    async fn yields_the_initial_set_then_diffs() {
        let (src, d) = ChannelSource::new("t");
        src.set([ep("10.0.0.1:1"), ep("10.0.0.2:1")]);
        let mut ch = d.changes();
        let mut inserted = 0;
        for _ in 0..2 {
            assert!(matches!(ch.next().await, Some(Ok(Change::Insert(..)))));
            inserted += 1;
        }
        assert_eq!(inserted, 2);
        src.set([ep("10.0.0.2:1"), ep("10.0.0.3:1")]);
        let a = ch.next().await.unwrap().unwrap();
        let b = ch.next().await.unwrap().unwrap();
        assert!(matches!(a, Change::Remove(ref k) if k.as_str() == "10.0.0.1:1"));
        assert!(matches!(b, Change::Insert(ref k, _) if k.as_str() == "10.0.0.3:1"));
        drop(src);
        drop(d);
        assert!(ch.next().await.is_none());
    }

    #[tokio::test]
    async fn forwards_into_a_channel() {
        let (src, d) = ChannelSource::new("t");
        let (tx, mut rx) = mpsc::channel(4);
        d.changes()
            .forward(tx, |e: &Endpoint| e.address().to_string());
        src.set([ep("10.0.0.1:1")]);
        match rx.recv().await.unwrap() {
            Change::Insert(_, s) => assert_eq!(s, "10.0.0.1:1"),
            Change::Remove(_) => panic!("remove"),
        }
    }
}
