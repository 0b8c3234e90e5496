//! Behaviour of the strategies, ejection, slow start and concurrency, seen
//! through the public API only.

use std::collections::HashMap;
use std::time::Duration;

use mesh_balance::{BalanceConfig, Balancer, Strategy};
use mesh_core::availability::AvailabilityState;
use mesh_core::pushback::Pushback;
use mesh_core::{Endpoint, EndpointKey, Failure, Outcome, TriedEndpoints};

fn ep(name: &str, weight: u32) -> Endpoint {
    let port = 10_000 + name.bytes().map(u16::from).sum::<u16>();
    Endpoint::new(name, format!("127.0.0.1:{port}").parse().unwrap()).with_weight(weight)
}

fn balancer(strategy: Strategy) -> Balancer {
    Balancer::new(BalanceConfig {
        strategy,
        ..BalanceConfig::default()
    })
    .unwrap()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("e{i}")).collect()
}

/// Picks `n` times, recording success at once, and counts per endpoint.
fn count(b: &Balancer, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let g = b.pick(None).unwrap();
        *counts.entry(g.key().to_string()).or_default() += 1;
        g.record(Outcome::Success);
    }
    counts
}

#[test]
fn round_robin_is_exact() {
    let b = balancer(Strategy::RoundRobin);
    b.update(names(3).iter().map(|n| ep(n, 1)));
    let counts = count(&b, 300);
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    // And in order.
    let seq: Vec<_> = (0..6)
        .map(|_| b.pick(None).unwrap().key().to_string())
        .collect();
    assert_eq!(seq[0..3], seq[3..6]);
}

#[test]
fn smooth_weighted_round_robin_is_exact_per_cycle_and_interleaved() {
    let b = balancer(Strategy::WeightedRoundRobin);
    b.update([ep("a", 5), ep("b", 1), ep("c", 1), ep("d", 0)]);
    let seq: Vec<_> = (0..700)
        .map(|_| b.pick(None).unwrap().key().to_string())
        .collect();
    let counts = seq.iter().fold(HashMap::<&str, usize>::new(), |mut m, k| {
        *m.entry(k).or_default() += 1;
        m
    });
    assert_eq!(counts["a"], 500);
    assert_eq!(counts["b"], 100);
    assert_eq!(counts["c"], 100);
    assert!(!counts.contains_key("d"), "weight 0 drains");
    let longest_a_run = seq
        .chunk_by(|x, y| x == y)
        .filter(|r| r[0] == "a")
        .map(<[String]>::len)
        .max()
        .unwrap();
    assert!(longest_a_run <= 3, "not smooth: {longest_a_run}");
}

#[test]
fn weighted_random_within_tolerance() {
    fastrand::seed(7);
    let b = balancer(Strategy::Random);
    b.update([ep("a", 1), ep("b", 3), ep("c", 0)]);
    let counts = count(&b, 40_000);
    let share_b = counts["b"] as f64 / 40_000.0;
    // Expected 0.75; 5 standard deviations is about 0.011.
    assert!((share_b - 0.75).abs() < 0.015, "{share_b}");
    assert!(!counts.contains_key("c"));
}

#[test]
fn weights_bias_p2c_and_least_outstanding() {
    for strategy in [Strategy::P2cPeakEwma, Strategy::LeastOutstanding] {
        fastrand::seed(11);
        let b = balancer(strategy);
        b.update([ep("light", 1), ep("heavy", 4), ep("drained", 0)]);
        // Keep requests in flight so load matters.
        let mut held = Vec::new();
        for _ in 0..500 {
            held.push(b.pick(None).unwrap());
        }
        let heavy = held.iter().filter(|g| g.key().as_str() == "heavy").count();
        assert!(held.iter().all(|g| g.key().as_str() != "drained"));
        // Least loaded per unit of weight: about 4/5 of the in-flight requests.
        assert!((350..=450).contains(&heavy), "{strategy:?}: {heavy}");
    }
}

