//! mesh-core in one screen: classify responses, draw jittered backoff delays,
//! read server pushback, and parse endpoints.
//!
//! Run with `cargo run -p examples --example core`.

use std::time::Duration;

use mesh_core::backoff::{Backoff, Jitter};
use mesh_core::classify::{Classify, GrpcClassifier, HttpClassifier};
use mesh_core::{Address, BoxError, Endpoint, Outcome};

fn main() -> Result<(), BoxError> {
    println!("== Classifying HTTP responses (default HttpClassifier)");
    let http = HttpClassifier::default();
    for (status, retry_after) in [
        (200, None),
        (404, None),
        (500, None),
        (503, Some("2")),
        (429, Some("120")),
    ] {
        let mut builder = http::Response::builder().status(status);
        if let Some(v) = retry_after {
            builder = builder.header("retry-after", v);
        }
        let result: Result<_, BoxError> = Ok(builder.body(())?);
        println!(
            "  {status} retry-after={retry_after:?}: {}",
            describe(http.classify(&result))
        );
    }
    let refused: Result<http::Response<()>, BoxError> = Err(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    )));
    println!(
        "  connection refused: {}",
        describe(http.classify(&refused))
    );

    println!("\n== Classifying gRPC responses (default GrpcClassifier)");
    let grpc = GrpcClassifier::default();
    for (code, name) in [
        ("0", "OK"),
        ("5", "NOT_FOUND"),
        ("13", "INTERNAL"),
        ("14", "UNAVAILABLE"),
    ] {
        let result: Result<_, BoxError> = Ok(http::Response::builder()
            .header("grpc-status", code)
            .body(())?);
        println!("  {name}: {}", describe(grpc.classify(&result)));
    }

    println!("\n== Backoff: base 100ms, x2, cap 2s (each session draws its own randomness)");
    let backoff = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(2));
    backoff.validate()?;
    for jitter in [Jitter::None, Jitter::Full, Jitter::Decorrelated] {
        for session_no in 1..=2 {
            let mut session = backoff.with_jitter(jitter).session();
            let delays: Vec<String> = (0..6)
                .map(|_| format!("{:>6.0?}", session.next_delay()))
                .collect();
            println!("  {jitter:?} #{session_no}: {}", delays.join(" "));
        }
    }
    let bad = Backoff::new(Duration::ZERO, 0.5, Duration::from_secs(1));
    println!(
        "  a bad config is a typed error: {}",
        bad.validate().unwrap_err()
    );

    println!("\n== Endpoints");
    let ep = Endpoint::new("node-1/users-1", "10.0.0.7:8080".parse()?).with_weight(3);
    println!("  {ep:?}");
    for bad in ["10.0.0.7", "users:http", "bad host:80"] {
        println!("  {bad:?}: {}", bad.parse::<Address>().unwrap_err());
    }
    Ok(())
}

fn describe(outcome: Outcome) -> String {
    match outcome {
        Outcome::Success => "success".into(),
        Outcome::Ignored => "ignored (says nothing about the server)".into(),
        Outcome::Failure(f) => format!(
            "failure, {}{}",
            if outcome.is_retryable() {
                "retryable"
            } else {
                "not retryable"
            },
            f.pushback
                .map(|p| format!(", pushback {p:?}"))
                .unwrap_or_default()
        ),
    }
}
