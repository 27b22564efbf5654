//! The fuzz targets' bodies, as plain functions so they also run as ordinary tests and
//! under any driver (libFuzzer here; `cargo fuzz` on nightly uses the same binaries).
//! Each must never panic on any input: a panic is a bug the fuzzer found.

use failover_core::{ClusterState, Command, Topology};
use failover_proto::{admin, executor, lease, wire};
use prost::Message;

/// The topology parser: any text is either a topology that passes validation or a
/// list of errors, each naming a path; an accepted one survives a round trip.
pub fn topology(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Topology::check_yaml(text, "fuzz.yaml") {
        Ok(topology) => {
            let again = serde_json::to_string(&topology).expect("serialise a topology");
            let back: Topology = serde_json::from_str(&again).expect("read it back");
            assert_eq!(back, topology, "round trip changed the topology");
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "an error list is never empty");
            for e in errors {
                assert!(!e.path.is_empty(), "every error names a path: {e}");
            }
        }
    }
}

/// The state machine's command decoding and apply: lines of JSON, one command each, as
/// the Raft log stores them, applied in order to an empty state. `apply` asserts the
/// group invariants after every change, so a command sequence that breaks one panics.
pub fn command(data: &[u8]) {
    let mut state = ClusterState::default();
    for line in data.split(|b| *b == b'\n').take(64) {
        if let Ok(command) = serde_json::from_slice::<Command>(line) {
            let before = state.clone();
            if state.apply(&command).is_err() {
                assert_eq!(state, before, "a rejected command changed the state");
            }
        }
    }
}

/// The wire conversions: the first byte picks a message, the rest is decoded as it;
/// whatever decodes is validated, and what validates respects the bounds.
pub fn wire(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            if let Ok(m) = lease::AcquireRequest::decode(body) {
                if let Ok(a) = wire::Acquire::try_from(&m) {
                    assert!(a.group.as_str().len() <= wire::MAX_NAME_BYTES);
                    assert!(!a.instance.is_empty());
                }
            }
        }
        1 => {
            if let Ok(m) = lease::AcquireResponse::decode(body) {
                if let Ok(wire::AcquireAnswer::Granted(g)) = wire::AcquireAnswer::try_from(&m) {
                    assert!(!g.ttl.is_zero());
                    assert!(g.ttl.as_millis() <= u128::from(wire::MAX_GRANT_MS));
                }
            }
        }
        2 => {
            if let Ok(m) = lease::KeepAliveResponse::decode(body) {
                let _ = wire::KeepAliveAnswer::try_from(&m);
            }
        }
        3 => {
            if let Ok(m) = executor::ExecutorReport::decode(body) {
                if wire::check_report(&m).is_ok() {
                    assert!(m.workers.len() <= wire::MAX_WORKERS);
                    assert!(m.message.len() <= wire::MAX_MESSAGE_BYTES);
                }
            }
        }
        4 => {
            if let Ok(m) = admin::PromoteRequest::decode(body) {
                if let Ok(p) = wire::Promote::try_from(&m) {
                    assert!(p.reason.len() <= wire::MAX_REASON_BYTES);
                }
            }
        }
        5 => {
            if let Ok(m) = admin::PauseRequest::decode(body) {
                let _ = wire::SetPause::try_from(&m);
            }
        }
        6 => {
            if let Ok(m) = lease::WatchRequest::decode(body) {
                let _ = wire::Watch::try_from(&m);
            }
        }
        _ => {
            if let Ok(m) = admin::DemoteRequest::decode(body) {
                let _ = wire::Demote::try_from(&m);
            }
        }
    }
}
