//! The checker: the event trace (hashed, so two runs of one seed can be compared bit for
//! bit) and the safety and liveness properties of `../shared/DESIGN.md`, checked as the
//! run goes.
//!
//! - S1: a holder starting to believe it holds the group while a holder at another site
//!   still believes (true time; each belief ends where the holder's own drifting clock
//!   reaches its `valid_until`).
//! - S2: two sites granted the same fencing value (epoch).
//! - S3: an acknowledged grant's lease id or token handed out again, an acknowledged
//!   promote or demote missing or different in a controller's history, two controllers
//!   disagreeing on the change of one epoch.
//! - L1: after every fault healed, the active site's holders must hold within a bound.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use failover_core::{ClusterState, GroupName, NodeId, Phase};
use tokio::time::Instant;

/// The properties checked, as the prefixes their violations start with.
pub const PROPERTIES: [&str; 4] = ["S1", "S2", "S3", "L1"];

/// Trace lines kept for the failure report.
const TAIL_LINES: usize = 60;

#[derive(Debug, Clone)]
struct Belief {
    site: usize,
    lease: u64,
    until: Instant,
}

/// What the run saw; shared by the holders, the monitor and the driver.
#[derive(Debug)]
pub struct Checker {
    origin: Instant,
    hash: u64,
    lines: usize,
    tail: VecDeque<String>,
    /// Every property violated, in order.
    pub violations: Vec<String>,
    beliefs: BTreeMap<usize, Belief>,
    epoch_site: BTreeMap<u64, usize>,
    grants: BTreeMap<u64, (u64, u64)>,
    tokens: BTreeMap<u64, u64>,
    changes: BTreeMap<u64, Option<String>>,
    /// Per data site, the last instant it was cut from a quorum, not the
    /// settled active site, or Raft's round trips could exceed the heartbeat interval
    /// (needless interruptions are lapses long after it; docs/testing.md).
    pub disturbed_at: BTreeMap<usize, Instant>,
    /// Holders that lost their lease while their site was settled and connected.
    pub needless_interruptions: u32,
    /// Holders' leases that lapsed or were refused, needless or not.
    pub lapses: u32,
    /// Grants acknowledged to holders.
    pub grant_count: u32,
    /// Promotes and demotes acknowledged to the operator.
    pub change_count: u32,
}

impl Checker {
    /// A checker whose trace times count from `origin`.
    pub fn new(origin: Instant) -> Self {
        Checker {
            origin,
            hash: 0xcbf2_9ce4_8422_2325,
            lines: 0,
            tail: VecDeque::new(),
            violations: Vec::new(),
            beliefs: BTreeMap::new(),
            epoch_site: BTreeMap::new(),
            grants: BTreeMap::new(),
            tokens: BTreeMap::new(),
            changes: BTreeMap::new(),
            disturbed_at: BTreeMap::new(),
            needless_interruptions: 0,
            lapses: 0,
            grant_count: 0,
            change_count: 0,
        }
    }

    /// The FNV-1a hash of every trace line so far.
    pub fn trace_hash(&self) -> u64 {
        self.hash
    }

    /// How many trace lines there were.
    pub fn trace_lines(&self) -> usize {
        self.lines
    }

    /// The last lines of the trace.
    pub fn tail(&self) -> impl Iterator<Item = &String> {
        self.tail.iter()
    }

