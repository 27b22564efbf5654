//! The topology file: sites, their controllers, failover groups and timing.
//!
//! Parsing is pure (text in, [`Topology`] or [`ConfigError`] out); reading the file is the
//! caller's job. Every error names the file, the field path (`sites[1].controllers[0].addr`)
//! and the reason, so an operator can fix it without reading code.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{GroupName, NodeId, SiteId};

/// A topology file that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {path}: {reason}")]
pub struct ConfigError {
    /// The file (or other source) the text came from.
    pub file: String,
    /// The field path inside the document, `.` for the document itself.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub reason: String,
}

/// The whole deployment: who the controllers are, where they live, and what fails over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Name shown in logs and used as the Raft cluster name.
    #[serde(default = "default_cluster_name")]
    pub cluster_name: String,
    /// Timing of Raft, leases and failure detection.
    #[serde(default)]
    pub timing: Timing,
    /// Every site, each with the controllers it hosts (a witness site hosts only controllers).
    pub sites: Vec<SiteConfig>,
    /// The failover groups; each is active at one of its sites at a time.
    pub groups: Vec<GroupConfig>,
    /// Transport security; a controller needs it (a CA and per-controller certificates,
    /// or `insecure: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Per-identity limits and the slow-client rule (docs/security.md).
    #[serde(default)]
    pub limits: crate::limits::Limits,
    /// The cluster's id, when the operator pins it (docs/security.md, "Cluster
    /// identity"): a new cluster's first leader fixes this id instead of a random one,
    /// and a controller whose data dir or peers name another id refuses to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Bearer tokens for clients that cannot use certificates (docs/security.md,
    /// "Bearer tokens"): each names an identity and holds only the token's SHA-256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenConfig>,
}

/// One bearer token a controller accepts in place of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The identity's name, recorded in history (`operator/<name>`).
    pub name: String,
    /// `engine`, `operator` or `reader` (peers authenticate by certificate only).
    pub role: String,
    /// For engines: the sites it may act for (at least one); empty for other roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteId>,
    /// The hex SHA-256 of the token (never the token itself): a leaked topology file
    /// gives no one a token.
    pub sha256: String,
}

/// The roles a bearer token may carry.
pub const TOKEN_ROLES: [&str; 3] = ["engine", "operator", "reader"];

/// Why `id` cannot be a cluster id: 1 to 64 ASCII letters, digits, `-`, `_` or `.` (it
/// travels in a gRPC header and shows up in messages).
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    const MAX: usize = 64;
    if id.is_empty() {
        return Err("a cluster id cannot be empty".to_owned());
    }
    if id.len() > MAX {
        return Err(format!(
            "a cluster id is at most {MAX} characters; `{id}` has {}",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "a cluster id holds only ASCII letters, digits, `-`, `_` and `.`; `{id}` holds {bad:?}"
        ));
    }
    Ok(())
}

/// One site of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The site's name, unique in the topology.
    pub name: SiteId,
    /// The controllers that run at this site (may be empty for a site with only executors).
    #[serde(default)]
    pub controllers: Vec<ControllerConfig>,
    /// Commands the leader runs around a change of this site's role.
    #[serde(default)]
    pub hooks: Hooks,
}

/// Site hooks, run by the leader (so they must work from every controller's host) with
/// `FAILOVER_GROUP`, `FAILOVER_SITE`, `FAILOVER_EPOCH` and `FAILOVER_REASON` set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// `sh -c` command run before this site becomes active for a group; a non-zero exit
    /// (or a timeout) vetoes the promotion to this site.
    pub before_acquire: Option<String>,
    /// `sh -c` command run after this site was demoted (best effort; its exit is logged).
    pub after_demote: Option<String>,
    /// How long a hook may run before it is killed and counted as failed.
    #[serde(default = "default_hook_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_hook_timeout_ms() -> u64 {
    10_000
}

