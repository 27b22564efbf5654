//! Per-identity limits and slow clients (docs/security.md, "Limits and slow clients").
//!
//! [`Limiter`] counts, per caller ([`crate::auth::limit_key`]), the `Watch` and
//! `KeepAlive` streams it holds open and the acquires it makes (a
//! [`failover_core::limits::TokenBucket`]); a call over a limit is refused
//! `RESOURCE_EXHAUSTED`, naming the identity and the limit, before anything is proposed.
//!
//! [`GuardedStream`] is what a server stream hands to tonic: it holds the stream's
//! [`StreamPermit`] for as long as the client keeps the stream, and when the task feeding
//! it gives up on a client that does not read ([`Limiter::stalled`]) it answers
//! `RESOURCE_EXHAUSTED` before anything still queued.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use failover_core::limits::{Limits, TokenBucket};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

/// The kinds of server stream a caller may hold, each with its own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `LeaseService/Watch`.
    Watch,
    /// `LeaseService/KeepAlive`.
    KeepAlive,
}

impl StreamKind {
    /// The RPC's name, in messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Watch => "watch",
            StreamKind::KeepAlive => "keepalive",
        }
    }
}

#[derive(Debug)]
struct Usage {
    watches: u32,
    keepalives: u32,
    acquires: TokenBucket,
}

/// Callers remembered at most; beyond it, callers with no open stream and a full bucket
/// are forgotten (forgetting them changes no answer).
const MAX_TRACKED: usize = 4096;

/// What the limits refused and the slow streams closed since the controller started
/// (`/metrics`).
#[derive(Debug, Default)]
pub struct LimitCounters {
    /// Acquires refused over `acquires_per_second`.
    pub refused_acquires: AtomicU64,
    /// Watch streams refused over `watch_streams`.
    pub refused_watches: AtomicU64,
    /// KeepAlive streams refused over `keepalive_streams`.
    pub refused_keepalives: AtomicU64,
    /// Watch streams closed because their client did not read.
    pub stalled_watches: AtomicU64,
    /// KeepAlive streams closed because their client did not read.
    pub stalled_keepalives: AtomicU64,
}

/// The per-identity limits of one controller.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    usage: Mutex<HashMap<String, Usage>>,
    /// What was refused and closed, for `/metrics`.
    pub counters: LimitCounters,
}

impl Limiter {
    /// A limiter applying `limits` (the topology's `limits:` section).
    pub fn new(limits: Limits) -> Arc<Limiter> {
        Arc::new(Limiter {
            limits,
            usage: Mutex::default(),
            counters: LimitCounters::default(),
        })
    }

