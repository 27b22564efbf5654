//! docs/configuration.md names every field of the topology file, and only those: a field
//! added to (or removed from) the config structs without the reference fails here.

use std::collections::BTreeSet;

use failover_core::config::{ControllerConfig, GroupConfig, Hooks, SiteConfig, Topology};
use failover_core::{GroupName, NodeId, SiteId, Timing};
use serde_json::Value;

/// A topology with every optional field set, so serializing it shows every key.
fn full_topology() -> Topology {
    Topology {
        cluster_name: "c".into(),
        timing: Timing::default(),
        sites: vec![SiteConfig {
            name: SiteId("a".into()),
            controllers: vec![ControllerConfig {
                id: 1 as NodeId,
                addr: "127.0.0.1:1".into(),
                http_addr: Some("127.0.0.1:2".into()),
                cert: Some("c.pem".into()),
                key: Some("c.key".into()),
            }],
            hooks: Hooks {
                before_acquire: Some("true".into()),
                after_demote: Some("true".into()),
                timeout_ms: 1,
            },
        }],
        groups: vec![GroupConfig {
            name: GroupName("g".into()),
            sites: vec![SiteId("a".into())],
            auto_failover: true,
            accept_no_witness: false,
        }],
        tls: Some(failover_core::config::TlsConfig {
            ca: Some("ca.pem".into()),
            http: true,
            insecure: false,
        }),
        limits: failover_core::limits::Limits::default(),
        cluster_id: Some("c0ffee".into()),
        tokens: vec![failover_core::config::TokenConfig {
            name: "ci".into(),
            role: "engine".into(),
            sites: vec![SiteId("a".into())],
            sha256: "0".repeat(64),
        }],
    }
}

/// Every field path of `value`: `timing.lease_ttl_ms`, `sites[].controllers[].addr`.
fn field_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                field_paths(child, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                field_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// The field paths the reference documents: the first cell of each table row, when it is
/// a single backquoted name that looks like a field (no flag, no variable).
fn documented_paths(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(name, _)| name.to_owned()))
        .filter(|name| {
            !name.starts_with('-')
                && !name.contains('`')
                && !name.contains(' ')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c))
        })
        .collect()
}

/// Every field of the config structs has a row in docs/configuration.md, and every row
/// names a field that exists.
#[test]
fn configuration_reference_names_every_field() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let doc = std::fs::read_to_string(doc_path).expect("read docs/configuration.md");
    let value = serde_json::to_value(full_topology()).expect("serialize");
    let mut fields = BTreeSet::new();
    field_paths(&value, "", &mut fields);
    assert!(fields.contains("timing.failover_cooldown_ms"), "{fields:?}");
    assert!(
        fields.contains("sites[].controllers[].http_addr"),
        "{fields:?}"
    );

    let documented = documented_paths(&doc);
    let missing: Vec<&String> = fields.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "fields of the topology file without a row in docs/configuration.md: {missing:?}"
    );
    let unknown: Vec<&String> = documented.difference(&fields).collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents fields the config structs do not have: {unknown:?}"
    );
}

/// The defaults the reference states are the defaults the code applies.
#[test]
fn configuration_reference_states_the_default_timing() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let doc = std::fs::read_to_string(doc_path).expect("read docs/configuration.md");
    let timing = serde_json::to_value(Timing::default()).expect("serialize");
    for (field, default) in timing.as_object().expect("timing is a map") {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `timing.{field}` |")))
            .unwrap_or_else(|| panic!("no row for timing.{field}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(
            cells.get(3).copied(),
            Some(default.to_string().as_str()),
            "default of timing.{field} in docs/configuration.md: {row}"
        );
    }
}
