//! The workload, written once for both systems: a grant phase, then a keepalive phase.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::stats::{Samples, Summary};

/// The shape of the load, identical for every system.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Leases granted and then kept alive, one per instance.
    pub leases: usize,
    /// Grant requests in flight at once.
    pub concurrency: usize,
    /// Connections, and keepalive streams (one per connection).
    pub streams: usize,
    /// Renewals in flight per keepalive stream.
    pub window: usize,
    /// Length of the keepalive phase.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Whether the grant report lists its slowest 1% of grants with the time each
    /// finished, to line them up with the servers' logs.
    pub trace_slow: bool,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A lease API under test, reached at its leader.
pub trait Target: Send + Sync + 'static {
    /// A keepalive request on the stream.
    type Request: Send + 'static;
    /// A keepalive answer on the stream.
    type Answer: Send + 'static;

    /// The system's name in the report.
    fn system(&self) -> &'static str;

    /// The leader's `host:port`; every request goes there.
    fn leader(&self) -> &str;

    /// Grants the lease of instance `instance` over `channel`; its id, or why not.
    fn grant(
        &self,
        channel: Channel,
        instance: usize,
    ) -> impl Future<Output = Result<u64, String>> + Send;

    /// The renewal of `lease`, the `seq`-th request on its stream.
    fn keepalive_request(&self, lease: u64, seq: u64) -> Self::Request;

    /// What identifies a renewal in flight: an answer carries the same key.
    fn key(lease: u64, seq: u64) -> u64;

    /// The key of the renewal `answer` is for, and whether the lease was renewed.
    fn answer(answer: &Self::Answer) -> (u64, Result<(), String>);

    /// Opens a keepalive stream over `channel` carrying `requests`.
    fn open_keepalive(
        &self,
        channel: Channel,
        requests: ReceiverStream<Self::Request>,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Answer>, tonic::Status>> + Send;
}

/// Everything measured, printed as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `failover` or `etcd`.
    pub system: &'static str,
    /// The leader the load went to.
    pub leader: String,
    /// The load's shape.
    pub workload: Workload,
    /// Phase 1.
    pub grant: GrantReport,
    /// Phase 2.
    pub keepalive: KeepAliveReport,
}

/// The grant phase's results.
#[derive(Debug, Serialize)]
pub struct GrantReport {
    /// Leases granted.
    pub granted: usize,
    /// Grant requests that failed.
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// From the first request sent to the last answer received.
    pub wall_s: f64,
    /// `granted / wall_s`.
    pub per_s: f64,
    /// Latency of each successful grant.
    pub latency: Summary,
    /// The phase cut into ten parts of equally many grants, in the order they finished:
    /// whether grants slow down as the state grows, or only at times.
    pub by_tenth: Vec<GrantSlice>,
    /// With `--trace-slow`: when the phase started (Unix time, ms), and the slowest 1% of
    /// grants as (finished, ms after that start; latency, ms), in the order they finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest: Option<SlowGrants>,
}

/// One part of the grant phase.
#[derive(Debug, Serialize, PartialEq)]
pub struct GrantSlice {
    /// Grants that finished in this part.
    pub granted: usize,
    /// They per second, from the previous part's last answer to this part's last.
    pub per_s: f64,
    /// Their median latency.
    pub p50_ms: f64,
    /// Their 99th percentile latency.
    pub p99_ms: f64,
}

/// The slowest grants of a phase, placed in time.
#[derive(Debug, Serialize)]
pub struct SlowGrants {
    /// When the phase started, in ms since the Unix epoch.
    pub started_unix_ms: u128,
    /// (finished, latency), both in ms; finished is counted from the phase's start.
    pub grants: Vec<(f64, f64)>,
}

/// The keepalive phase's results.
#[derive(Debug, Serialize)]
pub struct KeepAliveReport {
    /// Renewals answered with a renewal within the phase.
    pub renewed: u64,
    /// Renewals refused (the lease is then not renewed again).
    pub refused: u64,
    /// The first refusal, if any.
    pub first_refusal: Option<String>,
    /// Length of the phase.
    pub elapsed_s: f64,
    /// `renewed / elapsed_s`.
    pub per_s: f64,
    /// Latency of each renewal, from send to answer.
    pub latency: Summary,
}