    /// Appends a line to the trace, stamped with the true time since the origin.
    pub fn event(&mut self, now: Instant, text: &str) {
        let mut line = String::with_capacity(text.len() + 16);
        let _ = write!(
            line,
            "{:>10.3} {text}",
            now.saturating_duration_since(self.origin).as_secs_f64() * 1000.0
        );
        for byte in line.bytes().chain([b'\n']) {
            self.hash ^= u64::from(byte);
            self.hash = self.hash.wrapping_mul(0x100_0000_01b3);
        }
        self.lines += 1;
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// Records a violated property (and traces it).
    pub fn violation(&mut self, now: Instant, text: String) {
        self.event(now, &format!("VIOLATION {text}"));
        self.violations.push(text);
    }

    /// Holder `holder` at `site` believes it holds `lease` of `epoch` until `until`.
    pub fn believe(
        &mut self,
        now: Instant,
        holder: usize,
        site: usize,
        epoch: u64,
        lease: u64,
        until: Instant,
    ) {
        if let Some(b) = self.beliefs.get_mut(&holder) {
            if b.lease == lease && b.until > now {
                b.until = b.until.max(until);
                return;
            }
        }
        let others: Vec<(usize, usize, Instant)> = self
            .beliefs
            .iter()
            .filter(|(h, b)| **h != holder && b.site != site && b.until > now)
            .map(|(h, b)| (*h, b.site, b.until))
            .collect();
        for (other, other_site, other_until) in others {
            let overlap = other_until.saturating_duration_since(now);
            self.violation(
                now,
                format!(
                    "S1: holder {holder} (site {site}) holds lease {lease} while holder {other} (site {other_site}) still believes for {overlap:?}"
                ),
            );
        }
        match self.epoch_site.get(&epoch) {
            Some(s) if *s != site => {
                let s = *s;
                self.violation(
                    now,
                    format!("S2: fencing value {epoch} granted to site {s} and site {site}"),
                );
            }
            _ => {
                self.epoch_site.insert(epoch, site);
            }
        }
        let ms = until.saturating_duration_since(now).as_millis();
        self.event(
            now,
            &format!("holder {holder} holds lease {lease} epoch {epoch} for {ms} ms"),
        );
        self.beliefs.insert(holder, Belief { site, lease, until });
    }

    /// Holder `holder` stopped believing at `now` (drained or refused).
    pub fn stop(&mut self, now: Instant, holder: usize, why: &str) {
        if let Some(b) = self.beliefs.get_mut(&holder) {
            if b.until > now {
                b.until = now;
                self.event(now, &format!("holder {holder} stops: {why}"));
            }
        }
    }

    /// Holder `holder` at `site` lost its lease other than by a drain: its belief ended at
    /// `ended` (true time). Counted as needless when the site was settled and connected
    /// to a quorum over the whole lease before it.
    pub fn lapsed(
        &mut self,
        now: Instant,
        holder: usize,
        site: usize,
        ended: Instant,
        ttl: Duration,
        why: &str,
    ) {
        self.lapses += 1;
        let settled_since = ended.checked_sub(ttl).unwrap_or(self.origin);
        let needless = self
            .disturbed_at
            .get(&site)
            .is_none_or(|at| *at < settled_since);
        if needless {
            self.needless_interruptions += 1;
        }
        self.event(
            now,
            &format!(
                "holder {holder} lost its lease ({why}){}",
                if needless { ", needless" } else { "" }
            ),
        );
    }

    /// Whether a holder at `site` believes at `now`.
    pub fn site_holds(&self, site: usize, now: Instant) -> bool {
        self.beliefs
            .values()
            .any(|b| b.site == site && b.until > now)
    }

    /// A grant acknowledged to a holder: lease id and token must never be handed out again.
    pub fn on_grant(&mut self, now: Instant, lease: u64, epoch: u64, token: u64) {
        self.grant_count += 1;
        if let Some(seen) = self.grants.insert(lease, (epoch, token)) {
            self.violation(
                now,
                format!("S3: lease id {lease} acknowledged twice ({seen:?}, then epoch {epoch} token {token})"),
            );
        }
        if let Some(other) = self.tokens.insert(token, lease) {
            self.violation(
                now,
                format!("S3: token {token} acknowledged for lease {other} and lease {lease}"),
            );
        }
    }

    /// The operator was told the group is at `site` (`None`: demoted) from `epoch` on.
    pub fn on_change_acked(&mut self, now: Instant, epoch: u64, site: Option<String>) {
        self.change_count += 1;
        self.event(
            now,
            &format!("operator: acknowledged epoch {epoch} at {site:?}"),
        );
        if let Some(seen) = self.changes.insert(epoch, site.clone()) {
            if seen != site {
                self.violation(
                    now,
                    format!("S3: epoch {epoch} acknowledged at {seen:?} and at {site:?}"),
                );
            }
        }
    }

    /// Checks the applied states of the running controllers against each other and
    /// against every acknowledged change.
    pub fn check_views(
        &mut self,
        now: Instant,
        group: &GroupName,
        views: &[(NodeId, ClusterState)],
    ) {
        let mut by_epoch: BTreeMap<u64, (NodeId, Option<String>, Option<String>)> = BTreeMap::new();
        let mut problems = Vec::new();
        for (node, state) in views {
            let Some(g) = state.groups.get(group) else {
                continue;
            };
            for entry in &g.history {
                let to = entry.to.as_ref().map(|s| s.to_string());
                let from = entry.from.as_ref().map(|s| s.to_string());
                if let Some(acked) = self.changes.get(&entry.epoch.0) {
                    if *acked != to {
                        problems.push(format!(
                            "S3: controller {node} has epoch {} at {to:?}, acknowledged at {acked:?}",
                            entry.epoch.0
                        ));
                    }
                }
                match by_epoch.get(&entry.epoch.0) {
                    Some((other, f, t)) if (f, t) != (&from, &to) => problems.push(format!(
                        "S3: controllers {other} and {node} disagree on epoch {}",
                        entry.epoch.0
                    )),
                    Some(_) => {}
                    None => {
                        by_epoch.insert(entry.epoch.0, (*node, from, to));
                    }
                }
            }
        }
        for p in problems {
            self.violation(now, p);
        }
    }

    /// After healing: the leader's state must carry every acknowledged change and must
    /// never hand out an acknowledged lease id or token again.
    pub fn check_final(&mut self, now: Instant, group: &GroupName, leader_state: &ClusterState) {
        let Some(g) = leader_state.groups.get(group) else {
            self.violation(now, "S3: the leader lost the group".into());
            return;
        };
        let mut problems = Vec::new();
        for epoch in self.changes.keys() {
            if !g.history.iter().any(|h| h.epoch.0 == *epoch) {
                problems.push(format!(
                    "S3: acknowledged epoch {epoch} is not in the leader's history"
                ));
            }
        }
        if let Some(max) = self.grants.keys().max() {
            if leader_state.next_lease_id <= *max {
                problems.push(format!(
                    "S3: next lease id {} would reuse acknowledged lease {max}",
                    leader_state.next_lease_id
                ));
            }
        }
        if let Some(max) = self.tokens.keys().max() {
            if g.next_token.0 <= *max {
                problems.push(format!(
                    "S3: next token {} would reuse acknowledged token {max}",
                    g.next_token.0
                ));
            }
        }
        if matches!(g.phase, Phase::Demoting(_)) {
            problems.push("L1: the group is still demoting after the faults healed".into());
        }
        for p in problems {
            self.violation(now, p);
        }
    }
}
