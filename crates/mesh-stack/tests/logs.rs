//! The log lines an operator reads: an ejection, a retry and a give-up say
//! the service, the endpoint, the reason and the numbers. In a test binary
//! of its own: tracing caches whether a call site is enabled per process,
//! and tests of another binary running at the same time without a
//! subscriber would have it cached as disabled.

#![cfg(all(feature = "metrics", feature = "hyper", feature = "admin"))]

use std::io::Write;
use std::sync::{Arc, Mutex};

use mesh_testkit::backend::Behavior;

mod operator;
use operator::{eject_c, get, start};

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn ejections_retries_and_give_ups_are_logged_with_service_endpoint_and_numbers() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let s = start().await;
    eject_c(&s).await;
    for backend in [&s.a, &s.b, &s.c] {
        backend.set_behavior(Behavior::status(503));
    }
    assert_eq!(get(&s.users).await, Ok(503));

    let log = captured.text();
    let c = s.c.addr().to_string();
    let ejection = log
        .lines()
        .find(|l| l.contains("circuit breaker closed -> open"))
        .unwrap_or_else(|| panic!("no ejection line in:\n{log}"));
    assert!(ejection.contains("WARN"), "{ejection}");
    assert!(
        ejection.contains(&format!("endpoint=\"{c}\""))
            || ejection.contains(&format!("endpoint={c}")),
        "{ejection}"
    );
    assert!(ejection.contains("3 consecutive failures"), "{ejection}");
    let retry = log
        .lines()
        .find(|l| l.contains("retrying request"))
        .unwrap_or_else(|| panic!("no retry line in:\n{log}"));
    assert!(
        retry.contains("INFO") && retry.contains("service=\"users\"")
            || retry.contains("service=users"),
        "{retry}"
    );
    assert!(retry.contains("status 503"), "{retry}");
    let give_up = log
        .lines()
        .find(|l| l.contains("retry: giving up"))
        .unwrap_or_else(|| panic!("no give-up line in:\n{log}"));
    assert!(
        give_up.contains("max_retries") && give_up.contains("retries=2"),
        "{give_up}"
    );
}

/// Every logical call runs in a `mesh.call` span (service, method, outcome)
/// and each attempt in a `mesh.attempt` span inside it (service, endpoint
/// address, attempt number): a retried call shows attempts 1 and 2 on two
/// endpoints, under one call span.
#[cfg(feature = "spans")]
#[tokio::test(flavor = "current_thread")]
async fn calls_and_attempts_run_in_spans_with_service_endpoint_and_attempt() {
    use tracing_subscriber::fmt::format::FmtSpan;

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let s = start().await;
    // Round robin over a, b, c; c answers 503, so some call is retried.
    for _ in 0..3 {
        assert_eq!(get(&s.users).await, Ok(200));
    }

    let log = captured.text();
    let calls: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("close") && l.contains("mesh.call{") && !l.contains("mesh.attempt{"))
        .collect();
    assert_eq!(calls.len(), 3, "one call span per call:\n{log}");
    for call in &calls {
        assert!(
            call.contains("service=\"users\"") || call.contains("service=users"),
            "{call}"
        );
        assert!(call.contains("method=GET"), "{call}");
        assert!(
            call.contains("outcome=\"success\"") || call.contains("outcome=success"),
            "{call}"
        );
    }
    let attempts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("close") && l.contains("mesh.attempt{"))
        .collect();
    let c = s.c.addr().to_string();
    let on_c: Vec<&&str> = attempts.iter().filter(|l| l.contains(&c)).collect();
    assert!(!on_c.is_empty(), "round robin reached c:\n{log}");
    assert_eq!(
        attempts.len(),
        3 + on_c.len(),
        "one attempt per call and one retry per 503 from c:\n{log}"
    );
    let on_c = on_c[0];
    assert!(on_c.contains("mesh.call{"), "inside its call span: {on_c}");
    assert!(on_c.contains("attempt=1"), "{on_c}");
    assert!(
        attempts
            .iter()
            .any(|l| l.contains("attempt=2") && !l.contains(&c)),
        "the retry, on another endpoint:\n{log}"
    );
}