/// Simulates `rounds` requests; `latency(name)` and `fails(name)` describe
/// each endpoint. Returns the share that went to `target`.
#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn simulate(
    strategy: Strategy,
    target: &str,
    rounds: usize,
    latency: fn(&str) -> Duration,
    fails: fn(&str) -> bool,
) -> f64 {
    fastrand::seed(3);
    // The strategies alone: no outlier detection (tested on its own below).
    let b = Balancer::new(BalanceConfig {
        strategy,
        outlier: mesh_balance::OutlierConfig {
            enabled: false,
            ..Default::default()
        },
        ..BalanceConfig::default()
    })
    .unwrap();
    b.update(names(5).iter().map(|n| ep(n, 1)));
    let mut hits = 0u32;
    // Four requests in flight at a time, completing in latency order.
    let mut in_flight: Vec<(tokio::time::Instant, mesh_balance::LoadGuard, bool)> = Vec::new();
    for _ in 0..rounds {
        while in_flight.len() < 4 {
            let g = b.pick(None).unwrap();
            let name = g.key().to_string();
            if name == target {
                hits += 1;
            }
            let done = tokio::time::Instant::now() + latency(&name);
            in_flight.push((done, g, fails(&name)));
        }
        in_flight.sort_by_key(|(d, _, _)| *d);
        let (done, g, failed) = in_flight.remove(0);
        tokio::time::advance(done.saturating_duration_since(tokio::time::Instant::now())).await;
        g.record(if failed {
            Outcome::retryable()
        } else {
            Outcome::Success
        });
    }
    f64::from(hits) / rounds as f64
}

#[test]
fn p2c_sends_far_less_to_a_slow_endpoint_than_round_robin() {
    let latency = |n: &str| Duration::from_millis(if n == "e0" { 100 } else { 10 });
    let ok = |_: &str| false;
    let rr = simulate(Strategy::RoundRobin, "e0", 5_000, latency, ok);
    let p2c = simulate(Strategy::P2cPeakEwma, "e0", 5_000, latency, ok);
    assert!((rr - 0.2).abs() < 0.01, "{rr}");
    assert!(p2c < rr / 4.0, "p2c {p2c} vs round robin {rr}");
}

#[test]
fn p2c_sends_far_less_to_an_endpoint_that_fails_fast() {
    let latency = |n: &str| Duration::from_millis(if n == "e0" { 1 } else { 10 });
    let fails = |n: &str| n == "e0";
    let rr = simulate(Strategy::RoundRobin, "e0", 5_000, latency, fails);
    let p2c = simulate(Strategy::P2cPeakEwma, "e0", 5_000, latency, fails);
    assert!(rr > 0.19, "{rr}");
    assert!(p2c < rr / 4.0, "p2c {p2c} vs round robin {rr}");
}

#[test]
fn plain_peak_ewma_is_attracted_by_fast_failures() {
    // The weakness this crate fixes, shown with the penalty switched off:
    // failures answered at once pull the estimate down, not up.
    fastrand::seed(5);
    let plain = Balancer::new(BalanceConfig {
        failure_penalty: Duration::ZERO,
        ..BalanceConfig::default()
    })
    .unwrap();
    let penalised = balancer(Strategy::P2cPeakEwma);
    let estimate_after_fast_failures = |b: &Balancer| {
        b.update([ep("fast-fail", 1), ep("ok", 1)]);
        for _ in 0..20 {
            let g = b.pick(None).unwrap();
            if g.key().as_str() == "fast-fail" {
                g.record(Outcome::retryable());
            }
        }
        b.endpoint_stats(&EndpointKey::new("fast-fail"))
            .unwrap()
            .latency_estimate
    };
    let default_rtt = Duration::from_millis(30);
    assert!(estimate_after_fast_failures(&plain) < default_rtt);
    assert!(estimate_after_fast_failures(&penalised) > default_rtt);
}

#[tokio::test(start_paused = true)]
async fn pushback_penalises_until_its_delay_passes() {
    fastrand::seed(1);
    let b = balancer(Strategy::LeastOutstanding);
    b.update([ep("a", 1), ep("b", 1)]);
    let a = loop {
        let g = b.pick(None).unwrap();
        if g.key().as_str() == "a" {
            break g;
        }
    };
    a.record(Outcome::Failure(Failure {
        retryable: true,
        pushback: Some(Pushback::After(Duration::from_secs(5))),
    }));
    // Even with b loaded, a is avoided while pushed back.
    let _held: Vec<_> = (0..3).map(|_| b.pick(None).unwrap()).collect();
    assert!(_held.iter().all(|g| g.key().as_str() == "b"));
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(b.pick(None).unwrap().key().as_str(), "a");
}