/// One controller: a Raft voter serving Raft, admin and lease gRPC on one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Raft node id, unique across all sites, never 0.
    pub id: NodeId,
    /// `host:port` the controller listens on for gRPC, and that peers and clients dial.
    pub addr: String,
    /// `host:port` for HTTP: `/active/<group>/<site>`, `/health`, `/metrics`. None: no HTTP.
    #[serde(default)]
    pub http_addr: Option<String>,
    /// PEM certificate this controller presents to clients and peers (required unless
    /// `tls.insecure`); relative paths are relative to the topology file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Transport security of the cluster (docs/security.md): mutual TLS on every gRPC
/// connection, or, only when asked for explicitly, plaintext without authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signs every controller and client certificate (required
    /// unless `insecure`); relative paths are relative to the topology file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Serve the HTTP endpoints (`http_addr`) over TLS too, with the controller's
    /// certificate (no client certificate asked).
    #[serde(default)]
    pub http: bool,
    /// Plaintext and no authentication: anyone who reaches a port can do anything. The
    /// only way to run without TLS; status and the controllers' logs say so.
    #[serde(default)]
    pub insecure: bool,
}

/// A failover group as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name, unique in the topology.
    pub name: GroupName,
    /// Sites eligible to be active, highest priority first; the first is active on creation.
    pub sites: Vec<SiteId>,
    /// Whether the leader may promote a standby by itself when the active site is lost.
    #[serde(default = "default_true")]
    pub auto_failover: bool,
    /// Accept automatic failover although no site outside this group holds a controller.
    /// Without such a witness, losing the site that holds the Raft majority stops every
    /// failover, and a symmetric split cannot be decided: see docs/configuration.md.
    #[serde(default)]
    pub accept_no_witness: bool,
}

/// Every time bound of the system, in one place (see docs/architecture.md for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// How often the Raft leader sends heartbeats.
    pub raft_heartbeat_ms: u64,
    /// Lower bound of the randomized Raft election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized Raft election timeout.
    pub election_timeout_max_ms: u64,
    /// How long a granted or renewed lease stays valid.
    pub lease_ttl_ms: u64,
    /// How often a lease holder renews.
    pub keepalive_interval_ms: u64,
    /// The largest rate difference between any two monotonic clocks over one TTL.
    pub max_clock_drift_ms: u64,
    /// How long a site may be silent before it is considered lost.
    pub failure_timeout_ms: u64,
    /// After a change of a group's active site, how long a health-based failover (active
    /// site unhealthy but heard) is held back. A lost active site is replaced regardless.
    pub failover_cooldown_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            raft_heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 500,
            lease_ttl_ms: 3500,
            keepalive_interval_ms: 250,
            max_clock_drift_ms: 250,
            failure_timeout_ms: 1500,
            failover_cooldown_ms: 30_000,
        }
    }
}

fn default_cluster_name() -> String {
    "failover".to_owned()
}

fn default_true() -> bool {
    true
}

impl Topology {
    /// Parses and validates a topology document. `file` only labels errors.
    pub fn from_yaml(text: &str, file: &str) -> Result<Topology, ConfigError> {
        Topology::check_yaml(text, file).map_err(|mut errors| errors.remove(0))
    }

