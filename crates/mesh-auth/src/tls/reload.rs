//! Rebuilding TLS material when its files change, without a restart.
//!
//! Certificates are short-lived in a mesh (SPIFFE SVIDs live for hours), so
//! they must rotate while the process runs. The handshake path asks
//! [`Reloading::check`]; at most once per interval that costs one `stat` per
//! file, and only a changed modification time or size re-reads and re-parses.
//! The material itself sits in an [`ArcSwap`], so handshakes never wait on a
//! lock. A rebuild that fails (a half-written file, a key that does not match)
//! keeps the previous material and is retried at the next interval.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::pem::PemCell;
use crate::error::TlsError;

type Stamp = Option<(SystemTime, u64)>;
type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;
type AfterReload = Box<dyn Fn() + Send + Sync>;

pub(crate) struct Reloading<T> {
    what: &'static str,
    current: ArcSwap<T>,
    files: Vec<PathBuf>,
    /// In-memory documents: a new version rebuilds at the next check,
    /// without waiting for the interval.
    cells: Vec<PemCell>,
    /// The sum of the cells' versions the current material was built from.
    cells_seen: AtomicU64,
    stamps: Mutex<(Vec<Stamp>, u64)>,
    build: Build<T>,
    after_reload: AfterReload,
    interval_ms: u64,
    origin: Instant,
    next_check_ms: AtomicU64,
}

impl<T> Reloading<T> {
    pub(crate) fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        cells: Vec<PemCell>,
        interval: Duration,
        build: Build<T>,
        after_reload: AfterReload,
    ) -> Result<Self, TlsError> {
        // Stamp before building, so a write racing the build is seen next time.
        let stamps = stamp_all(&files);
        let versions = versions(&cells);
        let first = build()?;
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        Ok(Self {
            what,
            current: ArcSwap::from_pointee(first),
            files,
            cells,
            cells_seen: AtomicU64::new(versions),
            stamps: Mutex::new((stamps, versions)),
            build,
            after_reload,
            interval_ms,
            origin: Instant::now(),
            next_check_ms: AtomicU64::new(interval_ms),
        })
    }

    /// The material in use now.
    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<T>> {
        self.current.load()
    }

    /// Reloads if the interval has passed and a file changed. Cheap otherwise:
    /// one clock read and one atomic load.
    pub(crate) fn check(&self) {
        if !self.cells.is_empty()
            && versions(&self.cells) != self.cells_seen.load(Ordering::Acquire)
        {
            let _ = self.reload_if_changed();
            return;
        }
        if self.files.is_empty() {
            return;
        }
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_check_ms.load(Ordering::Relaxed);
        if now < next {
            return;
        }
        let after = now.saturating_add(self.interval_ms);
        // One handshake wins the check; the others go on with the current material.
        if self
            .next_check_ms
            .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let _ = self.reload_if_changed();
        }
    }

    /// Re-reads the files now if any changed. `Ok(true)` when new material is
    /// in use; on error the previous material stays.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let mut stamps = self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = (stamp_all(&self.files), versions(&self.cells));
        if *stamps == fresh {
            return Ok(false);
        }
        match (self.build)() {
            Ok(material) => {
                self.current.store(Arc::new(material));
                self.cells_seen.store(fresh.1, Ordering::Release);
                *stamps = fresh;
                (self.after_reload)();
                tracing::info!(material = self.what, "TLS material reloaded");
                Ok(true)
            }
            Err(err) => {
                // Not again at every handshake: the next `set` retries.
                self.cells_seen.store(fresh.1, Ordering::Release);
                tracing::warn!(
                    material = self.what,
                    kind = %err.kind(),
                    error = %err,
                    "TLS material changed but does not load; keeping the previous one"
                );
                Err(err)
            }
        }
    }
}

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("files", &self.files)
            .field("interval_ms", &self.interval_ms)
            .finish_non_exhaustive()
    }
}

fn versions(cells: &[PemCell]) -> u64 {
    cells.iter().map(PemCell::version).sum()
}

fn stamp_all(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn checks_at_most_once_per_interval_and_only_rebuilds_on_change() {
        let dir = std::env::temp_dir().join(format!("mesh-auth-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.pem");
        std::fs::write(&path, "one").unwrap();
        let builds = Arc::new(AtomicUsize::new(0));
        let (b, p) = (builds.clone(), path.clone());
        let r = Reloading::new(
            "test",
            vec![path.clone()],
            Vec::new(),
            Duration::from_secs(10),
            Box::new(move || {
                b.fetch_add(1, Ordering::SeqCst);
                Ok(std::fs::read_to_string(&p).unwrap())
            }),
            Box::new(|| {}),
        )
        .unwrap();
        assert_eq!(**r.current(), "one");
        std::fs::write(&path, "two!").unwrap();
        r.check(); // interval not passed yet
        assert_eq!(**r.current(), "one");
        tokio::time::advance(Duration::from_secs(11)).await;
        r.check();
        assert_eq!(**r.current(), "two!");
        tokio::time::advance(Duration::from_secs(11)).await;
        r.check(); // nothing changed: no rebuild
        assert_eq!(builds.load(Ordering::SeqCst), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
