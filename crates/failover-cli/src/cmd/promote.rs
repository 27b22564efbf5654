//! `failover promote SITE`: make a site active for a group.

use clap::Args;
use failover_proto::admin::PromoteRequest;

use super::{ClusterArgs, Output};
use crate::output;
use failover_proto::admin::{GroupStatus, PromoteResponse};
use serde::Serialize;

use crate::output::GroupJson;

/// Arguments of `failover promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The site to make active.
    pub site: String,
    /// The failover group.
    #[arg(long, default_value = "default")]
    pub group: String,
    /// Why; recorded in the history.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Block until the site is active and print how long it took (otherwise return once
    /// the old site has been told to drain).
    #[arg(long)]
    pub wait: bool,
    /// Promote even if the site's executors do not report ready. The old site's leases
    /// are still waited out (never skipped), and the site's before_acquire hook still runs.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format (`-o json`).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

pub(crate) async fn run(args: PromoteArgs) -> anyhow::Result<()> {
    let output = args.output;
    let mut client = args.cluster.client()?;
    let request = PromoteRequest {
        group: args.group.clone(),
        site: args.site.clone(),
        reason: args.reason,
        actor: actor(),
        wait: args.wait,
        force: args.force,
    };
    let response = client.promote(request).await?;
    print_change(&response, output)
}

/// Prints the answer of a promote or demote.
pub(crate) fn print_change(
    response: &failover_proto::admin::PromoteResponse,
    output: Output,
) -> anyhow::Result<()> {
    let group = response.group.clone().unwrap_or_default();
    if output == Output::Json {
        return output::print_json(&PromoteJson::from((response, &group)));
    }
    let active = if group.active_site.is_empty() {
        "no site"
    } else {
        group.active_site.as_str()
    };
    if response.already_active {
        println!(
            "{active} is already active for group {} (epoch {}); nothing changed",
            group.name, group.epoch
        );
    } else if group.phase() == failover_proto::types::Phase::Demoting {
        let next = if group.promoting_to.is_empty() {
            "no site"
        } else {
            group.promoting_to.as_str()
        };
        println!(
            "group {}: {active} is draining; {next} becomes active as soon as its leases are released, \
             at the latest in {} ms (use --wait to block until then)",
            group.name, response.completes_within_ms
        );
    } else {
        println!(
            "{active} is now active for group {} at epoch {} (took {} ms)",
            group.name, group.epoch, response.elapsed_ms
        );
    }
    Ok(())
}

/// `user@host` of whoever runs the command, for the history. The user is `$USER`, or,
/// when it is unset or empty (systemd units, cron), the name of the process's real uid
/// from the password database, or `uid-N` when it has none.
pub(crate) fn actor() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(user_of_uid);
    format!("{user}@{}", hostname())
}

/// The password database's name of this process's real uid, or `uid-N`.
fn user_of_uid() -> String {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer outlives the use of `entry`,
    // whose string fields point into it.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || entry.pw_name.is_null() {
        return format!("uid-{uid}");
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string in `buffer`.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
    let name = name.to_string_lossy().into_owned();
    if name.is_empty() {
        format!("uid-{uid}")
    } else {
        name
    }
}

/// This machine's host name.
pub(crate) fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return "unknown-host".to_owned();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// `failover promote --output json`.
#[derive(Debug, Serialize)]
pub(crate) struct PromoteJson {
    /// The group after the promotion.
    pub(crate) group: GroupJson,
    /// True when the site was already active.
    pub(crate) already_active: bool,
    /// Time the leader took, in milliseconds.
    pub(crate) elapsed_ms: u64,
    /// Without `--wait`: the latest time (ms) by which the promotion completes.
    pub(crate) completes_within_ms: u64,
}

impl From<(&PromoteResponse, &GroupStatus)> for PromoteJson {
    fn from((r, g): (&PromoteResponse, &GroupStatus)) -> Self {
        PromoteJson {
            group: GroupJson::from(g),
            already_active: r.already_active,
            elapsed_ms: r.elapsed_ms,
            completes_within_ms: r.completes_within_ms,
        }
    }
}
