//! Results: one JSON file per run under `results/<profile>/runs/`, and the table per
//! scenario (runs, violations, refused stale writes, recovery p50/p99/max, needless
//! interruptions) printed and written as JSON and Markdown, optionally into a section of
//! `docs/chaos.md`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::checker::{Bounds, Verdict};

/// Everything about one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The one command that reproduces the run.
    pub command: String,
    /// Whether the run passed (for the broken-build check: whether the checks caught it).
    pub passed: bool,
    /// What the checker found (None: the harness failed before a history existed).
    pub verdict: Option<Verdict>,
    /// The bounds measured against.
    pub bounds: Bounds,
    /// A harness error (setup failed, interrupted).
    pub error: Option<String>,
    /// Wall time of the run, seconds.
    pub duration_s: f64,
    /// Where the run's files were kept (failed runs only).
    pub kept_dir: Option<String>,
    /// Whether delay and reordering fell back to loss and throttling (no netem).
    pub netem_missing: bool,
    /// Whether workers printed on stdout too.
    pub worker_stdout: bool,
}

/// One row of the table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Runs.
    pub runs: u64,
    /// Runs that failed.
    pub failed: u64,
    /// Violations by rule.
    pub violations: BTreeMap<String, u64>,
    /// Writes refused by the fencing check.
    pub refused_stale: u64,
    /// Stale writes accepted (must be 0).
    pub accepted_stale: u64,
    /// Writes a stale worker attempted after a newer value was accepted: refused,
    /// accepted, unanswered.
    pub stale_after_newer: [u64; 3],
    /// Overlaps reported in whole-site freezes (not counted as violations).
    pub freeze_overlaps: u64,
    /// Recovery after an isolating fault, p50 (ms).
    pub recovery_p50_ms: Option<f64>,
    /// p99 (ms).
    pub recovery_p99_ms: Option<f64>,
    /// Max (ms).
    pub recovery_max_ms: Option<f64>,
    /// Needless interruptions.
    pub needless_interruptions: u64,
    /// Harness errors (no verdict).
    pub harness_errors: u64,
    /// Seeds of failed runs.
    pub failed_seeds: Vec<u64>,
}

/// Writes a run's JSON under `dir/runs/`.
pub fn save_run(dir: &Path, result: &RunResult) -> anyhow::Result<()> {
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs)?;
    let name: String = result
        .scenario
        .chars()
        .filter(|c| !matches!(c, '[' | ']'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect();
    let path = runs.join(format!("{name}-{}.json", result.seed));
    std::fs::write(&path, serde_json::to_vec_pretty(result)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads every run's JSON under `dir/runs/`.
pub fn load_runs(dir: &Path) -> anyhow::Result<Vec<RunResult>> {
    let runs = dir.join("runs");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&runs)
        .with_context(|| format!("no results in {} (run `chaos run` first)", runs.display()))?
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path())?;
        out.push(
            serde_json::from_str(&text)
                .with_context(|| format!("bad run file {}", entry.path().display()))?,
        );
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1);
    Some(sorted[i])
}

/// One row per scenario, in the order the scenarios were first seen in `order`.
pub fn table(runs: &[RunResult], order: &[String]) -> Vec<Row> {
    let mut rows: BTreeMap<String, (Row, Vec<f64>)> = BTreeMap::new();
    for r in runs {
        let (row, rec) = rows.entry(r.scenario.clone()).or_default();
        row.scenario = r.scenario.clone();
        row.runs += 1;
        if !r.passed {
            row.failed += 1;
            row.failed_seeds.push(r.seed);
        }
        let Some(v) = &r.verdict else {
            row.harness_errors += 1;
            continue;
        };
        for x in &v.violations {
            *row.violations.entry(format!("{:?}", x.rule)).or_default() += 1;
        }
        row.refused_stale += v.refused_stale;
        row.accepted_stale += v.accepted_stale;
        row.stale_after_newer[0] += v.stale_after_newer_refused;
        row.stale_after_newer[1] += v.stale_after_newer_accepted;
        row.stale_after_newer[2] += v.stale_after_newer_unanswered;
        row.freeze_overlaps += v.freeze_overlaps.len() as u64;
        row.needless_interruptions += v.needless_interruptions;
        rec.extend(v.recovery_ms);
    }
    let mut out: Vec<Row> = rows
        .into_values()
        .map(|(mut row, mut rec)| {
            rec.sort_by(f64::total_cmp);
            row.recovery_p50_ms = percentile(&rec, 0.5);
            row.recovery_p99_ms = percentile(&rec, 0.99);
            row.recovery_max_ms = rec.last().copied();
            row.failed_seeds.sort();
            row
        })
        .collect();
    out.sort_by_key(|r| {
        order
            .iter()
            .position(|o| *o == r.scenario)
            .unwrap_or(usize::MAX)
    });
    out
}

fn cell(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.0}"))
}

