//! proptest: the breaker against a reference model of the seed's state machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use http::Response;
use mesh_breaker::{BreakerConfig, BreakerOpen, CircuitBreakerLayer, CircuitState};
use mesh_core::BoxError;
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt};

#[derive(Debug, Clone, Copy)]
enum Op {
    Call(u16),
    Advance(u64),
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![Just(200u16), Just(500), Just(503), Just(404)].prop_map(Op::Call),
        2 => (0u64..40).prop_map(Op::Advance),
        1 => Just(Op::Reset),
    ]
}

/// The seed's breaker, written as plainly as possible.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Model {
    Closed { failures: u32 },
    Open { until: u64 },
    HalfOpen { successes: u32 },
}

struct Reference {
    state: Model,
    now: u64,
    threshold: u32,
    recovery: u64,
    probes: u32,
}

impl Reference {
    /// Returns whether the call reaches the service.
    fn call(&mut self, status: u16) -> bool {
        if let Model::Open { until } = self.state {
            if self.now < until {
                return false;
            }
            self.state = Model::HalfOpen { successes: 0 };
        }
        let failure = status >= 500;
        let ignored = (400..500).contains(&status);
        self.state = match self.state {
            Model::Closed { failures } if failure => {
                if failures + 1 >= self.threshold {
                    Model::Open {
                        until: self.now + self.recovery,
                    }
                } else {
                    Model::Closed {
                        failures: failures + 1,
                    }
                }
            }
            Model::Closed { failures } if ignored => Model::Closed { failures },
            Model::Closed { .. } => Model::Closed { failures: 0 },
            Model::HalfOpen { .. } if failure => Model::Open {
                until: self.now + self.recovery,
            },
            Model::HalfOpen { successes } if ignored => Model::HalfOpen { successes },
            Model::HalfOpen { successes } if successes + 1 >= self.probes => {
                Model::Closed { failures: 0 }
            }
            Model::HalfOpen { successes } => Model::HalfOpen {
                successes: successes + 1,
            },
            open @ Model::Open { .. } => open,
        };
        true
    }

    fn state(&self) -> CircuitState {
        match self.state {
            Model::Closed { .. } => CircuitState::Closed,
            Model::Open { .. } => CircuitState::Open,
            Model::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

fn run(threshold: u32, recovery: u64, probes: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let status = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (status.clone(), hits.clone());
        let inner = tower::service_fn(move |()| {
            h.fetch_add(1, Ordering::SeqCst);
            let code = s.load(Ordering::SeqCst);
            async move { Ok::<_, BoxError>(Response::builder().status(code).body(()).unwrap()) }
        });
        let mut svc = CircuitBreakerLayer::new(BreakerConfig {
            consecutive_failures: Some(threshold),
            recovery_timeout: Duration::from_secs(recovery),
            max_open_time: Duration::from_secs(recovery),
            half_open_max_calls: probes,
            ..BreakerConfig::default()
        })
        .unwrap()
        .layer(inner);
        let handle = svc.handle();
        let mut model = Reference {
            state: Model::Closed { failures: 0 },
            now: 0,
            threshold,
            recovery,
            probes,
        };
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Call(code) => {
                    status.store(code, Ordering::SeqCst);
                    let before = hits.load(Ordering::SeqCst);
                    let result = svc.ready().await.unwrap().call(()).await;
                    let reached = hits.load(Ordering::SeqCst) > before;
                    prop_assert_eq!(reached, model.call(code), "op {} {:?}", i, op);
                    if !reached {
                        let e = result.unwrap_err();
                        prop_assert!(e.downcast_ref::<BreakerOpen>().is_some());
                    }
                }
                Op::Advance(secs) => {
                    tokio::time::advance(Duration::from_secs(secs)).await;
                    model.now += secs;
                }
                Op::Reset => {
                    handle.reset();
                    model.state = Model::Closed { failures: 0 };
                }
            }
            // The breaker moves to half-open lazily, on the next call.
            let expected = model.state();
            prop_assert_eq!(handle.state(), expected, "after op {} {:?}", i, op);
            if let Model::Open { until } = model.state {
                let remaining = handle.remaining_open_time().unwrap();
                prop_assert_eq!(
                    remaining,
                    Duration::from_secs(until.saturating_sub(model.now))
                );
            }
            // The published signal turns available by itself when the open
            // period ends, before any call moves the breaker to half-open.
            let available = handle.availability().is_available();
            let open_now = matches!(model.state, Model::Open { until } if model.now < until);
            prop_assert_eq!(available, !open_now);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn matches_the_reference_model(
        threshold in 1u32..5,
        recovery in 1u64..60,
        probes in 1u32..4,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(threshold, recovery, probes, &ops)?;
    }
}
