//! Regenerates `BENCHMARKS.md`: runs every bench in `benches/`, reads
//! criterion's exact medians, runs the breaker bench's clean-round scaling
//! mode and the HTTP load bench, and writes one report
//! with the machine it ran on and which of the issues' targets the figures meet.
//!
//! Figures written by hand go stale and lose their context (which machine,
//! which load, which commit, which peer in the same run); this tool writes
//! them all from one run, and computes every "target met" from the figures.
//!
//! ```text
//! cargo run --release -p mesh-bench --bin bench-report
//! cargo run --release -p mesh-bench --bin bench-report -- --measurement-time 5 --benches breaker,retry
//! ```
//!
//! Flags: `--benches a,b` (default: every file in `benches/benches/`),
//! `--warm-up-time 1` and `--measurement-time 3` (seconds, passed to
//! criterion), `--http-load "--duration 3s --rounds 5"` (arguments of the
//! `http_load` bench), `--out PATH` (default `BENCHMARKS.md` at the
//! repository root), `--no-run` (rewrite the report from the last run's
//! results, keeping that run's command, date and load figures). Criterion's
//! results go to `$CARGO_TARGET_DIR/bench-report/` (`target/` by default),
//! one directory per bench, emptied before each run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// A bench run taking longer than this is stopped (and reported missing).
const BENCH_TIMEOUT: Duration = Duration::from_secs(15 * 60);

// ===== settings =====

#[derive(Debug)]
struct Settings {
    benches: Option<Vec<String>>,
    warm_up: String,
    measurement: String,
    http_load: String,
    out: PathBuf,
    run: bool,
}

fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn parse_args() -> Result<Settings, String> {
    let mut s = Settings {
        benches: None,
        warm_up: "1".into(),
        measurement: "3".into(),
        http_load: String::new(),
        out: root().join("BENCHMARKS.md"),
        run: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--benches" => {
                s.benches = Some(
                    value("--benches")?
                        .split(',')
                        .map(str::trim)
                        .filter(|b| !b.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
            "--warm-up-time" => s.warm_up = seconds(&value("--warm-up-time")?)?,
            "--measurement-time" => s.measurement = seconds(&value("--measurement-time")?)?,
            "--http-load" => s.http_load = value("--http-load")?,
            "--out" => s.out = PathBuf::from(value("--out")?),
            "--no-run" => s.run = false,
            "-h" | "--help" => {
                return Err("usage: bench-report [--benches a,b] [--warm-up-time S] \
                     [--measurement-time S] [--http-load ARGS] [--out PATH] [--no-run]"
                    .into());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(s)
}

fn seconds(v: &str) -> Result<String, String> {
    match v.parse::<f64>() {
        Ok(n) if n > 0.0 && n <= 600.0 => Ok(v.to_owned()),
        _ => Err(format!("{v:?}: expected seconds in (0, 600]")),
    }
}

// ===== machine =====

#[derive(Debug, Default)]
struct Machine {
    cpu: String,
    cores: usize,
    memory: String,
    kernel: String,
    rustc: String,
    commit: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or_else(
            || "unknown".into(),
            |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0),
        );
    let mut commit = output("git", &["rev-parse", "--short", "HEAD"]);
    if !output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" (with uncommitted changes)");
    }
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        memory,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        rustc: output("rustc", &["--version"]),
        commit,
    }
}

