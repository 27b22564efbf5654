//! A data directory whose file was truncated or garbled is refused at start with an
//! error naming the file; it is never silently reset, and the damaged file is left
//! exactly as found (an operator may still recover from it).

use std::path::Path;

use failover_controller::store;

/// A data dir with a controller's metadata in it (node id 1), closed cleanly.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(store::open(dir.path(), 1).expect("open as 1"));
    dir
}

/// Opens the damaged dir, expects a refusal naming the data file, and checks that the
/// file is byte for byte what it was before the attempt.
fn refused(dir: &Path, what: &str) {
    let file = dir.join(store::DATA_FILE);
    let before = std::fs::read(&file).expect("read damaged file");
    let result = store::open(dir, 1);
    let after = std::fs::read(&file).expect("read again");
    let err = match result {
        Ok(_) => panic!("{what}: a damaged data dir was opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&file.display().to_string()),
        "{what}: the file is not named: {err}"
    );
    assert!(after == before, "{what}: the damaged file was rewritten");
}

#[test]
fn an_empty_data_file_is_refused_not_reset() {
    let dir = populated();
    std::fs::write(dir.path().join(store::DATA_FILE), b"").expect("truncate");
    refused(dir.path(), "empty");
}

#[test]
fn a_truncated_data_file_is_refused() {
    let dir = populated();
    let file = dir.path().join(store::DATA_FILE);
    let len = std::fs::metadata(&file).expect("len").len();
    for keep in [100, 512, len / 2] {
        let bytes = std::fs::read(&file).expect("read");
        let dir2 = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir2.path().join(store::DATA_FILE), &bytes[..keep as usize])
            .expect("truncate");
        refused(dir2.path(), &format!("truncated to {keep} of {len}"));
    }
}

#[test]
fn a_garbled_header_is_refused() {
    let dir = populated();
    let file = dir.path().join(store::DATA_FILE);
    let mut bytes = std::fs::read(&file).expect("read");
    for b in bytes.iter_mut().take(64) {
        *b ^= 0x5a;
    }
    std::fs::write(&file, &bytes).expect("garble");
    refused(dir.path(), "garbled header");
}
