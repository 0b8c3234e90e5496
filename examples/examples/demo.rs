//! THE demo: a mesh client against faulty backends, then the same load
//! without the mesh, and the difference.
//!
//! ```sh
//! cargo run --release -p examples --example demo
//! cargo run --release -p examples --example demo -- --duration 10s --rate 300 --faults failing,flapping
//! ```
//!
//! No outside service is needed: the backends run on 127.0.0.1 and an
//! in-process fake Consul is the discovery source. With `CONSUL_HTTP_ADDR`
//! set, the backends register with that agent instead.
//!
//! Flags are parsed by hand (four of them do not justify a dependency).

use std::process::ExitCode;
use std::time::Duration;

use examples::demo::{self, DemoOptions, Display, Faults};

const USAGE: &str = "\
usage: demo [--duration 5s] [--rate 200] [--faults all|none|failing,slow,flapping]
            [--healthy 3] [--lines]

  --duration  how long each run (mesh, then no mesh) sends; humantime (5s, 1m)
  --rate      calls per second
  --faults    which backends misbehave: failing (503), slow (1.5 s), flapping
  --healthy   how many healthy backends
  --lines     print a line per second instead of the live table";

fn parse(args: impl Iterator<Item = String>) -> Result<DemoOptions, String> {
    let mut opts = DemoOptions {
        display: Display::auto(),
        ..DemoOptions::default()
    };
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--duration" => {
                let v = value()?;
                opts.duration =
                    humantime::parse_duration(&v).map_err(|e| format!("--duration {v}: {e}"))?;
                if opts.duration.is_zero() || opts.duration > Duration::from_secs(3600) {
                    return Err("--duration must be within 1ms..=1h".into());
                }
            }
            "--rate" => {
                let v = value()?;
                opts.rate = v.parse().map_err(|e| format!("--rate {v}: {e}"))?;
                if !(1..=20_000).contains(&opts.rate) {
                    return Err("--rate must be within 1..=20000".into());
                }
            }
            "--faults" => opts.faults = Faults::parse(&value()?)?,
            "--healthy" => {
                let v = value()?;
                opts.healthy = v.parse().map_err(|e| format!("--healthy {v}: {e}"))?;
                if !(1..=50).contains(&opts.healthy) {
                    return Err("--healthy must be within 1..=50".into());
                }
            }
            "--lines" => opts.display = Display::Lines,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(opts)
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!(
        "mesh demo: {} healthy backends + faults {:?}, {} calls/s for {:?} with the mesh, then the same without",
        opts.healthy, opts.faults, opts.rate, opts.duration
    );
    println!(
        "discovery: {}\n",
        if std::env::var_os("CONSUL_HTTP_ADDR").is_some() {
            "the Consul agent at CONSUL_HTTP_ADDR"
        } else {
            "an in-process fake Consul (set CONSUL_HTTP_ADDR to use a real agent)"
        }
    );
    match demo::run(opts).await {
        Ok(report) => {
            println!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = String> {
        s.split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn flags_parse_and_bad_ones_are_refused() {
        let o = parse(args(
            "--duration 2s --rate=50 --faults failing,slow --healthy 2 --lines",
        ))
        .unwrap();
        assert_eq!(o.duration, Duration::from_secs(2));
        assert_eq!(o.rate, 50);
        assert!(o.faults.failing && o.faults.slow && !o.faults.flapping);
        assert_eq!((o.healthy, o.display), (2, Display::Lines));
        for bad in [
            "--rate 0",
            "--duration soon",
            "--faults fire",
            "--nope",
            "--rate",
        ] {
            assert!(parse(args(bad)).is_err(), "{bad}");
        }
    }
}