/// Runs both phases against `target`.
pub async fn run<T: Target>(target: T, workload: &Workload) -> anyhow::Result<Report> {
    let target = Arc::new(target);
    let channels = crate::connect_many(target.leader(), workload.streams).await?;
    eprintln!(
        "{}: granting {} leases at {}",
        target.system(),
        workload.leases,
        target.leader()
    );
    let (grant, leases) = grant_phase(&target, &channels, workload).await;
    anyhow::ensure!(
        !leases.is_empty(),
        "no lease was granted: {:?}",
        grant.first_error
    );
    eprintln!(
        "{}: {} granted at {:.0}/s; keeping them alive for {:?}",
        target.system(),
        grant.granted,
        grant.per_s,
        workload.duration
    );
    let keepalive = keepalive_phase(&target, &channels, leases, workload).await?;
    Ok(Report {
        system: target.system(),
        leader: target.leader().to_owned(),
        workload: workload.clone(),
        grant,
        keepalive,
    })
}

/// Grants every lease, `concurrency` at a time; the report and the granted ids.
async fn grant_phase<T: Target>(
    target: &Arc<T>,
    channels: &[Channel],
    workload: &Workload,
) -> (GrantReport, Vec<u64>) {
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let start = Instant::now();
    let results: Vec<(Result<u64, String>, Duration, Duration)> =
        futures::stream::iter(0..workload.leases)
            .map(|i| {
                let channel = channels[i % channels.len()].clone();
                let target = target.clone();
                async move {
                    let sent = Instant::now();
                    let result = target.grant(channel, i).await;
                    (result, sent.elapsed(), start.elapsed())
                }
            })
            .buffer_unordered(workload.concurrency)
            .collect()
            .await;
    let wall = start.elapsed();
    let mut samples = Samples::default();
    let mut leases = Vec::with_capacity(workload.leases);
    let mut first_error = None;
    let mut failed = 0;
    let mut finished = Vec::new();
    for (result, latency, at) in results {
        match result {
            Ok(lease) => {
                leases.push(lease);
                samples.push(latency);
                finished.push((at.as_secs_f64() * 1e3, latency.as_secs_f64() * 1e3));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let report = GrantReport {
        granted: leases.len(),
        failed,
        first_error,
        wall_s: wall.as_secs_f64(),
        per_s: leases.len() as f64 / wall.as_secs_f64(),
        latency: samples.summary(),
        by_tenth: tenths(&mut finished),
        slowest: workload.trace_slow.then(|| SlowGrants {
            started_unix_ms,
            grants: slowest_percent(finished),
        }),
    };
    (report, leases)
}

/// `grants` (finished, latency; ms) cut into ten parts of equally many, in the order
/// they finished (which it leaves them in); fewer than ten grants make no parts.
fn tenths(grants: &mut [(f64, f64)]) -> Vec<GrantSlice> {
    grants.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let n = grants.len();
    if n < 10 {
        return Vec::new();
    }
    let mut since_ms = 0.0;
    (0..10)
        .map(|k| {
            let part = &grants[k * n / 10..(k + 1) * n / 10];
            let until_ms = part.last().map_or(since_ms, |g| g.0);
            let mut samples = Samples::default();
            for &(_, latency_ms) in part {
                samples.push(Duration::from_micros((latency_ms * 1e3).round() as u64));
            }
            let latency = samples.summary();
            let slice = GrantSlice {
                granted: part.len(),
                per_s: part.len() as f64 / ((until_ms - since_ms).max(1e-3) / 1e3),
                p50_ms: latency.p50_ms,
                p99_ms: latency.p99_ms,
            };
            since_ms = until_ms;
            slice
        })
        .collect()
}

/// The slowest 1% (at least one) of `grants` (finished, latency), in the order they
/// finished.
fn slowest_percent(mut grants: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let keep = grants.len().div_ceil(100);
    grants.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    grants.truncate(keep);
    grants.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    grants
}

/// What one keepalive stream saw.
#[derive(Default)]
struct StreamResult {
    renewed: u64,
    refused: u64,
    first_refusal: Option<String>,
    samples: Samples,
}

/// Renews every lease in rounds for `workload.duration`, one stream per channel.
async fn keepalive_phase<T: Target>(
    target: &Arc<T>,
    channels: &[Channel],
    leases: Vec<u64>,
    workload: &Workload,
) -> anyhow::Result<KeepAliveReport> {
    let mut per_stream: Vec<Vec<u64>> = vec![Vec::new(); channels.len()];
    for (i, lease) in leases.into_iter().enumerate() {
        per_stream[i % channels.len()].push(lease);
    }
    let start = Instant::now();
    let deadline = start + workload.duration;
    let tasks: Vec<_> = channels
        .iter()
        .zip(per_stream)
        .map(|(channel, leases)| {
            tokio::spawn(keepalive_stream(
                target.clone(),
                channel.clone(),
                leases,
                workload.window,
                deadline,
            ))
        })
        .collect();
    let mut total = StreamResult::default();
    for task in tasks {
        let result = task.await.context("keepalive stream task panicked")??;
        total.renewed += result.renewed;
        total.refused += result.refused;
        if total.first_refusal.is_none() {
            total.first_refusal = result.first_refusal;
        }
        total.samples.extend(result.samples);
    }
    let elapsed = deadline.saturating_duration_since(start).as_secs_f64();
    Ok(KeepAliveReport {
        renewed: total.renewed,
        refused: total.refused,
        first_refusal: total.first_refusal,
        elapsed_s: elapsed,
        per_s: total.renewed as f64 / elapsed,
        latency: total.samples.summary(),
    })
}

/// One stream: keeps `min(window, leases)` renewals in flight until `deadline`, sending
/// each lease again once its previous renewal was answered.
async fn keepalive_stream<T: Target>(
    target: Arc<T>,
    channel: Channel,
    leases: Vec<u64>,
    window: usize,
    deadline: Instant,
) -> anyhow::Result<StreamResult> {
    let mut result = StreamResult::default();
    let window = window.min(leases.len());
    if window == 0 {
        return Ok(result);
    }
    let mut ready: VecDeque<u64> = leases.into();
    let mut in_flight: HashMap<u64, (u64, Instant)> = HashMap::with_capacity(window);
    let mut seq = 0u64;
    // Room for every renewal in flight: sending never waits, so a send time is a send time.
    let (requests, outgoing) = mpsc::channel(window);
    let mut send = |lease: u64, in_flight: &mut HashMap<u64, (u64, Instant)>| {
        seq += 1;
        in_flight.insert(T::key(lease, seq), (lease, Instant::now()));
        requests
            .try_send(target.keepalive_request(lease, seq))
            .map_err(|_| anyhow::anyhow!("keepalive send queue full or closed"))
    };
    // Some servers send the response headers only with the first answer, so the first
    // requests must be queued before the stream is opened.
    while in_flight.len() < window {
        let Some(lease) = ready.pop_front() else {
            break;
        };
        send(lease, &mut in_flight)?;
    }
    let mut answers = target
        .open_keepalive(channel, ReceiverStream::new(outgoing))
        .await
        .context("cannot open a keepalive stream")?;
    let end = tokio::time::sleep_until(deadline.into());
    tokio::pin!(end);
    loop {
        let answer = tokio::select! {
            biased;
            _ = &mut end => break,
            answer = answers.message() => answer.context("keepalive stream failed")?,
        };
        let Some(answer) = answer else {
            anyhow::bail!("the server ended a keepalive stream");
        };
        let now = Instant::now();
        let (key, outcome) = T::answer(&answer);
        let Some((lease, sent)) = in_flight.remove(&key) else {
            anyhow::bail!("an answer ({key}) to no renewal in flight");
        };
        match outcome {
            Ok(()) => {
                result.renewed += 1;
                result.samples.push(now - sent);
                ready.push_back(lease);
            }
            Err(e) => {
                result.refused += 1;
                result.first_refusal.get_or_insert(e);
            }
        }
        if let Some(next) = ready.pop_front() {
            send(next, &mut in_flight)?;
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenths_cut_the_phase_in_the_order_grants_finished() {
        // 20 grants, finished every 10 ms; the second half is three times as slow.
        let mut grants: Vec<(f64, f64)> = (1..=20)
            .rev()
            .map(|k| (k as f64 * 10.0, if k > 10 { 6.0 } else { 2.0 }))
            .collect();
        let parts = tenths(&mut grants);
        assert_eq!(parts.len(), 10);
        assert_eq!(parts[0].granted, 2);
        assert_eq!(parts[0].per_s, 100.0);
        assert_eq!(parts[4].p99_ms, 2.0);
        assert_eq!(parts[5].p50_ms, 6.0);
        assert!(tenths(&mut grants[..9]).is_empty());
    }

    #[test]
    fn the_slowest_percent_is_kept_in_the_order_it_finished() {
        // 200 grants: the two slowest (latency 500 and 400) finished at 30 and 10 ms.
        let mut grants: Vec<(f64, f64)> = (0..200).map(|i| (f64::from(i), 1.0)).collect();
        grants[30].1 = 500.0;
        grants[10].1 = 400.0;
        assert_eq!(slowest_percent(grants), vec![(10.0, 400.0), (30.0, 500.0)]);
        assert_eq!(slowest_percent(vec![(5.0, 2.0)]), vec![(5.0, 2.0)]);
        assert!(slowest_percent(Vec::new()).is_empty());
    }
}