    /// Like [`Topology::from_yaml`], but reports every error the validation finds, each
    /// once, in document order (a syntax or type error stops parsing, so it comes alone).
    /// The error list is never empty.
    pub fn check_yaml(text: &str, file: &str) -> Result<Topology, Vec<ConfigError>> {
        let deserializer = serde_norway::Deserializer::from_str(text);
        let topology: Topology = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            vec![ConfigError {
                file: file.to_owned(),
                path: if path.is_empty() {
                    ".".to_owned()
                } else {
                    path
                },
                reason: e.into_inner().to_string(),
            }]
        })?;
        let mut errors = Vec::new();
        topology.validate(&mut errors);
        if errors.is_empty() {
            return Ok(topology);
        }
        Err(errors
            .into_iter()
            .map(|(path, reason)| ConfigError {
                file: file.to_owned(),
                path,
                reason,
            })
            .collect())
    }

    /// Every controller of every site, with the site it belongs to.
    pub fn controllers(&self) -> impl Iterator<Item = (&SiteId, &ControllerConfig)> {
        self.sites
            .iter()
            .flat_map(|s| s.controllers.iter().map(move |c| (&s.name, c)))
    }

    /// The controller with this Raft id.
    pub fn controller(&self, id: NodeId) -> Option<(&SiteId, &ControllerConfig)> {
        self.controllers().find(|(_, c)| c.id == id)
    }

    /// The site with this name.
    pub fn site(&self, name: &str) -> Option<&SiteConfig> {
        self.sites.iter().find(|s| s.name.as_str() == name)
    }

    /// The hooks of the site with this name (none for an unknown site).
    pub fn hooks(&self, site: &str) -> Hooks {
        self.site(site).map(|s| s.hooks.clone()).unwrap_or_default()
    }

    /// The group with this name.
    pub fn group(&self, name: &GroupName) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| &g.name == name)
    }

    /// How controllers secure their connections, or why they cannot start: a topology
    /// without a `tls` section is refused, so plaintext is always an explicit choice.
    pub fn transport(&self) -> Result<&TlsConfig, String> {
        self.tls.as_ref().ok_or_else(|| {
            "the topology has no `tls` section: set `tls: { ca: <CA file> }` and each \
             controller's `cert` and `key` (docs/security.md; `failover dev` generates \
             them), or `tls: { insecure: true }` to run in plaintext without authentication"
                .to_owned()
        })
    }

    /// Whether the cluster runs without TLS (`tls.insecure: true`).
    pub fn insecure(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.insecure)
    }

    /// TLS is configured one way or the other: a CA and every controller's certificate
    /// and key, or `insecure: true` (then no certificate may be named, so a typo cannot
    /// silently turn TLS off).
    fn validate_tls(&self, errors: &mut Vec<(String, String)>) {
        let Some(tls) = &self.tls else {
            // Parsing alone (clients, `failover check`) accepts no section; a controller
            // refuses to start without one (`Topology::transport`).
            return;
        };
        if tls.insecure {
            if tls.ca.is_some() || tls.http {
                errors.push((
                    "tls.insecure".into(),
                    "`insecure: true` cannot be combined with `ca` or `http`: choose one".into(),
                ));
            }
            return;
        }
        if tls.ca.is_none() {
            errors.push((
                "tls.ca".into(),
                "missing: the CA file that signs the cluster's certificates (or set \
                 `insecure: true`)"
                    .into(),
            ));
        }
        for (i, site) in self.sites.iter().enumerate() {
            for (j, c) in site.controllers.iter().enumerate() {
                for (field, value) in [("cert", &c.cert), ("key", &c.key)] {
                    if value.is_none() {
                        errors.push((
                            format!("sites[{i}].controllers[{j}].{field}"),
                            format!(
                                "missing: controller {} needs a certificate and key for \
                                 TLS (or set `tls: {{ insecure: true }}`)",
                                c.id
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// Checks what serde cannot: uniqueness, references between sections, timing
    /// relations. Every problem found is pushed on `errors` as (field path, reason).
    fn validate_tokens(&self, errors: &mut Vec<(String, String)>) {
        if !self.tokens.is_empty() && self.insecure() {
            errors.push((
                "tokens".into(),
                "bearer tokens need TLS: they cannot be combined with `insecure: true`".into(),
            ));
        }
        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let path = format!("tokens[{i}]");
            let mut err =
                |field: &str, reason: String| errors.push((format!("{path}.{field}"), reason));
            if let Err(r) = check_name(&token.name) {
                err("name", r);
            } else if !names.insert(token.name.as_str()) {
                err("name", format!("token name `{}` is used twice", token.name));
            }
            if token.role == "peer" {
                err(
                    "role",
                    "peers authenticate by certificate only, never by token".into(),
                );
            } else if !TOKEN_ROLES.contains(&token.role.as_str()) {
                err(
                    "role",
                    format!("unknown role `{}` (engine, operator or reader)", token.role),
                );
            }
            match (token.role == "engine", token.sites.is_empty()) {
                (true, true) => err("sites", "an engine token needs at least one site".into()),
                (false, false) => err("sites", "only engine tokens are bound to sites".into()),
                _ => {}
            }
            for site in &token.sites {
                if !self.sites.iter().any(|s| s.name == *site) {
                    err("sites", format!("unknown site `{site}`"));
                }
            }
            let hex = token.sha256.len() == 64
                && token
                    .sha256
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
            if !hex {
                err(
                    "sha256",
                    "must be the token's SHA-256 as 64 lowercase hex digits (`failover token new` prints it)".into(),
                );
            } else if !hashes.insert(token.sha256.as_str()) {
                err("sha256", "the same token is listed twice".into());
            }
        }
    }

    fn validate(&self, errors: &mut Vec<(String, String)>) {
        self.validate_tls(errors);
        if let Some(id) = &self.cluster_id {
            if let Err(reason) = check_cluster_id(id) {
                errors.push(("cluster_id".into(), reason));
            }
        }
        self.validate_tokens(errors);
        let mut err = |path: String, reason: String| errors.push((path, reason));
        if self.sites.is_empty() {
            err("sites".into(), "at least one site is required".into());
        }
        let mut site_names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, site) in self.sites.iter().enumerate() {
            if let Err(r) = check_name(site.name.as_str()) {
                err(format!("sites[{i}].name"), r);
            } else if !site_names.insert(&site.name) {
                err(
                    format!("sites[{i}].name"),
                    format!("site `{}` is declared twice", site.name),
                );
            }
            for (j, c) in site.controllers.iter().enumerate() {
                let path = format!("sites[{i}].controllers[{j}]");
                if c.id == 0 {
                    err(format!("{path}.id"), "controller ids start at 1".into());
                } else if !ids.insert(c.id) {
                    err(
                        format!("{path}.id"),
                        format!("controller id {} is used twice", c.id),
                    );
                }
                if let Err(r) = check_addr(&c.addr) {
                    err(format!("{path}.addr"), r);
                } else if !addrs.insert(&c.addr) {
                    err(
                        format!("{path}.addr"),
                        format!("address {} is used by two controllers", c.addr),
                    );
                }
                if let Some(http) = &c.http_addr {
                    if let Err(r) = check_addr(http) {
                        err(format!("{path}.http_addr"), r);
                    } else if !addrs.insert(http) {
                        err(
                            format!("{path}.http_addr"),
                            format!("address {http} is used twice"),
                        );
                    }
                }
            }
        }
        if ids.is_empty() && !self.sites.is_empty() {
            err("sites".into(), "at least one controller is required".into());
        }
        self.validate_groups(&site_names, errors);
        if let Err((f, r)) = self.timing.validate() {
            errors.push((format!("timing.{f}"), r));
        }
        if let Err((f, r)) = self.limits.validate() {
            errors.push((format!("limits.{f}"), r));
        }
    }

    fn validate_groups(&self, site_names: &BTreeSet<&SiteId>, errors: &mut Vec<(String, String)>) {
        let mut names = BTreeSet::new();
        for (i, group) in self.groups.iter().enumerate() {
            let path = format!("groups[{i}]");
            if let Err(r) = check_name(group.name.as_str()) {
                errors.push((format!("{path}.name"), r));
            } else if !names.insert(&group.name) {
                errors.push((
                    format!("{path}.name"),
                    format!("group `{}` is declared twice", group.name),
                ));
            }
            if group.sites.is_empty() {
                errors.push((
                    format!("{path}.sites"),
                    "a group needs at least one eligible site".into(),
                ));
                continue;
            }
            let mut seen = BTreeSet::new();
            let mut sites_ok = true;
            for (j, site) in group.sites.iter().enumerate() {
                if !site_names.contains(site) {
                    sites_ok = false;
                    errors.push((
                        format!("{path}.sites[{j}]"),
                        format!("unknown site `{site}` (not in `sites`)"),
                    ));
                } else if !seen.insert(site) {
                    sites_ok = false;
                    errors.push((
                        format!("{path}.sites[{j}]"),
                        format!("site `{site}` is listed twice"),
                    ));
                }
            }
            // The placement rules only make sense over known, distinct sites; one error
            // per group field, so a witness problem is not reported twice.
            if sites_ok {
                if let Err(reason) = self
                    .check_witness(group)
                    .and_then(|()| self.check_quorum_survives_site_loss(group))
                {
                    errors.push((format!("{path}.auto_failover"), reason));
                }
            }
        }
    }
}

impl Topology {
    /// Automatic failover between the group's sites needs a controller outside them: a
    /// witness that breaks the tie, so whichever data site is lost, the rest still form a
    /// Raft majority and can promote.
    fn check_witness(&self, group: &GroupConfig) -> Result<(), String> {
        if !group.auto_failover || group.accept_no_witness || group.sites.len() < 2 {
            return Ok(());
        }
        let witness = self
            .sites
            .iter()
            .any(|s| !group.sites.contains(&s.name) && !s.controllers.is_empty());
        if witness {
            return Ok(());
        }
        Err(format!(
            "automatic failover of group `{}` needs a controller at a third site: with \
             controllers only at {}, losing the site that holds the Raft majority leaves no \
             quorum to promote the other, and the other cannot promote itself. Add a \
             witness site with one controller, set `auto_failover: false`, or set \
             `accept_no_witness: true` to accept that risk",
            group.name,
            group
                .sites
                .iter()
                .map(SiteId::as_str)
                .collect::<Vec<_>>()
                .join(" and ")
        ))
    }
}

impl Topology {
    /// Automatic failover exists to survive the loss of one data site, so the controllers
    /// outside any one of the group's sites must still form a Raft majority: a site that
    /// holds a majority itself (3 of 5 at `site-a`) would take the quorum down with it, and
    /// then nothing could promote. `accept_no_witness` already accepts exactly that risk
    /// for the majority site, so it exempts the group here too.
    fn check_quorum_survives_site_loss(&self, group: &GroupConfig) -> Result<(), String> {
        if !group.auto_failover || group.accept_no_witness || group.sites.len() < 2 {
            return Ok(());
        }
        let total = self.controllers().count();
        let quorum = total / 2 + 1;
        for site in &group.sites {
            let at_site = self.site(site.as_str()).map_or(0, |s| s.controllers.len());
            let left = total - at_site;
            if left < quorum {
                return Err(format!(
                    "automatic failover of group `{}` cannot survive the loss of site \
                     `{site}`: it holds {at_site} of the {total} controllers, and the {left} \
                     left are fewer than the Raft quorum of {quorum}, so nothing could \
                     promote. Place the controllers so that no site of the group holds \
                     {quorum} or more (e.g. 2 + 2 + 1 witness), or set \
                     `auto_failover: false`",
                    group.name
                ));
            }
        }
        Ok(())
    }
}

impl Timing {
    /// The longest time from losing the Raft leader to a new leader that answers renewals,
    /// in ms: followers refuse to vote for one leader lease after they last heard the
    /// leader (openraft sets that lease to `election_timeout_max_ms`), a follower's
    /// election timer fires at most `election_timeout_max_ms` after that, and the pre-vote,
    /// the vote and the new leader's first commit take a round each, which one heartbeat
    /// interval covers on a LAN (docs/leases.md, "Riding out controller churn").
    pub fn takeover_ms(&self) -> u64 {
        2 * self.election_timeout_max_ms + self.raft_heartbeat_ms
    }

    /// How much a holder may keep off its lease (its stop margin) and still ride out one
    /// leader election, in ms; negative when no holder can. A renewal sent at `s` and
    /// answered gives `valid_until = s + ttl - drift - stop_grace`. The next one, at
    /// `s + keepalive`, may be lost with the leader; the holder gives up on it two
    /// keepalive intervals later, the new leader answers at most `takeover_ms` after the
    /// loss, and racing every controller reaches it within one more keepalive interval.
    /// So the holder's work keeps running when
    /// `ttl - drift - stop_margin > 2 x keepalive + max(takeover, 2 x keepalive)`: this
    /// returns the left side minus the right side with a zero stop margin. An executor's stop margin is twice its
    /// stop grace (the guard starts stopping a stop grace before `valid_until`).
    pub fn ride_out_margin_ms(&self) -> i64 {
        let k = self.keepalive_interval_ms as i64;
        let have = self.lease_ttl_ms as i64 - self.max_clock_drift_ms as i64;
        // The holder gives up on an unanswered keepalive after 2 x keepalive, which counts
        // only when that is longer than the takeover itself.
        let need = 2 * k + (self.takeover_ms() as i64).max(2 * k);
        have - need
    }

    /// The relations that keep leases safe and elections stable.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("raft_heartbeat_ms", self.raft_heartbeat_ms),
            ("lease_ttl_ms", self.lease_ttl_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("failure_timeout_ms", self.failure_timeout_ms),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err((field, "must be greater than 0".into()));
            }
        }
        if self.election_timeout_min_ms < 3 * self.raft_heartbeat_ms {
            return Err((
                "election_timeout_min_ms",
                format!(
                    "must be at least 3 x raft_heartbeat_ms ({}), or followers start elections between heartbeats",
                    3 * self.raft_heartbeat_ms
                ),
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err((
                "election_timeout_max_ms",
                "must be greater than election_timeout_min_ms".into(),
            ));
        }
        if self.keepalive_interval_ms * 3 > self.lease_ttl_ms {
            return Err((
                "keepalive_interval_ms",
                format!(
                    "must be at most a third of lease_ttl_ms ({} ms) so a lease survives two lost keepalives",
                    self.lease_ttl_ms / 3
                ),
            ));
        }
        if self.max_clock_drift_ms * 4 > self.lease_ttl_ms {
            return Err((
                "max_clock_drift_ms",
                format!(
                    "must be at most a quarter of lease_ttl_ms ({} ms); a larger drift leaves no usable lease",
                    self.lease_ttl_ms / 4
                ),
            ));
        }
        let margin = self.ride_out_margin_ms();
        if margin <= 0 {
            return Err((
                "lease_ttl_ms",
                format!(
                    "{} ms cannot ride out one leader election: a lease must outlast \
                     max_clock_drift_ms ({}) + 2 x keepalive_interval_ms ({}) + the time to \
                     elect a new leader, 2 x election_timeout_max_ms + raft_heartbeat_ms ({}), \
                     plus the holder's stop grace; raise lease_ttl_ms above {} ms or shorten \
                     the others (docs/leases.md, \"Riding out controller churn\")",
                    self.lease_ttl_ms,
                    self.max_clock_drift_ms,
                    self.keepalive_interval_ms,
                    self.takeover_ms(),
                    self.lease_ttl_ms as i64 - margin
                ),
            ));
        }
        Ok(())
    }
}

/// Names are used in paths, metrics labels and environment variables: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name: use 1 to 63 letters, digits, `-` or `_`"
        ))
    }
}

fn check_addr(addr: &str) -> Result<(), String> {
    let bad = || format!("`{addr}` is not a `host:port` address");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let controllers = self.controllers().count();
        write!(
            f,
            "{} ({} sites, {} controllers, {} groups)",
            self.cluster_name,
            self.sites.len(),
            controllers,
            self.groups.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
sites:
  - name: site-a
    controllers:
      - { id: 1, addr: "127.0.0.1:7101" }
  - name: site-b
    controllers:
      - { id: 2, addr: "127.0.0.1:7102" }
  - name: witness
    controllers:
      - { id: 3, addr: "127.0.0.1:7103" }
groups:
  - name: default
    sites: [site-a, site-b]
"#;

    fn error_of(text: &str) -> ConfigError {
        Topology::from_yaml(text, "t.yaml").expect_err("config should be refused")
    }

    /// Every independent problem is reported, each once, with its field path.
    #[test]
    fn check_reports_every_error_once() {
        let text = VALID
            .replace("id: 2,", "id: 1,")
            .replace("127.0.0.1:7103", "127.0.0.1:0")
            .replace("[site-a, site-b]", "[site-a, site-z]");
        let errors = Topology::check_yaml(&text, "t.yaml").expect_err("refused");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "sites[1].controllers[0].id",
                "sites[2].controllers[0].addr",
                "groups[0].sites[1]",
            ],
            "{errors:?}"
        );
        assert_eq!(Topology::from_yaml(&text, "t.yaml"), Err(errors[0].clone()));
    }

    /// The minimal valid file parses with default timing and auto failover on.
    #[test]
    fn valid_topology_parses() {
        let t = Topology::from_yaml(VALID, "t.yaml").expect("valid");
        assert_eq!(t.controllers().count(), 3);
        assert_eq!(t.timing, Timing::default());
        assert!(t.groups[0].auto_failover);
    }

    /// A group naming a site that does not exist is refused at that exact field.
    #[test]
    fn unknown_site_in_group_names_the_field() {
        let e = error_of(&VALID.replace("[site-a, site-b]", "[site-a, site-c]"));
        assert_eq!(e.path, "groups[0].sites[1]");
        assert!(e.reason.contains("site-c"), "{e}");
        assert_eq!(e.to_string().split(':').next(), Some("t.yaml"));
    }

    /// Type errors from serde carry the path too.
    #[test]
    fn wrong_type_names_the_field() {
        let e = error_of(&VALID.replace("id: 2,", "id: two,"));
        assert_eq!(e.path, "sites[1].controllers[0].id");
    }

    /// Misspelled keys are refused rather than silently ignored.
    #[test]
    fn unknown_key_is_refused() {
        let e = error_of(&VALID.replace("groups:", "timing: { lease_tll_ms: 5 }\ngroups:"));
        assert_eq!(e.path, "timing.lease_tll_ms");
        assert!(e.reason.contains("lease_tll_ms"), "{e}");
    }

    /// Duplicate controller ids and addresses are refused.
    #[test]
    fn duplicates_are_refused() {
        let e = error_of(&VALID.replace("id: 2,", "id: 1,"));
        assert_eq!(e.path, "sites[1].controllers[0].id");
        let e = error_of(&VALID.replace("7102", "7101"));
        assert_eq!(e.path, "sites[1].controllers[0].addr");
    }

    /// Timing whose lease cannot outlast a leader election is refused at load, naming the
    /// bound; the defaults ride one out with room for a 500 ms executor stop grace.
    #[test]
    fn timing_must_ride_out_an_election() {
        let t = Timing::default();
        assert_eq!(t.takeover_ms(), 2 * 500 + 100);
        assert_eq!(t.ride_out_margin_ms(), 3500 - 250 - 2 * 250 - 1100);
        assert!(t.ride_out_margin_ms() >= 2 * 500);
        let old = "timing: { raft_heartbeat_ms: 100, election_timeout_min_ms: 500, \
                   election_timeout_max_ms: 1000, lease_ttl_ms: 2000, keepalive_interval_ms: 500 }\ngroups:";
        let e = error_of(&VALID.replace("groups:", old));
        assert_eq!(e.path, "timing.lease_ttl_ms");
        assert!(
            e.reason.contains("cannot ride out one leader election"),
            "{}",
            e.reason
        );
        assert!(e.reason.contains("above 3350 ms"), "{}", e.reason);
        let ok = "timing: { raft_heartbeat_ms: 100, election_timeout_min_ms: 500, \
                  election_timeout_max_ms: 1000, lease_ttl_ms: 3400, keepalive_interval_ms: 500 }\ngroups:";
        Topology::from_yaml(&VALID.replace("groups:", ok), "t.yaml").expect("rides out");
    }

    /// Timing that would make leases unsafe or elections unstable is refused.
    #[test]
    fn unsafe_timing_is_refused() {
        let e = error_of(&VALID.replace(
            "groups:",
            "timing: { lease_ttl_ms: 1000, keepalive_interval_ms: 600 }\ngroups:",
        ));
        assert_eq!(e.path, "timing.keepalive_interval_ms");
        let e = error_of(&VALID.replace(
            "groups:",
            "timing: { lease_ttl_ms: 1000, keepalive_interval_ms: 200, max_clock_drift_ms: 300 }\ngroups:",
        ));
        assert_eq!(e.path, "timing.max_clock_drift_ms");
    }

    /// Two data sites without a witness are refused for automatic failover, with the
    /// reason, unless the risk is accepted or auto failover is off.
    #[test]
    fn two_sites_without_witness_are_refused_for_auto_failover() {
        let no_witness = VALID.replace(
            "  - name: witness\n    controllers:\n      - { id: 3, addr: \"127.0.0.1:7103\" }\n",
            "",
        );
        let e = error_of(&no_witness);
        assert_eq!(e.path, "groups[0].auto_failover");
        assert!(e.reason.contains("third site"), "{e}");
        let accepted = no_witness.replace(
            "sites: [site-a, site-b]",
            "sites: [site-a, site-b]\n    accept_no_witness: true",
        );
        Topology::from_yaml(&accepted, "t.yaml").expect("risk accepted");
        let manual = no_witness.replace(
            "sites: [site-a, site-b]",
            "sites: [site-a, site-b]\n    auto_failover: false",
        );
        Topology::from_yaml(&manual, "t.yaml").expect("manual failover only");
    }

    /// A data site that holds a Raft majority (3 of 5) is refused for automatic failover,
    /// naming the site and the counts; the balanced layout (2 + 2 + 1) and manual
    /// failover are accepted.
    #[test]
    fn data_site_holding_the_quorum_is_refused_for_auto_failover() {
        let heavy = r#"
sites:
  - name: site-a
    controllers:
      - { id: 1, addr: "127.0.0.1:7101" }
      - { id: 2, addr: "127.0.0.1:7102" }
      - { id: 3, addr: "127.0.0.1:7103" }
  - name: site-b
    controllers:
      - { id: 4, addr: "127.0.0.1:7104" }
  - name: witness
    controllers:
      - { id: 5, addr: "127.0.0.1:7105" }
groups:
  - name: default
    sites: [site-a, site-b]
"#;
        let e = error_of(heavy);
        assert_eq!(e.path, "groups[0].auto_failover");
        assert!(e.reason.contains("site `site-a`"), "{e}");
        assert!(e.reason.contains("3 of the 5 controllers"), "{e}");
        assert!(e.reason.contains("the 2 left"), "{e}");
        assert!(e.reason.contains("quorum of 3"), "{e}");
        assert!(
            e.to_string()
                .starts_with("t.yaml: groups[0].auto_failover: "),
            "{e}"
        );

        let balanced = heavy.replace("      - { id: 3, addr: \"127.0.0.1:7103\" }\n", "");
        let balanced = balanced.replace(
            "      - { id: 4, addr: \"127.0.0.1:7104\" }\n",
            "      - { id: 3, addr: \"127.0.0.1:7103\" }\n      - { id: 4, addr: \"127.0.0.1:7104\" }\n",
        );
        Topology::from_yaml(&balanced, "t.yaml").expect("2 + 2 + 1 survives any site");
        let manual = heavy.replace(
            "sites: [site-a, site-b]",
            "sites: [site-a, site-b]\n    auto_failover: false",
        );
        Topology::from_yaml(&manual, "t.yaml").expect("manual failover only");
    }

    /// Every data site of the group is checked, not only the first: a majority at the
    /// standby site is refused too, naming that site.
    #[test]
    fn quorum_check_counts_only_the_lost_data_site() {
        let e = error_of(&VALID.replace(
            "      - { id: 2, addr: \"127.0.0.1:7102\" }\n",
            "      - { id: 2, addr: \"127.0.0.1:7102\" }\n      - { id: 4, addr: \"127.0.0.1:7104\" }\n      - { id: 5, addr: \"127.0.0.1:7105\" }\n",
        ));
        assert!(e.reason.contains("site `site-b`"), "{e}");
        assert!(e.reason.contains("3 of the 5 controllers"), "{e}");
        Topology::from_yaml(VALID, "t.yaml").expect("1 + 1 + 1 survives any data site");
    }

    /// A malformed address is refused with the field path.
    #[test]
    fn bad_address_is_refused() {
        let e = error_of(&VALID.replace("127.0.0.1:7103", "localhost"));
        assert_eq!(e.path, "sites[2].controllers[0].addr");
    }
}