    /// The limits applied.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn with_usage<T>(&self, who: &str, now: Instant, f: impl FnOnce(&mut Usage) -> T) -> T {
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        if usage.len() >= MAX_TRACKED && !usage.contains_key(who) {
            usage.retain(|_, u| u.watches > 0 || u.keepalives > 0 || !u.acquires.is_full(now));
        }
        let entry = usage.entry(who.to_owned()).or_insert_with(|| Usage {
            watches: 0,
            keepalives: 0,
            acquires: self.limits.acquire_bucket(now),
        });
        f(entry)
    }

    /// Takes one acquire from `who`'s bucket at `now`, or refuses it.
    pub fn check_acquire(&self, who: &str, now: Instant) -> Result<(), Status> {
        if self.with_usage(who, now, |u| u.acquires.try_take(now)) {
            return Ok(());
        }
        self.counters
            .refused_acquires
            .fetch_add(1, Ordering::Relaxed);
        Err(Status::resource_exhausted(format!(
            "{who} is over its acquire limit ({} per second, burst {}: limits.acquires_per_second \
             and limits.acquire_burst); nothing was done, retry later",
            self.limits.acquires_per_second, self.limits.acquire_burst
        )))
    }

    /// Counts a new stream of `kind` for `who`, or refuses it over the limit. The stream
    /// counts until the permit is dropped.
    pub fn open_stream(
        self: &Arc<Self>,
        who: &str,
        kind: StreamKind,
        now: Instant,
    ) -> Result<StreamPermit, Status> {
        let (limit, field) = match kind {
            StreamKind::Watch => (self.limits.watch_streams, "limits.watch_streams"),
            StreamKind::KeepAlive => (self.limits.keepalive_streams, "limits.keepalive_streams"),
        };
        let opened = self.with_usage(who, now, |u| {
            let open = match kind {
                StreamKind::Watch => &mut u.watches,
                StreamKind::KeepAlive => &mut u.keepalives,
            };
            if *open >= limit {
                return false;
            }
            *open += 1;
            true
        });
        if opened {
            return Ok(StreamPermit {
                limiter: self.clone(),
                who: who.to_owned(),
                kind,
            });
        }
        let counter = match kind {
            StreamKind::Watch => &self.counters.refused_watches,
            StreamKind::KeepAlive => &self.counters.refused_keepalives,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Err(Status::resource_exhausted(format!(
            "{who} already holds {limit} {} streams on this controller, its limit ({field}); \
             close one first",
            kind.as_str()
        )))
    }

    /// How long a stream may leave an answer untaken (`limits.stall_timeout_ms`).
    pub fn stall_timeout(&self) -> Duration {
        self.limits.stall_timeout()
    }

    /// Records that a `kind` stream of `who` is closed because its client did not take
    /// an answer within the stall timeout, and leaves in `verdict` the status its client
    /// gets if it ever reads again.
    pub fn close_stalled(&self, verdict: &Verdict, who: &str, kind: StreamKind) {
        let status = self.stalled(who, kind);
        *verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    fn stalled(&self, who: &str, kind: StreamKind) -> Status {
        let counter = match kind {
            StreamKind::Watch => &self.counters.stalled_watches,
            StreamKind::KeepAlive => &self.counters.stalled_keepalives,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            caller = %who,
            stream = kind.as_str(),
            stall_timeout_ms = self.limits.stall_timeout_ms,
            "closing a stream whose client does not read"
        );
        Status::resource_exhausted(format!(
            "{} stream of {who} closed: an answer waited {} ms without the client reading \
             (limits.stall_timeout_ms)",
            kind.as_str(),
            self.limits.stall_timeout_ms
        ))
    }

    /// Streams of `kind` `who` holds now.
    pub fn open_streams(&self, who: &str, kind: StreamKind) -> u32 {
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        usage.get(who).map_or(0, |u| match kind {
            StreamKind::Watch => u.watches,
            StreamKind::KeepAlive => u.keepalives,
        })
    }
}

/// One open stream, counted against its caller's limit until dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limiter: Arc<Limiter>,
    who: String,
    kind: StreamKind,
}

impl StreamPermit {
    /// The caller holding the stream.
    pub fn who(&self) -> &str {
        &self.who
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut usage = self.limiter.usage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = usage.get_mut(&self.who) {
            let open = match self.kind {
                StreamKind::Watch => &mut u.watches,
                StreamKind::KeepAlive => &mut u.keepalives,
            };
            *open = open.saturating_sub(1);
        }
    }
}

/// Where the task feeding a stream leaves the status that ends it early.
pub type Verdict = Arc<Mutex<Option<Status>>>;

/// A server stream as tonic sends it: the answers its task queues, ended early by the
/// task's verdict (which goes out before anything still queued), holding the stream's
/// permit until tonic drops it (the client closed or reset the stream, or went away).
pub struct GuardedStream<T> {
    answers: mpsc::Receiver<Result<T, Status>>,
    verdict: Verdict,
    done: bool,
    _permit: StreamPermit,
}

