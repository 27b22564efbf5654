//! A session: runs of scenarios by seed, each checked and saved, and what to reproduce a
//! failed one with.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::SeedableRng;

use crate::checker::{self, Bounds, Rule};
use crate::faults::{self, Scenario};
use crate::report::{self, RunResult};
use crate::runner::{self, Cluster, Options};
use crate::{interrupted, netns, recorder, sites, workload};

/// Which violations make a session fail.
#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum Gate {
    /// Any violation, liveness included.
    All,
    /// Safety violations only (S1, S2, S3, L2), harness errors, and an uncaught broken
    /// build.
    Safety,
}

/// What `chaos run` is given.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenario name (see `chaos list`), or `all` for every one of the catalog.
    pub scenario: String,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Runs per scenario (seeds N, N+1, ...).
    #[arg(long, default_value_t = 1)]
    pub runs: u64,
    /// The sites file.
    #[arg(long, default_value = "sites.example.yaml")]
    pub sites: PathBuf,
    /// The failover binary to test.
    #[arg(long, default_value = "target/debug/failover")]
    pub failover_bin: PathBuf,
    /// Where results go (runs/*.json, report.json, report.md).
    #[arg(long, default_value = "chaos-tests/results/latest")]
    pub results: PathBuf,
    /// Workers print on stderr only (by default they print on stdout and stderr, as real
    /// engines do).
    #[arg(long)]
    pub no_worker_stdout: bool,
    /// Which violations fail the command.
    #[arg(long, value_enum, default_value_t = Gate::All)]
    pub gate: Gate,
    /// Run the etcd-lock baseline (no controllers, no fencing) instead of failover; only
    /// the scenarios that need no controller. Results are named `SCENARIO [etcd]` and
    /// never fail the session: they show what the baseline lets through.
    #[arg(long)]
    pub baseline: bool,
    /// Keep every run's files (logs, events, history.json), not only failed runs'.
    #[arg(long)]
    pub keep: bool,
    /// Run the cluster in plaintext (`tls: { insecure: true }`). By default every channel
    /// is mutual TLS with certificates issued per run, as a real deployment runs.
    #[arg(long)]
    pub insecure: bool,
}

/// Runs the scenarios; returns whether the session passed its gate.
pub fn run(args: &RunArgs) -> anyhow::Result<bool> {
    netns::refuse_leftovers()?;
    let scenarios: Vec<Scenario> = if args.scenario == "all" {
        faults::CATALOG
            .iter()
            .filter(|s| !args.baseline || faults::BASELINE.contains(&s.name))
            .copied()
            .collect()
    } else {
        vec![faults::find(&args.scenario)
            .with_context(|| format!("no scenario named {} (see `chaos list`)", args.scenario))?]
    };
    if !args.failover_bin.exists() {
        anyhow::bail!(
            "{} does not exist: build it first (cargo build -p failover-cli)",
            args.failover_bin.display()
        );
    }
    let work_dir = std::env::temp_dir().join(format!("fochaos-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let options = Options {
        sites: args.sites.clone(),
        failover_bin: std::fs::canonicalize(&args.failover_bin)?,
        chaos_bin: std::env::current_exe().context("cannot find the chaos binary")?,
        worker_stdout: !args.no_worker_stdout,
        work_dir: work_dir.clone(),
        baseline: args.baseline,
        tls: !args.insecure,
    };
    let template = workload::Template::create(&work_dir.join("pg-template"))?;
    let mut results = Vec::new();
    for scenario in &scenarios {
        for seed in args.seed..args.seed + args.runs {
            if interrupted() {
                break;
            }
            let result = run_one(&options, args, scenario, seed, &template);
            print_result(&result);
            report::save_run(&args.results, &result)?;
            results.push(result);
        }
    }
    let _ = std::fs::remove_dir_all(work_dir.join("pg-template"));
    // Removed only when empty: failed (or kept) runs' files stay.
    let _ = std::fs::remove_dir(&work_dir);
    let rows = report::table(&results, &order());
    let text = report::write(&args.results, &rows, &results)?;
    println!("\n{text}");
    if interrupted() {
        anyhow::bail!("interrupted; everything started was removed");
    }
    Ok(!results.iter().any(|r| fails_gate(r, args.gate)))
}

fn fails_gate(r: &RunResult, gate: Gate) -> bool {
    if r.passed || (r.scenario.ends_with(BASELINE_SUFFIX) && r.error.is_none()) {
        return false;
    }
    match (&r.verdict, gate) {
        (_, Gate::All) | (None, _) => true,
        (Some(v), Gate::Safety) => {
            v.violations.is_empty() || v.violations.iter().any(|x| x.rule.is_safety())
        }
    }
}

/// What the baseline's results are named with.
pub const BASELINE_SUFFIX: &str = " [etcd]";

/// Scenario names in report order (each baseline row after its scenario).
pub fn order() -> Vec<String> {
    faults::CATALOG
        .iter()
        .chain(std::iter::once(&faults::BROKEN))
        .flat_map(|s| [s.name.to_string(), format!("{}{BASELINE_SUFFIX}", s.name)])
        .collect()
}

fn reproduce(args: &RunArgs, scenario: &str, seed: u64) -> String {
    let mut cmd = format!("./target/debug/chaos run {scenario} --seed {seed}");
    if args.sites != Path::new("sites.example.yaml") {
        cmd.push_str(&format!(" --sites {}", args.sites.display()));
    }
    if args.failover_bin != Path::new("target/debug/failover") {
        cmd.push_str(&format!(" --failover-bin {}", args.failover_bin.display()));
    }
    if args.no_worker_stdout {
        cmd.push_str(" --no-worker-stdout");
    }
    if args.baseline {
        cmd.push_str(" --baseline");
    }
    if args.insecure {
        cmd.push_str(" --insecure");
    }
    cmd
}

fn run_one(
    options: &Options,
    args: &RunArgs,
    scenario: &Scenario,
    seed: u64,
    template: &workload::Template,
) -> RunResult {
    let began = Instant::now();
    let run_id = format!("{}-{seed}", &scenario.name[..scenario.name.len().min(12)]);
    let name = if args.baseline {
        format!("{}{BASELINE_SUFFIX}", scenario.name)
    } else {
        scenario.name.to_string()
    };
    let mut result = RunResult {
        scenario: name,
        seed,
        command: reproduce(args, scenario.name, seed),
        passed: false,
        verdict: None,
        bounds: Bounds {
            l1_ms: 0,
            l1_leader_lost_ms: 0,
            lease_ttl_ms: 0,
        },
        error: None,
        duration_s: 0.0,
        kept_dir: None,
        netem_missing: false,
        worker_stdout: options.worker_stdout,
    };
    println!("== {} seed {seed}: {}", scenario.name, scenario.about);
    let dir = options.work_dir.join(&run_id);
    match execute(options, scenario, seed, template, &run_id) {
        Ok((collected, bounds)) => {
            let verdict = checker::check(&collected, scenario.expect, bounds);
            result.passed = if args.baseline {
                // The baseline shows what it lets through; its findings are the point.
                true
            } else if scenario.expect.broken_build {
                caught(&verdict)
            } else {
                verdict.violations.is_empty()
            };
            result.netem_missing = collected.netem_missing;
            result.bounds = bounds;
            let _ = std::fs::write(
                dir.join("history.json"),
                serde_json::to_vec_pretty(&collected).unwrap_or_default(),
            );
            result.verdict = Some(verdict);
        }
        Err(e) => result.error = Some(format!("{e:#}")),
    }
    if result.passed && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        // The ledger's rows are in history.json; the database itself is large and done.
        let _ = std::fs::remove_dir_all(dir.join("pgdata"));
        result.kept_dir = Some(dir.display().to_string());
    }
    result.duration_s = began.elapsed().as_secs_f64();
    result
}