/// The table as Markdown.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | runs | failed | violations | refused stale writes | stale writes accepted | stale attempts after a newer value: refused / accepted / unanswered | freeze overlaps | recovery p50 / p99 / max (ms) | needless interruptions |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let violations = if r.violations.is_empty() {
            "0".to_string()
        } else {
            r.violations
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let failed = if r.failed_seeds.is_empty() {
            r.failed.to_string()
        } else {
            format!(
                "{} (seeds {})",
                r.failed,
                r.failed_seeds
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} / {} / {} | {} |\n",
            r.scenario,
            r.runs,
            failed,
            violations,
            r.refused_stale,
            r.accepted_stale,
            r.stale_after_newer[0],
            r.stale_after_newer[1],
            r.stale_after_newer[2],
            r.freeze_overlaps,
            cell(r.recovery_p50_ms),
            cell(r.recovery_p99_ms),
            cell(r.recovery_max_ms),
            r.needless_interruptions
        ));
    }
    s
}

/// Writes `report.json` and `report.md` into `dir`.
pub fn write(dir: &Path, rows: &[Row], runs: &[RunResult]) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let md = markdown(rows);
    let failures: Vec<String> = runs
        .iter()
        .filter(|r| !r.passed)
        .map(|r| {
            let why = match (&r.error, &r.verdict) {
                (Some(e), _) => format!("harness error: {e}"),
                (None, Some(v)) if v.violations.is_empty() => {
                    "the checks did not catch the broken build".to_string()
                }
                (None, Some(v)) => v
                    .violations
                    .iter()
                    .map(|x| format!("{:?}: {}", x.rule, x.detail))
                    .collect::<Vec<_>>()
                    .join("; "),
                (None, None) => "no verdict".into(),
            };
            format!("- `{}` — {why}", r.command)
        })
        .collect();
    let mut full = md.clone();
    if !failures.is_empty() {
        full.push_str("\nFailed runs (each line is the command that reproduces it):\n\n");
        full.push_str(&failures.join("\n"));
        full.push('\n');
    }
    std::fs::write(dir.join("report.md"), &full)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_vec_pretty(&serde_json::json!({ "rows": rows, "runs": runs }))?,
    )?;
    Ok(full)
}

/// Replaces the text between `<!-- chaos:NAME:begin -->` and `<!-- chaos:NAME:end -->`
/// in a Markdown file (appending the section if it is missing).
pub fn update_doc(path: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- chaos:{name}:begin -->");
    let end = format!("<!-- chaos:{name}:end -->");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin}\n{body}{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{}{}", &text[..b], section, &text[e + end.len()..])
        }
        _ => format!("{text}\n{section}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{Rule, Violation};

    fn result(scenario: &str, seed: u64, recovery: Option<f64>, violation: bool) -> RunResult {
        let mut verdict = Verdict {
            recovery_ms: recovery,
            refused_stale: 2,
            ..Verdict::default()
        };
        if violation {
            verdict.violations.push(Violation {
                rule: Rule::S1,
                detail: "overlap".into(),
            });
        }
        RunResult {
            scenario: scenario.into(),
            seed,
            command: format!("chaos run {scenario} --seed {seed}"),
            passed: !violation,
            verdict: Some(verdict),
            bounds: Bounds {
                l1_ms: 1,
                l1_leader_lost_ms: 2,
                lease_ttl_ms: 3,
            },
            error: None,
            duration_s: 1.0,
            kept_dir: None,
            netem_missing: false,
            worker_stdout: false,
        }
    }

    /// Rows add up runs, violations and refusals per scenario, take percentiles of the
    /// recoveries, name the failed seeds, and follow the given order.
    #[test]
    fn table_aggregates_per_scenario_in_order() {
        let runs = vec![
            result("b", 1, Some(100.0), false),
            result("a", 1, None, false),
            result("b", 2, Some(300.0), true),
        ];
        let rows = table(&runs, &["a".to_string(), "b".to_string()]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].scenario, "a");
        let b = &rows[1];
        assert_eq!((b.runs, b.failed, b.refused_stale), (2, 1, 4));
        assert_eq!(b.failed_seeds, vec![2]);
        assert_eq!(b.violations.get("S1"), Some(&1));
        assert_eq!(b.recovery_max_ms, Some(300.0));
        assert!(markdown(&rows).contains("| b | 2 | 1 (seeds 2) | S1×1 |"));
    }

    /// The doc section is replaced between its markers, and appended when missing.
    #[test]
    fn doc_section_is_replaced_between_markers() {
        let dir = std::env::temp_dir().join(format!("chaos-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("doc.md");
        std::fs::write(
            &path,
            "head\n<!-- chaos:quick:begin -->\nold\n<!-- chaos:quick:end -->\ntail\n",
        )
        .expect("write");
        update_doc(&path, "quick", "new\n").expect("update");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            "head\n<!-- chaos:quick:begin -->\nnew\n<!-- chaos:quick:end -->\ntail\n"
        );
        update_doc(&path, "long", "x\n").expect("append");
        assert!(std::fs::read_to_string(&path)
            .expect("read")
            .ends_with("<!-- chaos:long:end -->\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
