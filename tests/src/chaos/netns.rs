//! The private network of a chaos run: a user + network namespace (`unshare -rn`, no root
//! needed) whose loopback carries every node's address, and partitions cut with policy
//! routing rules between two addresses.
//!
//! Inside a new network namespace the `local` routing table is consulted first (rule 0),
//! before any rule that could refuse a route. Setup moves it behind rule [`LOCAL_RULE_PREF`]
//! so that `prohibit` rules at [`CUT_RULE_PREF`] decide first: a cut link refuses new
//! connections (EACCES) and stalls established ones until it is healed.

use std::process::Command;

use anyhow::{bail, Context};

/// Environment variable marking a process as running inside the harness's namespace.
pub const NETNS_ENV: &str = "CONIFER_CHAOS_NETNS";
/// Priority of the rules that cut links.
pub const CUT_RULE_PREF: u32 = 10;
/// Priority the `local` table lookup is moved to.
pub const LOCAL_RULE_PREF: u32 = 100;

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process runs inside the namespace the harness created.
pub fn inside() -> bool {
    std::env::var(NETNS_ENV).as_deref() == Ok("1")
}

/// Brings loopback up and lets cut rules take precedence over local delivery.
pub fn setup() -> anyhow::Result<()> {
    if !inside() {
        bail!("partitions need the harness's own network namespace (run through `unshare -rn`, as conifer-chaos does)");
    }
    ip(&["link", "set", "lo", "up"])?;
    ip(&[
        "rule",
        "add",
        "pref",
        &LOCAL_RULE_PREF.to_string(),
        "lookup",
        "local",
    ])?;
    ip(&["rule", "del", "pref", "0"])?;
    Ok(())
}

/// Cuts the link between addresses `a` and `b`, both ways.
pub fn cut(a: &str, b: &str) -> anyhow::Result<()> {
    let pref = CUT_RULE_PREF.to_string();
    ip(&["rule", "add", "pref", &pref, "from", a, "to", b, "prohibit"])?;
    ip(&["rule", "add", "pref", &pref, "from", b, "to", a, "prohibit"])
}

/// Removes every cut.
pub fn heal() -> anyhow::Result<()> {
    let pref = CUT_RULE_PREF.to_string();
    // `ip rule del pref N` removes one rule per call; it fails once none is left.
    for _ in 0..1_000 {
        if ip(&["rule", "del", "pref", &pref]).is_err() {
            return Ok(());
        }
    }
    bail!("could not remove the partition rules")
}