#[test]
fn ejection_is_capped_and_panic_mode_keeps_traffic_flowing() {
    fastrand::seed(9);
    let b = balancer(Strategy::RoundRobin);
    b.update(names(4).iter().map(|n| ep(n, 1)));
    for name in ["e0", "e1", "e2"] {
        b.availability(&EndpointKey::new(name))
            .unwrap()
            .set(AvailabilityState::Unavailable);
    }
    // Cap: 50% of 4 = 2 ejected; the third unavailable one keeps its share.
    let counts = count(&b, 400);
    let stats = b.stats();
    assert_eq!(stats.ejected, 2);
    assert!(stats.panic);
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.contains_key("e3"));
    // A breaker closes: the over-cap endpoint takes the freed slot.
    b.availability(&EndpointKey::new("e0"))
        .unwrap()
        .set(AvailabilityState::Available);
    b.stats();
    let stats = b.stats();
    assert_eq!(stats.ejected, 2);
    assert!(!stats.panic);
    let counts = count(&b, 400);
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.contains_key("e0") && counts.contains_key("e3"));
}

#[test]
fn the_last_endpoint_is_never_ejected() {
    for strategy in [
        Strategy::P2cPeakEwma,
        Strategy::LeastOutstanding,
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::Random,
    ] {
        let b = Balancer::new(BalanceConfig {
            strategy,
            max_ejection_percent: 100,
            ..BalanceConfig::default()
        })
        .unwrap();
        b.update([ep("only", 1)]);
        b.availability(&EndpointKey::new("only"))
            .unwrap()
            .set(AvailabilityState::Unavailable);
        assert_eq!(b.pick(None).unwrap().key().as_str(), "only", "{strategy:?}");
        assert!(b.stats().panic);
        // Two endpoints, both unavailable, 100%: one is ejected, one is not.
        b.update([ep("only", 1), ep("other", 1)]);
        b.availability(&EndpointKey::new("other"))
            .unwrap()
            .set(AvailabilityState::Unavailable);
        for _ in 0..10 {
            assert!(b.pick(None).is_some());
        }
        assert_eq!(b.stats().ejected, 1);
    }
}

#[test]
fn ejection_disabled_ignores_availability() {
    let b = Balancer::new(BalanceConfig {
        strategy: Strategy::RoundRobin,
        max_ejection_percent: 0,
        ..BalanceConfig::default()
    })
    .unwrap();
    b.update([ep("a", 1), ep("b", 1)]);
    b.availability(&EndpointKey::new("a"))
        .unwrap()
        .set(AvailabilityState::Unavailable);
    assert_eq!(count(&b, 10)["a"], 5);
}

#[test]
fn avoid_set_is_honoured_unless_nothing_else_is_available() {
    for strategy in [
        Strategy::P2cPeakEwma,
        Strategy::LeastOutstanding,
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::Random,
    ] {
        let b = balancer(strategy);
        b.update(names(3).iter().map(|n| ep(n, 1)));
        let tried = TriedEndpoints::new();
        tried.record(&EndpointKey::new("e0"));
        tried.record(&EndpointKey::new("e1"));
        for _ in 0..50 {
            assert_eq!(
                b.pick(Some(&tried)).unwrap().key().as_str(),
                "e2",
                "{strategy:?}"
            );
        }
        // The only untried endpoint is ejected: an avoided one is better than none.
        b.availability(&EndpointKey::new("e2"))
            .unwrap()
            .set(AvailabilityState::Unavailable);
        for _ in 0..50 {
            let k = b.pick(Some(&tried)).unwrap().key().to_string();
            assert!(k == "e0" || k == "e1", "{strategy:?}: {k}");
        }
        tried.record(&EndpointKey::new("e2"));
        assert!(b.pick(Some(&tried)).is_some());
    }
}

#[test]
fn empty_and_drained_sets_pick_nothing() {
    let b = Balancer::default();
    assert!(b.pick(None).is_none());
    b.update([ep("a", 0), ep("b", 0)]);
    assert!(b.pick(None).is_none());
    assert_eq!(b.len(), 2);
}

