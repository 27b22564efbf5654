//! `failover-sim`: runs seeds of the deterministic simulation and reports failures with
//! the command that replays them.
//!
//! `failover-sim --seeds 1000 [--from 0] [--threads 2]` runs a range of seeds;
//! `failover-sim --seed 42` runs one and prints its trace's end;
//! `failover-sim --seeds 200 --expect-violation S1` proves the checks bite: it succeeds
//! once a seed breaks the named property (a build with a deliberately broken controller,
//! `make sim-broken`) and fails if none of the seeds does.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use failover_sim::{replay_command, run_seed, Options, Outcome};

struct Args {
    from: u64,
    seeds: u64,
    threads: usize,
    verbose: bool,
    /// The property (`S1`, ...) a seed must be caught breaking; the run stops there.
    expect: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        from: 0,
        seeds: 100,
        threads: 2,
        verbose: false,
        expect: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let raw = it.next().ok_or(format!("{name} needs a value"))?;
            raw.parse()
                .map_err(|_| format!("{name}: `{raw}` is not a number"))
        };
        match flag.as_str() {
            "--from" => args.from = value("--from")?,
            "--seeds" => args.seeds = value("--seeds")?,
            "--threads" => args.threads = value("--threads")?.max(1) as usize,
            "--seed" => {
                args.from = value("--seed")?;
                args.seeds = 1;
                args.verbose = true;
            }
            "--expect-violation" => {
                let property = it.next().ok_or("--expect-violation needs a property")?;
                if !failover_sim::check::PROPERTIES.contains(&property.as_str()) {
                    return Err(format!(
                        "--expect-violation: `{property}` is not one of {}",
                        failover_sim::check::PROPERTIES.join(" ")
                    ));
                }
                args.expect = Some(property);
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}` (--seeds N --from S --threads T \
                     [--expect-violation P] | --seed S)"
                ))
            }
        }
    }
    Ok(args)
}

fn report(outcome: &Outcome, verbose: bool) {
    if verbose || !outcome.violations.is_empty() {
        for line in &outcome.tail {
            eprintln!("  {line}");
        }
    }
    for violation in &outcome.violations {
        eprintln!("seed {} FAILED: {violation}", outcome.seed);
    }
    if !outcome.violations.is_empty() {
        eprintln!("replay: {}", replay_command(outcome.seed));
    }
    if !verbose && outcome.needless_interruptions > 0 {
        eprintln!(
            "seed {}: {} needless interruptions (replay: {})",
            outcome.seed,
            outcome.needless_interruptions,
            replay_command(outcome.seed)
        );
    }
    if verbose {
        eprintln!(
            "seed {}: trace {:016x} ({} lines), grants {}, operator changes {}, lapses {}, needless interruptions {}, recovered after {:?}",
            outcome.seed, outcome.trace_hash, outcome.trace_lines, outcome.grants, outcome.changes,
            outcome.lapses, outcome.needless_interruptions, outcome.recovered_after
        );
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("failover-sim: {e}");
            return ExitCode::from(2);
        }
    };
    if !failover_sim::DETERMINISTIC {
        eprintln!("failover-sim: built without --cfg tokio_unstable: runs are not reproducible (use make sim)");
    }
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(args.from));
    let totals = Arc::new(Mutex::new((0u64, 0u64, 0u64, 0u64)));
    let end = args.from + args.seeds;
    let caught = Arc::new(Mutex::new(None::<String>));
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let next = next.clone();
            let totals = totals.clone();
            let caught = caught.clone();
            let expect = args.expect.clone();
            let verbose = args.verbose;
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let outcome = run_seed(seed, Options::default());
                if let Some(property) = &expect {
                    if let Some(v) = outcome
                        .violations
                        .iter()
                        .find(|v| v.starts_with(property.as_str()))
                    {
                        // Replayed by this binary (`--seed`), not by `make sim-replay`,
                        // which runs the normal build.
                        let line = format!("caught at seed {seed}: {v}");
                        caught
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(line);
                        // No seed is started after this one.
                        next.store(end, Ordering::Relaxed);
                    }
                } else {
                    report(&outcome, verbose);
                }
                let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                t.0 += 1;
                t.1 += u64::from(!outcome.violations.is_empty());
                t.2 += u64::from(outcome.needless_interruptions);
                t.3 += u64::from(outcome.lapses);
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (runs, failed, needless, lapses) = *totals.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "sim: {runs} seeds from {}, {failed} failed, {needless} needless interruptions, {lapses} lapses, {elapsed:.1} s, {:.2} seeds/s on {} threads",
        args.from,
        runs as f64 / elapsed,
        args.threads
    );
    if let Some(property) = &args.expect {
        return match caught.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(line) => {
                println!("sim: {line}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "sim: no {property} violation in {runs} seeds: the checks missed what they must catch"
                );
                ExitCode::FAILURE
            }
        };
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