fn loadavg() -> Option<[f64; 3]> {
    let s = read("/proc/loadavg");
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn fmt_load(l: Option<[f64; 3]>) -> String {
    l.map_or_else(
        || "unknown".into(),
        |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"),
    )
}

/// `2026-11-27 14:03 UTC` from the system clock (no date crate needed).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

// ===== running =====

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn results_dir(bench: &str) -> PathBuf {
    let dir = target_dir().join("bench-report").join(bench);
    if dir.is_absolute() {
        dir
    } else {
        root().join(dir)
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs a command with inherited output, stopping it after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<(), String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{cmd:?} failed: {status}")),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} stopped after {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
    }
}

fn run_criterion_bench(bench: &str, s: &Settings) -> Result<(), String> {
    let dir = results_dir(bench);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!("bench-report: running {bench}");
    run_bounded(
        Command::new(cargo())
            .current_dir(root())
            .env("CRITERION_HOME", &dir)
            .args(["bench", "-q", "-p", "mesh-bench", "--bench", bench, "--"])
            .args([
                "--warm-up-time",
                &s.warm_up,
                "--measurement-time",
                &s.measurement,
            ]),
        BENCH_TIMEOUT,
    )
}

/// The breaker bench's clean-round scaling table (`BREAKER_CLEAN_SCALING=1`).
fn clean_scaling_file() -> PathBuf {
    results_dir("breaker_clean_scaling").join("scaling.md")
}

/// Runs the breaker bench's clean-round scaling mode, keeping its table.
fn run_clean_scaling() -> Result<(), String> {
    let file = clean_scaling_file();
    if let Some(dir) = file.parent() {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let out = std::fs::File::create(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    eprintln!("bench-report: running breaker (clean-round scaling)");
    run_bounded(
        Command::new(cargo())
            .current_dir(root())
            .env("BREAKER_CLEAN_SCALING", "1")
            .args(["bench", "-q", "-p", "mesh-bench", "--bench", "breaker"])
            .stdout(out),
        BENCH_TIMEOUT,
    )
}

/// The "2 threads / 1 thread" column of `variant`'s row in the clean-round table.
fn clean_ratio(table: &str, variant: &str) -> Option<f64> {
    let head = format!("| `{variant}` |");
    let row = table.lines().find(|l| l.starts_with(&head))?;
    row.split('|')
        .nth(4)?
        .trim()
        .trim_end_matches('x')
        .parse()
        .ok()
}

fn http_load_json() -> PathBuf {
    results_dir("http_load").join("http_load.json")
}

fn run_http_load(s: &Settings) -> Result<(), String> {
    let json = http_load_json();
    if let Some(dir) = json.parent() {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    eprintln!("bench-report: running http_load");
    run_bounded(
        Command::new(cargo())
            .current_dir(root())
            .args([
                "bench",
                "-q",
                "-p",
                "mesh-bench",
                "--bench",
                "http_load",
                "--",
            ])
            .args(s.http_load.split_whitespace())
            .arg("--json")
            .arg(&json),
        BENCH_TIMEOUT,
    )
}

/// The bench files in `benches/benches/`, sorted.
fn all_benches() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join("benches/benches"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    out.sort();
    out
}

// ===== criterion results =====

/// Medians (ns per iteration) by group, then variant, in the order found.
type Groups = BTreeMap<String, Vec<(String, f64)>>;

fn collect(dir: &Path, groups: &mut Groups) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            if let Some((group, variant, median)) = read_result(&path) {
                groups.entry(group).or_default().push((variant, median));
            }
        } else {
            collect(&path, groups);
        }
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn read_result(new: &Path) -> Option<(String, String, f64)> {
    let bench = read_json(&new.join("benchmark.json"))?;
    let estimates = read_json(&new.join("estimates.json"))?;
    let median = estimates["median"]["point_estimate"].as_f64()?;
    let mut group = bench["group_id"].as_str()?.to_owned();
    let mut variant: Vec<String> = [&bench["function_id"], &bench["value_str"]]
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    // `c.bench_function("group/name")` has no function id: split the name.
    if variant.is_empty() {
        let (g, v) = group.rsplit_once('/')?;
        variant.push(v.to_owned());
        group = g.to_owned();
    }
    Some((group, variant.join("/"), median))
}

// ===== tables =====

fn fmt_ns(ns: f64) -> String {
    let a = ns.abs();
    if a < 1_000.0 {
        format!("{ns:.1} ns")
    } else if a < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else if a < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn first_segment(variant: &str) -> &str {
    variant.split('/').next().unwrap_or(variant)
}

fn suffix(variant: &str) -> Option<&str> {
    variant.split_once('/').map(|(_, s)| s)
}

fn is_peer(name: &str) -> bool {
    ["tower", "failsafe", "recloser", "baseline_tower"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// A variant name split into family, tail and parameter: with the tail
/// `_headers` known, `mesh_retry_layer_headers` is family `mesh_retry_layer`
/// with tail `_headers`; `mesh/2_threads` is family `mesh`, parameter
/// `2_threads`. Rows compare with the baseline's and peers' rows of the same
/// tail and parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Name<'a> {
    family: &'a str,
    tail: &'a str,
    param: Option<&'a str>,
}

fn split_name<'a>(variant: &'a str, tails: &[&'a str]) -> Name<'a> {
    let first = first_segment(variant);
    let tail = tails
        .iter()
        .copied()
        .filter(|t| !t.is_empty() && first.len() > t.len() && first.ends_with(t))
        .max_by_key(|t| t.len())
        .unwrap_or("");
    Name {
        family: &first[..first.len() - tail.len()],
        tail,
        param: suffix(variant),
    }
}

/// The row of `family` matching `variant`'s tail and parameter
/// (`bare/2_threads` for `mesh/2_threads`, `bare_headers` for
/// `mesh_headers`), or its only row of that tail.
fn matching(rows: &[(String, f64)], tails: &[&str], family: &str, variant: &str) -> Option<f64> {
    let me = split_name(variant, tails);
    let candidates: Vec<(Name<'_>, f64)> = rows
        .iter()
        .map(|(v, m)| (split_name(v, tails), *m))
        .filter(|(n, _)| n.family == family)
        .collect();
    let same_tail: Vec<&(Name<'_>, f64)> = candidates
        .iter()
        .filter(|(n, _)| n.tail == me.tail)
        .collect();
    same_tail
        .iter()
        .find(|(n, _)| n.param == me.param)
        .copied()
        .or_else(|| (same_tail.len() == 1).then(|| same_tail[0]))
        .map(|(_, m)| *m)
}

/// The group's baseline: `bare`, else `baseline_bare_service`, else the
/// first variant named `baseline_*` that is not a peer.
fn baseline_name(rows: &[(String, f64)]) -> Option<String> {
    let names: Vec<&str> = rows.iter().map(|(v, _)| first_segment(v)).collect();
    ["bare", "baseline_bare_service"]
        .iter()
        .copied()
        .find(|n| names.contains(n))
        .or_else(|| {
            names
                .iter()
                .copied()
                .find(|n| n.starts_with("baseline") && !is_peer(n))
        })
        .map(str::to_owned)
}

fn group_table(out: &mut String, group: &str, rows: &[(String, f64)]) {
    let baseline = baseline_name(rows);
    // Tails are what the baseline's other rows add to its name (`bare_headers`).
    let tails: Vec<&str> = baseline.as_deref().map_or_else(Vec::new, |b| {
        rows.iter()
            .filter_map(|(v, _)| first_segment(v).strip_prefix(b))
            .filter(|t| t.starts_with('_'))
            .collect()
    });
    let family = |v: &str| split_name(v, &tails).family.to_owned();
    let is_baseline = |v: &str| Some(family(v).as_str()) == baseline.as_deref();
    // The baseline's rows first, then the rest by name.
    let mut rows: Vec<(String, f64)> = rows.to_vec();
    rows.sort_by_key(|(v, _)| (!is_baseline(v), v.clone()));
    let mut peers: Vec<String> = Vec::new();
    for (v, _) in &rows {
        let p = family(v);
        if is_peer(&p) && !peers.contains(&p) {
            peers.push(p);
        }
    }
    let _ = writeln!(out, "#### `{group}`\n");
    let mut header = String::from("| variant | median |");
    let mut rule = String::from("|---|---:|");
    if let Some(b) = &baseline {
        let _ = write!(header, " over `{b}` | × `{b}` |");
        rule.push_str("---:|---:|");
    }
    for p in &peers {
        let _ = write!(header, " × `{p}` |");
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for (variant, median) in &rows {
        let _ = write!(out, "| `{variant}` | {} |", fmt_ns(*median));
        if let Some(b) = &baseline {
            match matching(&rows, &tails, b, variant) {
                Some(base) if !is_baseline(variant) => {
                    let _ = write!(out, " {} | {:.2} |", fmt_ns(median - base), median / base);
                }
                _ => out.push_str(" | |"),
            }
        }
        for p in &peers {
            let mine = first_segment(variant).starts_with("mesh");
            match matching(&rows, &tails, p, variant) {
                Some(peer) if mine => {
                    let _ = write!(out, " {:.2} |", median / peer);
                }
                _ => out.push_str(" |"),
            }
        }
        out.push('\n');
    }
    // Thread scaling, where a group runs the same loop on 1 and 2 threads:
    // 2 threads do twice the calls, so throughput ratio = 2 * t1 / t2.
    let scaling: Vec<(String, f64)> = rows
        .iter()
        .filter_map(|(v, t1)| {
            let name = v.strip_suffix("/1_threads")?;
            let t2 = rows
                .iter()
                .find(|(w, _)| *w == format!("{name}/2_threads"))?
                .1;
            Some((name.to_owned(), 2.0 * t1 / t2))
        })
        .collect();
    if !scaling.is_empty() {
        let _ = writeln!(
            out,
            "\nTwo-thread throughput over one-thread throughput (2.00 is perfect scaling):\n"
        );
        let _ = writeln!(out, "| variant | 2 threads / 1 thread |\n|---|---:|");
        for (name, s) in scaling {
            let _ = writeln!(out, "| `{name}` | {s:.2}× |");
        }
    }
    out.push('\n');
}

// ===== targets =====

#[derive(Debug)]
struct Check {
    issue: &'static str,
    what: &'static str,
    target: &'static str,
    measured: Option<String>,
    met: Option<bool>,
}

/// Looks up medians by bench file, group and variant.
struct Results<'a>(&'a BTreeMap<String, Groups>);

impl Results<'_> {
    fn get(&self, bench: &str, group: &str, variant: &str) -> Option<f64> {
        self.0
            .get(bench)?
            .get(group)?
            .iter()
            .find(|(v, _)| v == variant)
            .map(|(_, m)| *m)
    }
}

fn checks(r: &Results<'_>, http: Option<&Value>, clean: Option<&str>) -> Vec<Check> {
    let mut out = Vec::new();
    let mut add = |issue, what, target, value: Option<(String, bool)>| {
        out.push(Check {
            issue,
            what,
            target,
            measured: value.as_ref().map(|(m, _)| m.clone()),
            met: value.map(|(_, ok)| ok),
        });
    };
    // Overhead of `variant` over `base` in one group.
    let over = |bench, group, variant, base| {
        Some(r.get(bench, group, variant)? - r.get(bench, group, base)?)
    };
    let bc = |v| over("breaker", "breaker_closed", v, "bare");
    let at_most = |v: Option<f64>, limit: f64| v.map(|v| (format!("+{}", fmt_ns(v)), v <= limit));
    // `peer` overhead / `mine` overhead >= `factor`.
    let times_less = |mine: Option<f64>, peer: Option<f64>, factor: f64| {
        let (mine, peer) = (mine?, peer?);
        let ratio = if mine <= 0.0 {
            f64::INFINITY
        } else {
            peer / mine
        };
        Some((
            format!("+{} vs +{} ({ratio:.1}×)", fmt_ns(mine), fmt_ns(peer)),
            ratio >= factor,
        ))
    };

    add(
        "3",
        "breaker, consecutive policy: overhead over bare",
        "≤ 15 ns",
        at_most(bc("mesh_consecutive"), 15.0),
    );
    add(
        "3",
        "breaker, count window: overhead over bare",
        "≤ 15 ns",
        at_most(bc("mesh_count_window"), 15.0),
    );
    add(
        "3",
        "breaker, time window: overhead over bare",
        "≤ 40 ns",
        at_most(bc("mesh_time_window"), 40.0),
    );
    for (what, variant) in [
        ("breaker, consecutive: below recloser", "mesh_consecutive"),
        ("breaker, count window: below recloser", "mesh_count_window"),
        ("breaker, time window: below recloser", "mesh_time_window"),
    ] {
        let v = bc(variant)
            .zip(bc("recloser"))
            .map(|(m, p)| (format!("+{} vs +{}", fmt_ns(m), fmt_ns(p)), m < p));
        add("3", what, "overhead < recloser's", v);
    }
    add(
        "3",
        "breaker, consecutive: less overhead than tower-resilience",
        "≥ 10×",
        times_less(bc("mesh_consecutive"), bc("tower_resilience"), 10.0),
    );
    let scaling = |v: &str| {
        let t1 = r.get("breaker", "breaker_contention", &format!("{v}/1_threads"))?;
        let t2 = r.get("breaker", "breaker_contention", &format!("{v}/2_threads"))?;
        let s = 2.0 * t1 / t2;
        // The clean rounds measure the breaker rather than the machine's
        // other work; the criterion group is shown beside them.
        match clean.and_then(|c| clean_ratio(c, v)) {
            Some(c) => Some((
                format!("{c:.2}× in clean rounds ({s:.2}× in the criterion group)"),
                c >= 1.6,
            )),
            None => Some((format!("{s:.2}×"), s >= 1.6)),
        }
    };
    add(
        "3",
        "breaker, consecutive: 2-thread / 1-thread throughput",
        "≥ 1.6×",
        scaling("mesh_consecutive"),
    );
    add(
        "3",
        "breaker, count window: 2-thread / 1-thread throughput",
        "≥ 1.6×",
        scaling("mesh_count_window"),
    );
    add(
        "3",
        "breaker, time window: 2-thread / 1-thread throughput",
        "≥ 1.6×",
        scaling("mesh_time_window"),
    );

    let rt = |v| over("retry", "retry_no_retry_path", v, "bare");
    add(
        "4",
        "retry, no-retry path: overhead over bare",
        "≤ 25 ns",
        at_most(rt("mesh_retry_layer"), 25.0),
    );
    add(
        "4",
        "retry, no-retry path: less overhead than tower-resilience",
        "≥ 2×",
        times_less(rt("mesh_retry_layer"), rt("tower_resilience_retry"), 2.0),
    );

    let p2c = |n: &str| {
        r.get(
            "balance",
            "balance_p2c_pick_record",
            &format!("mesh_p2c_peak_ewma/{n}"),
        )
    };
    add(
        "5",
        "balance, p2c pick + record at 16 endpoints",
        "≤ 40 ns",
        p2c("16").map(|v| (fmt_ns(v), v <= 40.0)),
    );
    add(
        "5",
        "balance, p2c at 10,000 endpoints / at 16",
        "≤ 1.5×",
        p2c("10000")
            .zip(p2c("16"))
            .map(|(a, b)| (format!("{:.2}×", a / b), a / b <= 1.5)),
    );

    let ro = |v| over("router", "router", v, "bare");
    add(
        "7",
        "router, p2c over 16 endpoints: overhead per call",
        "≤ 60 ns",
        at_most(ro("mesh_p2c_peak_ewma_16"), 60.0),
    );
    add(
        "7",
        "router: less overhead than Buffer<Balance<PeakEwma>>",
        "≥ 10×",
        times_less(
            ro("mesh_p2c_peak_ewma_16"),
            ro("tower_buffer_balance_peak_ewma_16"),
            10.0,
        ),
    );
    let ro_total = |v| r.get("router", "router", v);
    add(
        "7",
        "router, 10,000 endpoints / 16 (per call)",
        "≤ 1.5×",
        ro_total("mesh_p2c_peak_ewma_10000")
            .zip(ro_total("mesh_p2c_peak_ewma_16"))
            .map(|(a, b)| (format!("{:.2}×", a / b), a / b <= 1.5)),
    );

    add(
        "6",
        "discovery: parse + snapshot + diff of 10,000 instances",
        "≤ 20 ms",
        r.get("discovery", "consul_health_10k", "parse_snapshot_diff")
            .map(|v| (fmt_ns(v), v <= 20e6)),
    );

    let ratio = http.and_then(|h| h["throughput_ratio"].as_f64());
    add(
        "10",
        "HTTP load: mesh throughput / bare",
        "≥ 95 %",
        ratio.map(|x| (format!("{:.1} %", x * 100.0), x >= 0.95)),
    );
    let delta = http.and_then(|h| h["p99_delta_us"].as_f64());
    add(
        "10",
        "HTTP load: p99 added by the mesh",
        "≤ 50 µs",
        delta.map(|d| (format!("{d:+.1} µs"), d <= 50.0)),
    );
    out
}

/// One absolute-nanosecond target set against the reference figure its issue
/// measured on the issue author's machine, and the same reference measured
/// in this run.
struct Calibration {
    issue: &'static str,
    what: &'static str,
    target_ns: f64,
    /// The reference the issue quotes, in its words.
    reference: &'static str,
    /// The reference's figure in the issue, in ns.
    issue_ns: f64,
    /// The same reference in this run, in ns.
    here_ns: Option<f64>,
    /// Our figure the target applies to, in this run.
    ours_ns: Option<f64>,
}

/// The issues state absolute nanosecond targets beside a peer's figure
/// measured on the machine they were written on. This run measures the same
/// peer: the ratio says how much slower (or faster) this machine is, and the
/// target scaled by it is what the target means here. Informative only; the
/// verdicts above stay on the absolute figures.
fn calibrations(r: &Results<'_>) -> Vec<Calibration> {
    let over = |bench, group, variant, base| {
        Some(r.get(bench, group, variant)? - r.get(bench, group, base)?)
    };
    let bc = |v| over("breaker", "breaker_closed", v, "bare");
    let rt = |v| over("retry", "retry_no_retry_path", v, "bare");
    let tower_p2c = r.get(
        "balance",
        "balance_p2c_pick_record",
        "tower_p2c_pending_requests/16",
    );
    vec![
        Calibration {
            issue: "3",
            what: "breaker, consecutive policy, over bare",
            target_ns: 15.0,
            reference: "recloser +24 ns",
            issue_ns: 24.0,
            here_ns: bc("recloser"),
            ours_ns: bc("mesh_consecutive"),
        },
        Calibration {
            issue: "3",
            what: "breaker, count window, over bare",
            target_ns: 15.0,
            reference: "recloser +24 ns",
            issue_ns: 24.0,
            here_ns: bc("recloser"),
            ours_ns: bc("mesh_count_window"),
        },
        Calibration {
            issue: "4",
            what: "retry, no-retry path, over bare",
            target_ns: 25.0,
            reference: "tower-resilience retry +55 ns",
            issue_ns: 55.0,
            here_ns: rt("tower_resilience_retry"),
            ours_ns: rt("mesh_retry_layer"),
        },
        Calibration {
            issue: "5",
            what: "balance, p2c pick + record at 16",
            target_ns: 40.0,
            reference: "tower p2c `Balance<PendingRequests>`/16, 172 ns",
            issue_ns: 172.0,
            here_ns: tower_p2c,
            ours_ns: r.get(
                "balance",
                "balance_p2c_pick_record",
                "mesh_p2c_peak_ewma_picker/16",
            ),
        },
        Calibration {
            issue: "7",
            what: "router, p2c over 16, over bare",
            target_ns: 60.0,
            reference: "tower p2c `Balance`/16 called directly, 172 ns",
            issue_ns: 172.0,
            here_ns: tower_p2c,
            ours_ns: over("router", "router", "mesh_p2c_peak_ewma_16", "bare"),
        },
    ]
}

fn calibration_section(out: &mut String, r: &Results<'_>) {
    let _ = writeln!(
        out,
        "### The absolute targets on this machine\n\n\
         The issues set some targets in nanoseconds and quote, beside them, a \
         peer's figure measured on the machine they were written on. This run \
         measured the same peers; their ratio says how much slower this machine \
         is, and the target scaled by it is what the target asks of this \
         machine. This is context for reading the verdicts above, which stay on \
         the absolute figures. (The p2c rows use the balance bench's tower p2c \
         over `PendingRequests`, the closest to what the issues measured.)\n"
    );
    let _ = writeln!(
        out,
        "| issue | what | target | reference in the issue | same reference here | machine factor | target × factor | measured |\n\
         |---|---|---:|---|---:|---:|---:|---:|"
    );
    for c in calibrations(r) {
        let factor = c.here_ns.map(|h| h / c.issue_ns);
        let cell = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), fmt_ns);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.issue,
            c.what,
            fmt_ns(c.target_ns),
            c.reference,
            cell(c.here_ns),
            factor.map_or_else(|| "—".to_owned(), |f| format!("{f:.2}×")),
            cell(factor.map(|f| c.target_ns * f)),
            cell(c.ours_ns),
        );
    }
    out.push('\n');
}

// ===== report =====

fn http_section(out: &mut String, h: &Value) {
    let s = &h["settings"];
    let _ = writeln!(
        out,
        "{} rounds of {} s per variant (after {} s of warm-up each), alternating \
         bare/mesh and mesh/bare; {} calls in flight (closed loop) over {} \
         loopback server port(s); client runtime {} thread(s), server runtime \
         {} thread(s), both on this machine's {} core(s). Load average during \
         the bench: {} at start, {} at end.\n",
        s["rounds"],
        s["duration_secs"],
        s["warmup_secs"],
        s["concurrency"],
        s["servers"],
        s["client_threads"],
        s["server_threads"],
        s["cores"],
        h["load_average"]["start"].as_str().unwrap_or("?"),
        h["load_average"]["end"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        out,
        "| variant | req/s | p50 | p99 | p99.9 | calls | errors | retries |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for v in ["bare", "mesh"] {
        let x = &h[v];
        let f = |k: &str| x[k].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| {v} | {:.0} | {:.1} µs | {:.1} µs | {:.1} µs | {} | {} | {} |",
            f("rps"),
            f("p50_us"),
            f("p99_us"),
            f("p999_us"),
            x["ok"],
            x["errors"],
            x["retries"]
        );
    }
    let _ = writeln!(
        out,
        "\nMedians over the rounds; mesh throughput {:.1} % of bare, p99 {:+.1} µs.\n",
        h["throughput_ratio"].as_f64().unwrap_or(f64::NAN) * 100.0,
        h["p99_delta_us"].as_f64().unwrap_or(f64::NAN)
    );
    // Rounds of one number ran back to back: their ratio sees the same load.
    let rounds = h["rounds"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rps = |variant: &str, round: &Value| {
        rounds
            .iter()
            .find(|r| r["variant"] == variant && r["round"] == *round)
            .and_then(|r| r["rps"].as_f64())
    };
    let mut paired: Vec<f64> = rounds
        .iter()
        .filter(|r| r["variant"] == "mesh")
        .filter_map(|r| Some(rps("mesh", &r["round"])? / rps("bare", &r["round"])?))
        .collect();
    paired.sort_by(f64::total_cmp);
    if let Some(mid) = paired.get(paired.len() / 2) {
        let _ = writeln!(
            out,
            "Round by round (each mesh round against the bare round run next to it), \
             mesh throughput is {} % of bare; median {:.1} %.\n",
            paired
                .iter()
                .map(|r| format!("{:.1}", r * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
            mid * 100.0
        );
    }
    let _ = writeln!(out, "Per round, in the order run:\n");
    let _ = writeln!(out, "| round | variant | req/s | p50 | p99 | p99.9 | max |");
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|");
    for r in rounds {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            r["round"],
            r["variant"].as_str().unwrap_or("?"),
            f("rps"),
            f("p50_us"),
            f("p99_us"),
            f("p999_us"),
            f("max_us")
        );
    }
    out.push('\n');
}

#[allow(clippy::too_many_arguments)]
fn render(
    s: &Settings,
    command: &str,
    date: &str,
    m: &Machine,
    load: (Option<[f64; 3]>, Option<[f64; 3]>),
    benches: &[String],
    results: &BTreeMap<String, Groups>,
    http: Option<&Value>,
    clean: Option<&str>,
    failures: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Benchmarks\n\n<!-- Generated by benches/src/bin/bench-report.rs; do not edit by hand. -->\n"
    );
    let _ = writeln!(
        out,
        "Every figure below comes from one run of one command, on one machine; \
         each table compares variants measured in the same run. Absolute \
         figures depend on the machine and its load: read the ratios.\n"
    );
    let _ = writeln!(out, "- Command: `{command}`");
    let _ = writeln!(out, "- Date: {date}; commit {}", m.commit);
    let _ = writeln!(
        out,
        "- Criterion settings: `--warm-up-time {} --measurement-time {}`; medians of criterion's samples (ns per call)",
        s.warm_up, s.measurement
    );
    let _ = writeln!(
        out,
        "- Machine: {}, {} core(s), {} memory, Linux {}, {}",
        m.cpu, m.cores, m.memory, m.kernel, m.rustc
    );
    let _ = writeln!(
        out,
        "- Load average (1, 5, 15 min): {} at start, {} at end",
        fmt_load(load.0),
        fmt_load(load.1)
    );
    let busiest = [load.0, load.1]
        .iter()
        .flatten()
        .map(|l| l[0])
        .fold(0.0_f64, f64::max);
    if busiest >= 0.5 * m.cores as f64 {
        let _ = writeln!(
            out,
            "- **The machine was shared**: a 1-minute load average of {busiest:.1} on {} core(s) \
             means other work (builds, tests) ran during the benchmarks; figures are noisier \
             and slower than on an idle machine, and single results can be off by 2× or more.",
            m.cores
        );
    }
    for f in failures {
        let _ = writeln!(out, "- **Missing:** {f}");
    }
    out.push('\n');

    let checks = checks(&Results(results), http, clean);
    let met = checks.iter().filter(|c| c.met == Some(true)).count();
    let _ = writeln!(
        out,
        "## Targets from the issues\n\nComputed from the figures below: {met} of {} met.\n",
        checks.len()
    );
    if busiest >= m.cores as f64 {
        let _ = writeln!(
            out,
            "With more runnable work than cores during this run, these verdicts are \
             not conclusive: a missed target may be the load, not the code. Re-run on \
             an idle machine before acting on them.\n"
        );
    }
    let _ = writeln!(
        out,
        "| issue | what | target | measured | |\n|---|---|---|---|---|"
    );
    for c in &checks {
        let status = match c.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {status} |",
            c.issue,
            c.what,
            c.target,
            c.measured.as_deref().unwrap_or("—")
        );
    }
    out.push('\n');
    calibration_section(&mut out, &Results(results));
    if let Some(table) = clean {
        let _ = writeln!(
            out,
            "### Breaker: two-thread scaling in clean rounds\n\n\
             `BREAKER_CLEAN_SCALING=1 cargo bench -p mesh-bench --bench breaker` runs \
             2,000 short one- and two-thread rounds per contender and keeps the rounds \
             in which no thread waited for a CPU and both threads really ran at once \
             (see the bench's docs). On a shared machine the criterion contention group \
             below also measures the other work; these rounds measure what sharing one \
             breaker costs.\n"
        );
        out.push_str(table.trim());
        out.push_str("\n\n");
    }

    let _ = writeln!(out, "## HTTP load (`benches/benches/http_load.rs`)\n");
    let _ = writeln!(
        out,
        "The bare hyper-util legacy client against the same client under \
         `Mesh::http_client` with every default (retry, p2c router over a static \
         source, per-endpoint breaker, attempt timeout), against a hyper HTTP/1 \
         server answering `200 OK` on 127.0.0.1. Client and server share the \
         machine's cores.\n"
    );
    match http {
        Some(h) => http_section(&mut out, h),
        None => out.push_str("Not run.\n\n"),
    }

    let _ = writeln!(
        out,
        "## Criterion benches\n\n\"over\" is the median minus the baseline's \
         median (the variant's overhead); \"×\" columns divide the variant's \
         median by the baseline's or a peer's (below 1 is faster). Peer ratios \
         are shown for mesh variants. Where a group has no baseline, the table \
         has no such column.\n"
    );
    for bench in benches {
        let _ = writeln!(
            out,
            "### {bench} (`cargo bench -p mesh-bench --bench {bench}`)\n"
        );
        match results.get(bench) {
            Some(groups) if !groups.is_empty() => {
                for (group, rows) in groups {
                    group_table(&mut out, group, rows);
                }
            }
            _ => out.push_str("No results.\n\n"),
        }
    }
    out
}

fn main() -> ExitCode {
    let s = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-report: {e}");
            return ExitCode::from(2);
        }
    };
    let command =
        std::iter::once("cargo run --release -p mesh-bench --bin bench-report --".to_owned())
            .chain(std::env::args().skip(1).map(|a| {
                if a.contains(' ') || a.is_empty() {
                    format!("'{a}'")
                } else {
                    a
                }
            }))
            .collect::<Vec<_>>()
            .join(" ");
    let mut command = command.trim_end_matches(" --").to_owned();
    let mut date = utc_now();
    let mut load_start = loadavg();
    let mut m = machine();
    let mut s = s;
    let benches: Vec<String> = s
        .benches
        .clone()
        .unwrap_or_else(all_benches)
        .into_iter()
        .filter(|b| b != "http_load")
        .collect();
    let with_http = s
        .benches
        .as_ref()
        .is_none_or(|b| b.iter().any(|x| x == "http_load"));

    let mut failures = Vec::new();
    if s.run {
        for bench in &benches {
            if let Err(e) = run_criterion_bench(bench, &s) {
                eprintln!("bench-report: {e}");
                failures.push(format!("bench `{bench}`: {e}"));
            }
        }
        if benches.iter().any(|b| b == "breaker")
            && let Err(e) = run_clean_scaling()
        {
            eprintln!("bench-report: {e}");
            failures.push(format!("breaker clean-round scaling: {e}"));
        }
        if with_http && let Err(e) = run_http_load(&s) {
            eprintln!("bench-report: {e}");
            failures.push(format!("bench `http_load`: {e}"));
        }
    }
    let mut load_end = loadavg();
    let run_file = target_dir().join("bench-report").join("run.json");
    if s.run {
        // What `--no-run` needs to rewrite the report as this run made it.
        let info = serde_json::json!({
            "command": command, "date": date, "commit": m.commit,
            "warm_up": s.warm_up, "measurement": s.measurement,
            "load_start": load_start, "load_end": load_end, "failures": failures,
        });
        let _ = std::fs::write(&run_file, info.to_string());
    } else if let Some(info) = read_json(&run_file) {
        let text = |k: &str| info[k].as_str().map(str::to_owned);
        let load = |k: &str| {
            serde_json::from_value::<Option<[f64; 3]>>(info[k].clone())
                .ok()
                .flatten()
        };
        command = text("command").unwrap_or(command);
        date = text("date").unwrap_or(date);
        m.commit = text("commit").unwrap_or(m.commit);
        s.warm_up = text("warm_up").unwrap_or(s.warm_up);
        s.measurement = text("measurement").unwrap_or(s.measurement);
        load_start = load("load_start");
        load_end = load("load_end");
        failures = serde_json::from_value(info["failures"].clone()).unwrap_or_default();
    }

    let mut results = BTreeMap::new();
    for bench in &benches {
        let mut groups = Groups::new();
        collect(&results_dir(bench), &mut groups);
        results.insert(bench.clone(), groups);
    }
    let http = if with_http {
        read_json(&http_load_json())
    } else {
        None
    };
    let clean = benches
        .iter()
        .any(|b| b == "breaker")
        .then(|| std::fs::read_to_string(clean_scaling_file()).ok())
        .flatten()
        .filter(|t| t.contains("| `"));
    let report = render(
        &s,
        &command,
        &date,
        &m,
        (load_start, load_end),
        &benches,
        &results,
        http.as_ref(),
        clean.as_deref(),
        &failures,
    );
    if let Err(e) = std::fs::write(&s.out, report) {
        eprintln!("bench-report: cannot write {}: {e}", s.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("bench-report: wrote {}", s.out.display());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