#[test]
fn swaps_keep_surviving_state() {
    let b = balancer(Strategy::RoundRobin);
    let changes = b.update([ep("a", 1), ep("b", 1)]);
    assert_eq!(changes.added.len(), 2);
    let held: Vec<_> = (0..4).map(|_| b.pick(None).unwrap()).collect();
    let a = EndpointKey::new("a");
    let avail = b.availability(&a).unwrap();
    // a stays (new weight), b goes, c comes.
    let changes = b.update([ep("a", 3), ep("c", 1)]);
    assert_eq!(changes.added, [EndpointKey::new("c")]);
    assert_eq!(changes.removed, [EndpointKey::new("b")]);
    let stats = b.endpoint_stats(&a).unwrap();
    assert_eq!((stats.in_flight, stats.weight), (2, 3));
    assert!(b.availability(&a).unwrap().ptr_eq(&avail));
    assert!(b.endpoint_stats(&EndpointKey::new("b")).is_none());
    // A new address under the same key is a new endpoint.
    let moved = Endpoint::new("a", "127.0.0.1:1".parse().unwrap());
    let changes = b.update([moved, ep("c", 1)]);
    assert_eq!(changes.added, std::slice::from_ref(&a));
    assert_eq!(changes.removed, std::slice::from_ref(&a));
    assert_eq!(b.endpoint_stats(&a).unwrap().in_flight, 0);
    drop(held);
    assert_eq!(b.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_new_endpoints_linearly() {
    fastrand::seed(21);
    let b = Balancer::new(BalanceConfig {
        strategy: Strategy::RoundRobin,
        slow_start_window: Duration::from_secs(100),
        slow_start_min_weight_percent: 10,
        ..BalanceConfig::default()
    })
    .unwrap();
    b.update([ep("old", 1)]);
    // The first set does not ramp.
    assert_eq!(count(&b, 10)["old"], 10);
    b.update([ep("old", 1), ep("new", 1)]);
    let share = |b: &Balancer| count(b, 20_000).get("new").copied().unwrap_or(0) as f64 / 20_000.0;
    // Round robin skips a ramping endpoint's turn with probability
    // 1 - factor: with two endpoints, new gets factor / 2.
    let at_start = share(&b);
    tokio::time::advance(Duration::from_secs(50)).await;
    let halfway = share(&b);
    tokio::time::advance(Duration::from_secs(51)).await;
    let done = share(&b);
    assert!((at_start - 0.05).abs() < 0.01, "{at_start}");
    assert!((halfway - 0.25).abs() < 0.015, "{halfway}");
    assert!((done - 0.5).abs() < 0.001, "{done}");
}

#[tokio::test(start_paused = true)]
async fn readmitted_endpoints_ramp_too() {
    fastrand::seed(4);
    let b = Balancer::new(BalanceConfig {
        strategy: Strategy::LeastOutstanding,
        slow_start_window: Duration::from_secs(10),
        ..BalanceConfig::default()
    })
    .unwrap();
    b.update([ep("a", 1), ep("b", 1)]);
    let a = EndpointKey::new("a");
    let signal = b.availability(&a).unwrap();
    signal.set(AvailabilityState::Unavailable);
    assert_eq!(b.stats().ejected, 1);
    signal.set(AvailabilityState::Available);
    assert_eq!(b.stats().ejected, 0);
    // Ramping at 10%: b takes ~10 in flight before a looks as cheap.
    let held: Vec<_> = (0..11).map(|_| b.pick(None).unwrap()).collect();
    let on_a = held.iter().filter(|g| *g.key() == a).count();
    assert!(on_a <= 2, "{on_a}");
    drop(held);
    tokio::time::advance(Duration::from_secs(10)).await;
    let held: Vec<_> = (0..10).map(|_| b.pick(None).unwrap()).collect();
    assert_eq!(held.iter().filter(|g| *g.key() == a).count(), 5);
}

#[test]
fn concurrent_picks_and_swaps_lose_no_in_flight_counts() {
    for strategy in [
        Strategy::P2cPeakEwma,
        Strategy::LeastOutstanding,
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::Random,
    ] {
        let b = balancer(strategy);
        let all = names(20);
        b.update(all.iter().map(|n| ep(n, 1)));
        let keys: Vec<_> = all.iter().map(|n| EndpointKey::new(n.as_str())).collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let b = b.clone();
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..5_000 {
                        if let Some(g) = b.pick(None) {
                            held.push(g);
                        }
                        if held.len() > 8 {
                            let g = held.swap_remove(i % held.len());
                            match (i + t) % 3 {
                                0 => g.record(Outcome::Success),
                                1 => g.record(Outcome::retryable()),
                                _ => drop(g),
                            }
                        }
                    }
                });
            }
            let b = b.clone();
            let all = &all;
            s.spawn(move || {
                for round in 0..200 {
                    let keep = (round % 10) + 5;
                    b.update(all[..keep].iter().map(|n| ep(n, (round % 3) as u32 + 1)));
                    std::thread::yield_now();
                }
                b.update(all.iter().map(|n| ep(n, 1)));
            });
        });
        assert_eq!(b.stats().in_flight, 0, "{strategy:?}");
        for k in &keys {
            assert_eq!(b.endpoint_stats(k).unwrap().in_flight, 0);
        }
    }
}

