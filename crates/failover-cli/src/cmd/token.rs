//! `failover token new`: a fresh bearer token for a client that cannot use a certificate,
//! and the topology entry that lets it in (docs/security.md, "Bearer tokens").

use anyhow::Context;
use clap::{Args, Subcommand};
use failover_core::config::{TokenConfig, TOKEN_ROLES};
use failover_core::SiteId;

/// Arguments of `failover token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: TokenAction,
}

/// The `failover token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Print a fresh random token and the `tokens:` entry (with its SHA-256) to add to
    /// the topology.
    New(NewArgs),
}

/// Arguments of `failover token new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The identity's name (in logs and history).
    #[arg(long)]
    pub name: String,
    /// `engine`, `operator` or `reader`.
    #[arg(long)]
    pub role: String,
    /// For an engine: a site it acts for (repeat for several).
    #[arg(long = "site")]
    pub sites: Vec<String>,
}

/// A fresh token: 256 random bits from the operating system, in hex.
pub(crate) fn fresh_token() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the operating system gave no random bytes"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The topology entry for `token`.
pub(crate) fn entry(name: &str, role: &str, sites: &[String], token: &str) -> TokenConfig {
    TokenConfig {
        name: name.to_owned(),
        role: role.to_owned(),
        sites: sites.iter().cloned().map(SiteId).collect(),
        sha256: failover_controller::auth::token_sha256(token),
    }
}

pub(crate) fn run(args: TokenArgs) -> anyhow::Result<()> {
    let TokenAction::New(args) = args.action;
    if !TOKEN_ROLES.contains(&args.role.as_str()) {
        anyhow::bail!(
            "--role {}: a token's role is engine, operator or reader (peers use certificates)",
            args.role
        );
    }
    match (args.role == "engine", args.sites.is_empty()) {
        (true, true) => anyhow::bail!("an engine token needs --site (at least one)"),
        (false, false) => anyhow::bail!("--site binds engine tokens only"),
        _ => {}
    }
    let token = fresh_token()?;
    let entry = entry(&args.name, &args.role, &args.sites, &token);
    let yaml = serde_json::to_string(&entry).context("entry")?;
    println!("token: {token}");
    println!(
        "# Give the token to the client (a file for --token-file / FAILOVER_TOKEN_FILE), and add"
    );
    println!("# this entry under `tokens:` in the topology of every controller:");
    println!("- {yaml}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_entries_hold_only_the_hash() {
        let a = fresh_token().expect("token");
        let b = fresh_token().expect("token");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let e = entry("ci", "reader", &[], &a);
        assert_eq!(e.sha256, failover_controller::auth::token_sha256(&a));
        assert_ne!(e.sha256, a);
        // The SHA-256 of "abc" (FIPS 180-2).
        assert_eq!(
            failover_controller::auth::token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