/// The broken build is caught when the checker reports the overlap (S1) and the ledger
/// refused the stale site's writes.
fn caught(v: &checker::Verdict) -> bool {
    v.violations.iter().any(|x| x.rule == Rule::S1) && v.refused_stale > 0
}

fn execute(
    options: &Options,
    scenario: &Scenario,
    seed: u64,
    template: &workload::Template,
    run_id: &str,
) -> anyhow::Result<(runner::Collected, Bounds)> {
    let plan = sites::Plan::load(&options.sites)?;
    let bounds = Bounds {
        l1_ms: plan.l1_bound_ms(false),
        l1_leader_lost_ms: plan.l1_bound_ms(true),
        lease_ttl_ms: plan.timing.lease_ttl_ms,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(options, plan, template, run_id)?;
    let faults_from = recorder::now_ns();
    let initial = cluster.active_site().unwrap_or_default();
    let applied = scenario.apply(&mut cluster, &mut rng);
    if let Err(e) = &applied {
        cluster.note(format!("scenario stopped early: {e:#}"));
    }
    if interrupted() {
        anyhow::bail!("interrupted");
    }
    let settled = runner::heal_and_settle(&mut cluster, Duration::from_secs(45))?;
    let collected = cluster.collect(faults_from, initial, settled)?;
    cluster.teardown();
    applied?;
    Ok((collected, bounds))
}

fn print_result(r: &RunResult) {
    let status = if r.passed { "ok" } else { "FAIL" };
    let extra = match &r.verdict {
        Some(v) => format!(
            "accepted {} writes, refused stale {}, recovery {}, needless {}, freeze overlaps {}",
            v.accepted,
            v.refused_stale,
            v.recovery_ms.map_or("–".into(), |x| format!("{x:.0} ms")),
            v.needless_interruptions,
            v.freeze_overlaps.len()
        ),
        None => String::new(),
    };
    println!("   {status} in {:.0} s: {extra}", r.duration_s);
    if let Some(v) = &r.verdict {
        for x in &v.violations {
            println!("   {:?}: {}", x.rule, x.detail);
        }
        for o in &v.freeze_overlaps {
            println!("   (freeze) {o}");
        }
    }
    if let Some(e) = &r.error {
        println!("   harness error: {e}");
    }
    if !r.passed {
        println!("   reproduce: {}", r.command);
        if let Some(d) = &r.kept_dir {
            println!("   files kept in {d}");
        }
    }
}