#[test]
fn bad_config_is_an_error() {
    let err = Balancer::new(BalanceConfig {
        ewma_decay: Duration::ZERO,
        ..BalanceConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.errors()[0].path(), "ewma_decay");
}

#[test]
fn a_picker_sees_every_update_at_once_and_counts_load_like_pick() {
    let b = balancer(Strategy::P2cPeakEwma);
    b.update([ep("a", 1)]);
    let mut picker = b.picker();
    let mut clone = picker.clone();
    assert_eq!(picker.pick(None).unwrap().key().as_str(), "a");
    b.update([ep("b", 1), ep("c", 1)]);
    let held: Vec<_> = (0..10).map(|_| picker.pick(None).unwrap()).collect();
    assert!(held.iter().all(|g| g.key().as_str() != "a"));
    assert_eq!(b.stats().in_flight, 10);
    assert_ne!(clone.pick(None).unwrap().key().as_str(), "a");
    drop(held);
    assert_eq!(b.stats().in_flight, 0);
    b.update([]);
    assert!(picker.pick(None).is_none());
    assert!(clone.pick(None).is_none());
}

#[test]
fn p2c_draws_cover_the_set() {
    let b = balancer(Strategy::P2cPeakEwma);
    b.update(names(64).iter().map(|n| ep(n, 1)));
    assert_eq!(count(&b, 20_000).len(), 64);
    let b = balancer(Strategy::P2cPeakEwma);
    b.update(names(2).iter().map(|n| ep(n, 1)));
    assert_eq!(count(&b, 100).len(), 2);
}

/// Success-rate outlier detection: two of six endpoints failing 30 % of
/// their calls are ejected within a few intervals (a consecutive-failure
/// breaker rarely sees five in a row at 30 %), never more than the cap, and
/// they come back after the ejection time.
#[tokio::test(start_paused = true)]
async fn gray_failures_are_ejected_by_success_rate() {
    fastrand::seed(11);
    let b = Balancer::new(BalanceConfig {
        strategy: Strategy::RoundRobin,
        ..BalanceConfig::default()
    })
    .unwrap();
    b.update(names(6).iter().map(|n| ep(n, 1)));
    let gray = |n: &str| n == "e0" || n == "e1";
    let mut hits = HashMap::<String, u32>::new();
    let mut late = 0u32;
    let mut total_late = 0u32;
    // 600 calls per 100 ms, 3 s in all.
    for step in 0..30 {
        for _ in 0..600 {
            let g = b.pick(None).unwrap();
            let name = g.key().to_string();
            *hits.entry(name.clone()).or_default() += 1;
            if step >= 20 {
                total_late += 1;
                if gray(&name) {
                    late += 1;
                }
            }
            let failed = gray(&name) && fastrand::f64() < 0.3;
            g.record(if failed {
                Outcome::retryable()
            } else {
                Outcome::Success
            });
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let stats = b.stats();
    assert_eq!(stats.ejected, 2, "{stats:?}");
    assert!(!stats.panic);
    assert_eq!(late, 0, "ejected gray endpoints get no traffic: {hits:?}");
    assert!(total_late > 0);
    // Their share over the whole run is far below their fair 1/3.
    let gray_share = f64::from(hits["e0"] + hits["e1"]) / f64::from(hits.values().sum::<u32>());
    assert!(gray_share < 0.2, "{gray_share} {hits:?}");
    // The last interval's success rate, as the admin view shows it: a
    // healthy endpoint's is 1, a gray one's (measured before its
    // ejection) is about 0.7.
    let rate = |name: &str| {
        b.endpoint_stats(ep(name, 1).key())
            .unwrap()
            .recent_success_rate
    };
    assert_eq!(rate("e2"), Some(1.0));
    assert!(rate("e0").is_some_and(|r| r < 0.9), "{:?}", rate("e0"));
    // After the ejection (10 s base) they take traffic again.
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut back = 0;
    for _ in 0..600 {
        let g = b.pick(None).unwrap();
        if gray(g.key().as_str()) {
            back += 1;
        }
        g.record(Outcome::Success);
    }
    assert!(back > 100, "{back}");
}

/// Healthy endpoints with a little noise are never ejected, and a service
/// whose endpoints all fail alike ejects none (the median moves with them).
#[tokio::test(start_paused = true)]
async fn the_outlier_detector_compares_with_peers_not_with_perfection() {
    fastrand::seed(12);
    for fail_rate in [0.01, 0.4] {
        let b = Balancer::new(BalanceConfig {
            strategy: Strategy::RoundRobin,
            ..BalanceConfig::default()
        })
        .unwrap();
        b.update(names(6).iter().map(|n| ep(n, 1)));
        for _ in 0..30 {
            for _ in 0..600 {
                let g = b.pick(None).unwrap();
                let failed = fastrand::f64() < fail_rate;
                g.record(if failed {
                    Outcome::retryable()
                } else {
                    Outcome::Success
                });
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(b.stats().ejected, 0, "fail rate {fail_rate}");
    }
}

/// Picks until `name` is chosen, then records a success after `latency`.
async fn measure_once(b: &Balancer, name: &str, latency: Duration) {
    // The others' picks stay in flight (unrecorded) until `name` is chosen:
    // idle look-alikes take turns, so the one just measured would otherwise
    // lose to every idle peer.
    let mut others = Vec::new();
    let g = loop {
        let g = b.pick(None).unwrap();
        if g.key().as_str() == name {
            break g;
        }
        others.push(g);
    };
    drop(others);
    tokio::time::advance(latency).await;
    g.record(Outcome::Success);
}

/// Warms `name` up: three successes, the first (a cold connection's) slow.
async fn measure(b: &Balancer, name: &str, latency: Duration) {
    measure_once(b, name, latency * 5).await;
    measure_once(b, name, latency).await;
    measure_once(b, name, latency).await;
}

fn estimate(b: &Balancer, name: &str) -> Duration {
    b.endpoint_stats(&EndpointKey::new(name))
        .unwrap()
        .latency_estimate
}

#[tokio::test(start_paused = true)]
async fn a_cold_endpoint_starts_from_its_measured_peers_median() {
    fastrand::seed(7);
    let b = balancer(Strategy::P2cPeakEwma);
    b.update([ep("a", 1), ep("b", 1), ep("c", 1), ep("d", 1)]);
    // Nobody measured: the configured guess.
    assert_eq!(estimate(&b, "d"), Duration::from_millis(30));
    // The median of the first responses replaces the guess (not the slow
    // first one), and the cold peers take it.
    measure_once(&b, "a", Duration::from_millis(10)).await;
    assert_eq!(estimate(&b, "a"), Duration::from_millis(30));
    measure_once(&b, "a", Duration::from_millis(2)).await;
    measure_once(&b, "a", Duration::from_millis(2)).await;
    assert_eq!(estimate(&b, "a"), Duration::from_millis(2));
    assert_eq!(estimate(&b, "d"), Duration::from_millis(2));
    // Two measured: the median of {2, 4} is 4 (the upper middle); one
    // failing peer would not move a median of more.
    measure(&b, "b", Duration::from_millis(4)).await;
    let d = estimate(&b, "d").as_secs_f64() * 1e3;
    assert!((3.9..=4.0).contains(&d), "{d}");
    // An endpoint that joins later starts from the peers too.
    measure(&b, "c", Duration::from_millis(3)).await;
    b.update([ep("a", 1), ep("b", 1), ep("c", 1), ep("d", 1), ep("e", 1)]);
    let e = estimate(&b, "e").as_secs_f64() * 1e3;
    assert!((2.9..=3.0).contains(&e), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_call_is_not_a_measurement() {
    let b = balancer(Strategy::P2cPeakEwma);
    b.update([ep("a", 1)]);
    let g = b.pick(None).unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    g.record(Outcome::retryable());
    // Blended into the guess at the failure penalty, not taken as its
    // latency: one refused connection does not make a replica look 1 s slow.
    let est = estimate(&b, "a");
    assert!(est > Duration::from_millis(30) && est < Duration::from_millis(31));
    // The first successes still replace it.
    measure(&b, "a", Duration::from_millis(1)).await;
    assert_eq!(estimate(&b, "a"), Duration::from_millis(1));
}

#[tokio::test(start_paused = true)]
async fn identical_cold_replicas_share_sequential_calls() {
    // The first measured replica no longer wins every comparison against a
    // cold one still at the 30 ms guess.
    for seed in 0..20 {
        fastrand::seed(seed);
        let b = balancer(Strategy::P2cPeakEwma);
        b.update([ep("a", 1), ep("b", 1)]);
        let mut a = 0;
        for _ in 0..50 {
            let g = b.pick(None).unwrap();
            a += usize::from(g.key().as_str() == "a");
            tokio::time::advance(Duration::from_micros(200)).await;
            g.record(Outcome::Success);
        }
        assert!((15..=35).contains(&a), "seed {seed}: a got {a} of 50");
    }
}
