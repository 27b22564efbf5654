//! Shell-script workers for executor tests: each records its pid and its child's pid, its
//! fencing token, and a health marker under a directory, and runs until killed; with
//! `dir/broken` present it exits at once (a failing new generation).

use std::path::{Path, PathBuf};

use super::alive;

/// Writes the worker script into `dir` and returns its path.
pub fn script(dir: &Path) -> PathBuf {
    let path = dir.join("worker.sh");
    let text = format!(
        r#"#!/bin/sh
d={dir}
[ -f "$d/broken" ] && exit 3
sleep 1000 &
echo "$$ $!" > "$d/pids-$FAILOVER_SITE-$FAILOVER_INSTANCE.$$"
echo "$FAILOVER_FENCING_TOKEN" > "$d/token-$FAILOVER_SITE-$FAILOVER_INSTANCE"
touch "$d/healthy-$FAILOVER_SITE-$FAILOVER_INSTANCE"
wait
"#,
        dir = dir.display()
    );
    std::fs::write(&path, text).expect("write worker");
    let c = std::ffi::CString::new(path.to_str().expect("utf8")).expect("path");
    // SAFETY: chmod on a file we just wrote.
    unsafe { libc::chmod(c.as_ptr(), 0o755) };
    path
}

/// Every (worker, child) pid recorded for `site` so far.
pub fn recorded(dir: &Path, site: &str) -> Vec<i32> {
    let prefix = format!("pids-{site}-");
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// The recorded pids of `site` that are still alive.
pub fn live(dir: &Path, site: &str) -> Vec<i32> {
    recorded(dir, site)
        .into_iter()
        .filter(|p| alive(*p))
        .collect()
}
