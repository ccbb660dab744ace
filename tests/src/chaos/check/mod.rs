//! The checkers of a chaos run. Each reads the history (or, for convergence, the healed
//! cluster) and reports what it found; a schedule passes when none reports a violation.
//! Adding a checker: a module here, a field in [`ScheduleReport`], and its count in
//! [`ScheduleReport::violations`].

pub mod audit;
pub mod convergence;
pub mod durability;
pub mod failover;
pub mod linear;
pub mod revocation;
pub mod root_keys;

use serde::Serialize;

/// Everything the checkers found about one schedule.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleReport {
    /// Schedule number in the run.
    pub schedule: u32,
    /// Seed of its faults.
    pub seed: u64,
    /// Faults injected, by name.
    pub faults: Vec<String>,
    /// Operations by outcome: (ok, fail, info).
    pub ops_ok: usize,
    /// Operations that certainly did not happen.
    pub ops_fail: usize,
    /// Operations of unknown outcome.
    pub ops_info: usize,
    /// Linearizability per key.
    pub linearizability: linear::LinearizabilityReport,
    /// Durability of acknowledged writes.
    pub durability: durability::DurabilityReport,
    /// Replica agreement after healing.
    pub convergence: convergence::ConvergenceReport,
    /// Revoked keys accepted after the bound.
    pub revocation: revocation::RevocationReport,
    /// Acknowledged control-plane actions against their audit events.
    pub audit: audit::AuditReport,
    /// Root key rotations finished, every member on the one current version, and no
    /// rotation of the index's data key left running.
    pub root_keys: root_keys::RootKeysReport,
    /// Writes on the majority side while a leader was cut off: answered before their
    /// client gave up, and how soon.
    pub failover: failover::FailoverReport,
}

impl ScheduleReport {
    /// Keys whose history no order explains.
    pub fn linearizability_violations(&self) -> usize {
        self.linearizability.violations.len()
    }

    /// Keys the search gave up on.
    pub fn linearizability_unchecked(&self) -> usize {
        self.linearizability.unchecked.len()
    }

    /// Every violation any checker found.
    pub fn violations(&self) -> usize {
        self.linearizability_violations()
            + self.durability.lost.len()
            + usize::from(!self.convergence.converged)
            + self.revocation.accepted_after_bound.len()
            + self.audit.violations()
            + usize::from(!self.root_keys.settled)
            + self.failover.unanswered.len()
    }
}
