//! A topology file with a mistake of each kind is refused with an error that names the
//! file, the key (its path in the document) and the line, and says what was expected.

use failover_core::Topology;

const GOOD: &str = include_str!("../../../sites.example.yaml");

/// The example topology with `from` replaced by `to` (exactly once).
fn with(from: &str, to: &str) -> String {
    assert_eq!(GOOD.matches(from).count(), 1, "{from:?} must occur once");
    GOOD.replacen(from, to, 1)
}

/// The line (1-based) of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text.find(needle).expect("needle");
    text[..at].lines().count().max(1) + usize::from(text[..at].ends_with('\n'))
}

/// Parses `text` and checks the error: the file, the key path, the line, and `says`.
fn refused(text: &str, key: &str, line_of_text: &str, says: &str) {
    let e = Topology::from_yaml(text, "sites.yaml").expect_err("must be refused");
    let shown = e.to_string();
    assert!(shown.starts_with("sites.yaml: "), "{shown}");
    assert_eq!(e.path, key, "{shown}");
    let line = line_of(text, line_of_text);
    assert!(
        shown.contains(&format!("line {line}")),
        "line {line} not named: {shown}"
    );
    assert!(shown.contains(says), "{says:?} not in: {shown}");
}

#[test]
fn the_example_parses() {
    Topology::from_yaml(GOOD, "sites.yaml").expect("example is valid");
}

#[test]
fn a_string_where_a_number_belongs() {
    let text = with("lease_ttl_ms: 3500", "lease_ttl_ms: soon");
    refused(
        &text,
        "timing.lease_ttl_ms",
        "lease_ttl_ms: soon",
        "expected u64",
    );
}

#[test]
fn a_negative_number_for_a_duration() {
    let text = with("keepalive_interval_ms: 250", "keepalive_interval_ms: -250");
    refused(
        &text,
        "timing.keepalive_interval_ms",
        "keepalive_interval_ms: -250",
        "-250",
    );
}

#[test]
fn a_number_too_large() {
    let text = with(
        "failover_cooldown_ms: 30000",
        "failover_cooldown_ms: 99999999999999999999999",
    );
    refused(
        &text,
        "timing.failover_cooldown_ms",
        "failover_cooldown_ms: 9",
        "failover_cooldown_ms",
    );
}

#[test]
fn a_string_where_a_bool_belongs() {
    let text = with("auto_failover: true", "auto_failover: sometimes");
    refused(
        &text,
        "groups[0].auto_failover",
        "auto_failover: sometimes",
        "expected a boolean",
    );
}

#[test]
fn a_scalar_where_a_list_belongs() {
    let text = with("sites: [site-a, site-b]", "sites: site-a");
    refused(
        &text,
        "groups[0].sites",
        "sites: site-a",
        "expected a sequence",
    );
}

#[test]
fn a_list_where_a_map_belongs() {
    let text = with(
        "timing:\n  raft_heartbeat_ms: 100",
        "timing: [1, 2]\nxtiming:\n  raft_heartbeat_ms: 100",
    );
    refused(&text, "timing", "timing: [1, 2]", "expected struct Timing");
}

#[test]
fn an_unknown_key() {
    let text = with(
        "auto_failover: true",
        "auto_failover: true\n    auto_fialover: true",
    );
    refused(
        &text,
        "groups[0].auto_fialover",
        "auto_fialover",
        "unknown field `auto_fialover`",
    );
}

#[test]
fn a_missing_key() {
    let text = with(
        "      - { id: 3, addr: \"127.0.0.1:7103\", http_addr: \"127.0.0.1:7203\" }",
        "      - { id: 3, http_addr: \"127.0.0.1:7203\" }",
    );
    refused(
        &text,
        "sites[1].controllers[0]",
        "{ id: 3, http_addr",
        "missing field `addr`",
    );
}

#[test]
fn broken_yaml_syntax() {
    let text = with("sites: [site-a, site-b]", "sites: [site-a, site-b");
    let e = Topology::from_yaml(&text, "sites.yaml").expect_err("syntax");
    assert!(e.to_string().contains("line "), "{e}");
}

/// Bearer tokens and the cluster id pin: each mistake is refused naming its key.
#[test]
fn tokens_and_cluster_id_are_checked() {
    let hash = "a".repeat(64);
    let good = format!(
        "{GOOD}\ncluster_id: prod-eu.1\ntokens:\n  - {{ name: dash, role: reader, sha256: {hash} }}\n  \
         - {{ name: batch, role: engine, sites: [site-a], sha256: {} }}\n",
        "b".repeat(64)
    );
    let topology = Topology::from_yaml(&good, "sites.yaml").expect("valid tokens");
    assert_eq!(topology.tokens.len(), 2);
    assert_eq!(topology.cluster_id.as_deref(), Some("prod-eu.1"));

    let bad = format!(
        "{GOOD}\ncluster_id: \"not an id\"\ntokens:\n  - {{ name: p, role: peer, sha256: {hash} }}\n  \
         - {{ name: e, role: engine, sha256: {} }}\n  - {{ name: r, role: reader, sites: [site-a], sha256: {} }}\n  \
         - {{ name: x, role: reader, sha256: ABC }}\n  - {{ name: y, role: reader, sha256: {hash} }}\n",
        "c".repeat(64),
        "d".repeat(64)
    );
    let errors = Topology::check_yaml(&bad, "sites.yaml").expect_err("refused");
    let shown: Vec<(String, String)> = errors
        .iter()
        .map(|e| (e.path.clone(), e.reason.clone()))
        .collect();
    let has = |path: &str, says: &str| {
        assert!(
            shown.iter().any(|(p, r)| p == path && r.contains(says)),
            "{path}: {says:?} not in {shown:?}"
        )
    };
    has("cluster_id", "holds only ASCII letters");
    has("tokens[0].role", "never by token");
    has("tokens[1].sites", "needs at least one site");
    has("tokens[2].sites", "only engine tokens");
    has("tokens[3].sha256", "64 lowercase hex digits");
    has("tokens[4].sha256", "listed twice");
}