impl<T> GuardedStream<T> {
    /// A stream of `answers`, ended early by `verdict`, counted by `permit`.
    pub fn new(
        answers: mpsc::Receiver<Result<T, Status>>,
        verdict: Verdict,
        permit: StreamPermit,
    ) -> Self {
        GuardedStream {
            answers,
            verdict,
            done: false,
            _permit: permit,
        }
    }
}

impl<T> Stream for GuardedStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let verdict = self
            .verdict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(status) = verdict {
            self.done = true;
            return Poll::Ready(Some(Err(status)));
        }
        self.answers.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            watch_streams: 2,
            keepalive_streams: 1,
            acquires_per_second: 1,
            acquire_burst: 2,
            stall_timeout_ms: 1000,
        }
    }

    #[test]
    fn streams_count_per_identity_until_dropped() {
        let limiter = Limiter::new(limits());
        let now = Instant::now();
        let a1 = limiter
            .open_stream("engine/a", StreamKind::Watch, now)
            .expect("1st");
        let _a2 = limiter
            .open_stream("engine/a", StreamKind::Watch, now)
            .expect("2nd");
        let refused = limiter
            .open_stream("engine/a", StreamKind::Watch, now)
            .expect_err("3rd");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("engine/a"), "{refused:?}");
        assert!(
            refused.message().contains("limits.watch_streams"),
            "{refused:?}"
        );
        // Another identity, and another kind, are not affected.
        let _b = limiter
            .open_stream("engine/b", StreamKind::Watch, now)
            .expect("b");
        let _k = limiter
            .open_stream("engine/a", StreamKind::KeepAlive, now)
            .expect("k");
        assert!(limiter
            .open_stream("engine/a", StreamKind::KeepAlive, now)
            .is_err());
        drop(a1);
        assert_eq!(limiter.open_streams("engine/a", StreamKind::Watch), 1);
        let _a3 = limiter
            .open_stream("engine/a", StreamKind::Watch, now)
            .expect("after drop");
        assert_eq!(limiter.counters.refused_watches.load(Ordering::Relaxed), 1);
        assert_eq!(
            limiter.counters.refused_keepalives.load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn acquires_follow_each_identitys_bucket() {
        let limiter = Limiter::new(limits());
        let t0 = Instant::now();
        assert!(limiter.check_acquire("engine/a", t0).is_ok());
        assert!(limiter.check_acquire("engine/a", t0).is_ok());
        let refused = limiter.check_acquire("engine/a", t0).expect_err("over");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("engine/a"), "{refused:?}");
        assert!(limiter.check_acquire("engine/b", t0).is_ok());
        assert!(limiter
            .check_acquire("engine/a", t0 + Duration::from_millis(999))
            .is_err());
        assert!(limiter
            .check_acquire(
                "engine/a",
                t0 + Duration::from_secs(1) + Duration::from_millis(999)
            )
            .is_ok());
        assert_eq!(limiter.counters.refused_acquires.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_verdict_goes_out_before_queued_answers() {
        use tokio_stream::StreamExt;
        let limiter = Limiter::new(limits());
        let permit = limiter
            .open_stream("reader/x", StreamKind::Watch, Instant::now())
            .expect("permit");
        let (tx, rx) = mpsc::channel(2);
        let verdict = Verdict::default();
        let mut stream = GuardedStream::new(rx, verdict.clone(), permit);
        tx.send(Ok(1)).await.expect("queue");
        tx.send(Ok(2)).await.expect("queue");
        assert_eq!(stream.next().await.map(|r| r.ok()), Some(Some(1)));
        limiter.close_stalled(&verdict, "reader/x", StreamKind::Watch);
        let ended = stream.next().await.expect("verdict").expect_err("status");
        assert_eq!(ended.code(), tonic::Code::ResourceExhausted);
        assert!(stream.next().await.is_none());
        drop(stream);
        assert_eq!(limiter.open_streams("reader/x", StreamKind::Watch), 0);
        assert_eq!(limiter.counters.stalled_watches.load(Ordering::Relaxed), 1);
    }
}
