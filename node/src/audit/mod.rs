//! The audit log: who did what, when, from where, and whether it worked.
//!
//! Events live in the control-plane state (group 0), so they are replicated with it and
//! every node answers queries from its own replica. A control-plane change is proposed as
//! `control::Command::Audited`: applying that one log entry both
//! performs the change (or rejects it) and appends its event, with the outcome, so no change
//! exists without its event and no event without its attempt. Denied attempts and failed
//! sign-ins change nothing; nodes queue them and propose them in batches
//! (`control::audit_sink::AuditSink`) so that a flood of failures cannot stall the control
//! plane.
//!
//! Each organization's events form a chain: event `n` carries the hash of event `n - 1`
//! (`prev_hash`) and its own `hash`, the SHA-256 of its JSON form with `hash` empty (see
//! [`event_hash`]). Cluster-level events (operator tokens, signing keys, sign-in failures of
//! unknown emails, batch overflows) form the chain [`CLUSTER_CHAIN`]. The head of every chain
//! is part of the replicated state; [`Verifier`] recomputes a chain from its events and names
//! the first broken link. Retention purges are replicated commands that record, in the chain,
//! how many events they removed and the hash the remaining chain starts from.
//!
//! This module is a library: the event schema and hashing ([`event`]), the chains and their
//! purge ([`chain`]), the verifier ([`verify`]). **It imports nothing from `control`**: the
//! control plane describes its commands (`control::audit`) and names their actors.

pub mod chain;
pub mod event;
pub mod verify;

pub use chain::*;
pub use event::*;
pub use verify::*;

/// Default time an event is kept: 90 days.
pub const DEFAULT_AUDIT_RETENTION_S: u64 = 90 * 86_400;
/// Most refusal events (denied attempts, failed sign-ins and their summaries: everything
/// [`EventClass::Refusal`]) one chain keeps; past it the oldest refusal is pruned ahead of its
/// retention, leaving a [`PrunedRun`] that keeps the chain's links verifiable. Events of
/// changes are never pruned for room.
pub const MAX_REFUSAL_EVENTS_PER_CHAIN: usize = 100_000;
/// Events of changes one chain holds before it reports itself over budget
/// ([`Chain::over_budget`], shown by `/admin/cluster` and logged): a warning to the operator,
/// never a reason to drop an event before its retention ends.
pub const CHANGE_EVENTS_BUDGET_PER_CHAIN: usize = 1_000_000;
/// The chain of events that belong to no organization.
pub const CLUSTER_CHAIN: &str = "_cluster";
/// Longest user agent kept; longer ones are cut at a character boundary.
pub const MAX_USER_AGENT_BYTES: usize = 256;
/// Longest request id accepted from a client; longer or non-printable ones are replaced.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Longest text kept in any other free-form field (names tried at sign-in, reasons).
pub const MAX_AUDIT_TEXT_BYTES: usize = 512;
/// Most events one batch of denied or failed attempts may carry.
pub const MAX_AUDIT_BATCH_EVENTS: usize = 500;
/// `prev_hash` of a chain's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[cfg(test)]
mod tests {
    use super::*;

    fn context(id: &str, time_ms: u64) -> AuditContext {
        AuditContext {
            id: id.into(),
            time: timestamp(time_ms),
            operation: "project.create".into(),
            actor: ActorRef {
                principal_type: PrincipalType::Operator,
                principal_id: "op".into(),
                organization_id: None,
                name_hint: None,
            },
            source_ip: Some("127.0.0.1".into()),
            request_id: Some("r".into()),
            user_agent: Some("test".into()),
            node_id: 1,
        }
    }

    /// The names the control plane would give: the operator, organization `o1`.
    fn names() -> EventNames {
        EventNames {
            actor: Some(("operator".into(), "Operator token".into())),
            organization: Some(("o1".into(), "default".into())),
        }
    }

    fn log_with(n: u64) -> AuditLog {
        let mut log = AuditLog::default();
        for i in 0..n {
            let resource = Resource::new(Verb::Create, ResourceType::Project, Some("p0"))
                .id(Some("search"))
                .in_org(Some("o1"));
            let event = build_event(
                &context(&format!("e{i}"), 1_000 * (i + 1)),
                resource,
                EventOutcome::success(),
                names(),
            );
            log.append(event, EventClass::Change);
        }
        log
    }

    /// Verifies a chain as a reader of its pages does: kept events and pruned runs in
    /// sequence order.
    fn verify(chain: &Chain) -> Result<u64, BrokenLink> {
        let events: Vec<AuditEvent> = chain.events.values().cloned().collect();
        let runs: Vec<PrunedRun> = chain.pruned_overlapping(0, u64::MAX).cloned().collect();
        verify_chain(&ChainHead::from(chain), &events, &runs)
    }

    #[test]
    fn timestamps_are_fixed_width_and_sort_as_times() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_234), "1970-01-01T00:00:01.234Z");
        assert!(timestamp(9_999) < timestamp(10_000));
        assert_eq!(
            normalize_time("2026-11-29T05:00:00+01:00").as_deref(),
            Some("2026-11-29T04:00:00.000Z")
        );
        assert_eq!(normalize_time("yesterday"), None);
    }

    #[test]
    fn a_chain_links_every_event_to_the_previous_one() {
        let log = log_with(5);
        let chain = &log.chains["o1"];
        assert_eq!(chain.head_sequence, 5);
        assert_eq!(chain.events[&1].prev_hash, GENESIS_HASH);
        for pair in chain.events.values().collect::<Vec<_>>().windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
            assert_eq!(pair[1].sequence, pair[0].sequence + 1);
        }
        assert_eq!(verify(chain), Ok(5));
    }

    #[test]
    fn an_edited_event_is_named_as_the_first_broken_link() {
        let mut log = log_with(5);
        let chain = log.chains.get_mut("o1").unwrap();
        chain.events.get_mut(&3).unwrap().actor.principal_name = "someone-else".into();
        let broken = verify(chain).unwrap_err();
        assert_eq!(broken.sequence, 3);
        assert_eq!(broken.event_id, "e2");
        assert!(broken.problem.contains("edited"), "{broken}");
    }

    #[test]
    fn a_rehashed_edit_breaks_the_next_link_and_a_dropped_event_is_found() {
        let mut log = log_with(5);
        let mut edited = log.chains["o1"].clone();
        let second = edited.events.get_mut(&2).unwrap();
        second.event.outcome = EventOutcome::failure("X", "y");
        second.hash = event_hash(second);
        let broken = verify(&edited).unwrap_err();
        assert_eq!((broken.sequence, broken.event_id.as_str()), (3, "e2"));

        let chain = log.chains.get_mut("o1").unwrap();
        chain.events.remove(&4);
        let broken = verify(chain).unwrap_err();
        assert_eq!(broken.sequence, 4);
        assert!(broken.problem.contains("missing"), "{broken}");
    }

    #[test]
    fn a_truncated_tail_disagrees_with_the_replicated_head() {
        let mut log = log_with(4);
        let chain = log.chains.get_mut("o1").unwrap();
        let head = ChainHead::from(&*chain);
        chain.events.pop_last();
        let mut v = Verifier::new(Some((0, GENESIS_HASH.into())));
        for e in chain.events.values() {
            v.push(e).unwrap();
        }
        assert!(v.finish(&head).is_err());
    }

    #[test]
    fn purging_keeps_the_rest_of_the_chain_verifiable_from_its_anchor() {
        let mut log = log_with(6);
        let touched = log.purge_before(&timestamp(3_500));
        assert_eq!(touched, vec![("o1".to_string(), 3)]);
        let chain = &log.chains["o1"];
        assert_eq!(chain.events.len(), 3);
        assert_eq!(chain.anchor_sequence, 3);
        assert_eq!(verify(chain), Ok(3));
        assert_eq!(log.oldest_time(), Some(timestamp(4_000).as_str()));
    }

    #[test]
    fn parameters_survive_bincode_and_json_and_the_hash_with_them() {
        let mut log = log_with(0);
        let resource = Resource::new(Verb::Update, ResourceType::User, Some("k"))
            .id(Some(
                serde_json::json!({"user": "ana@example.com", "role": "OrgOwner"}),
            ))
            .in_org(Some("o1"))
            .params(
                Params::default()
                    .with("roles", serde_json::json!(["ProjectEditor"]))
                    .with("name", "ci"),
            );
        log.append(
            build_event(&context("e", 1), resource, EventOutcome::success(), names()),
            EventClass::Change,
        );
        let event = log.chains["o1"].events[&1].clone();
        let via_bincode: AuditEvent =
            bincode::deserialize(&bincode::serialize(&event).unwrap()).unwrap();
        let via_json: AuditEvent =
            serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(via_bincode, event);
        assert_eq!(via_json, event);
        assert_eq!(event_hash(&via_json), event.hash);
    }

    #[test]
    fn filters_select_by_every_field() {
        let log = log_with(3);
        let chain = &log.chains["o1"];
        let count = |f: Filter| chain.events.values().filter(|e| f.matches(e)).count();
        assert_eq!(count(Filter::default()), 3);
        let from_two = Filter {
            start_time: Some(timestamp(2_000)),
            ..Filter::default()
        };
        assert_eq!(count(from_two), 2);
        let before_two = Filter {
            end_time: Some(timestamp(2_000)),
            ..Filter::default()
        };
        assert_eq!(count(before_two), 1);
        let other_action = Filter {
            action: Some("delete".into()),
            ..Filter::default()
        };
        assert_eq!(count(other_action), 0);
        let other_operation = Filter {
            operation: Some("project.delete".into()),
            ..Filter::default()
        };
        assert_eq!(count(other_operation), 0);
        let by_actor = Filter {
            actor: Some("operator".into()),
            outcome: Some("success".into()),
            action: Some("create".into()),
            operation: Some("project.create".into()),
            resource_type: Some("project".into()),
            resource_id: Some("search".into()),
            ..Filter::default()
        };
        assert_eq!(count(by_actor), 3);
        let other_id = Filter {
            resource_id: Some("sear".into()),
            ..Filter::default()
        };
        assert_eq!(count(other_id), 0);
    }

    #[test]
    fn refusals_past_their_cap_are_pruned_and_changes_never_are() {
        let mut log = log_with(0);
        let event = |id: &str| {
            let mut e = build_event(
                &context(id, 5),
                Resource::new(Verb::Create, ResourceType::Project, None).in_org(Some("o1")),
                EventOutcome::success(),
                names(),
            );
            e.id = id.into();
            e
        };
        // A change, a flood of refusals with changes among them, and a change at the end.
        log.append(event("first-change"), EventClass::Change);
        let flood = MAX_REFUSAL_EVENTS_PER_CHAIN as u64 + 1_000;
        for i in 0..flood {
            let class = if i % 10_000 == 5 {
                EventClass::Change
            } else {
                EventClass::Refusal
            };
            log.append(event(&format!("e{i}")), class);
        }
        log.append(event("last-change"), EventClass::Change);
        let chain = &log.chains["o1"];
        let refusals: std::collections::HashSet<u64> = chain.refusals.iter().copied().collect();
        let changes: Vec<&str> = chain
            .events
            .values()
            .filter(|e| !refusals.contains(&e.sequence))
            .map(|e| e.id.as_str())
            .collect();
        assert!(chain
            .events
            .values()
            .all(|e| (e.class == EventClass::Refusal) == refusals.contains(&e.sequence)));
        // Every change is still there, in order; refusals are at their cap.
        let expected_changes = 2 + flood.div_ceil(10_000) as usize;
        assert_eq!(changes.len(), expected_changes, "{changes:?}");
        assert_eq!(changes.first(), Some(&"first-change"));
        assert_eq!(changes.last(), Some(&"last-change"));
        assert_eq!(chain.refusals.len(), MAX_REFUSAL_EVENTS_PER_CHAIN);
        assert_eq!(
            chain.refusals_pruned,
            flood - (expected_changes as u64 - 2) - MAX_REFUSAL_EVENTS_PER_CHAIN as u64
        );
        // The oldest refusals went first; the first change is still the front, so nothing
        // folded into the anchor.
        assert_eq!(chain.anchor_sequence, 0);
        assert!(!chain.pruned.is_empty());
        // The chain verifies across the pruned runs, and a tampered run is caught.
        assert_eq!(verify(chain), Ok(chain.events.len() as u64));
        let mut tampered = chain.clone();
        let first = *tampered.pruned.keys().next().unwrap();
        tampered.pruned.get_mut(&first).unwrap().last_hash = GENESIS_HASH.into();
        assert!(verify(&tampered).is_err());
        // A change passed off as a pruned run breaks the changes' chain at the next change,
        // and at the head when it was the last.
        for hidden in ["e5", "last-change"] {
            let mut forged = chain.clone();
            let victim = forged
                .events
                .values()
                .find(|e| e.id == hidden)
                .cloned()
                .unwrap();
            forged.events.remove(&victim.sequence);
            forged.pruned.insert(
                victim.sequence,
                PrunedRun {
                    first_sequence: victim.sequence,
                    last_sequence: victim.sequence,
                    prev_hash: victim.prev_hash.clone(),
                    last_hash: victim.hash.clone(),
                },
            );
            let broken = verify(&forged).unwrap_err();
            assert!(
                broken.problem.contains("change is missing"),
                "{hidden}: {broken}"
            );
        }
        // Retention later removes the front; the runs there fold into the anchor.
        let mut purged = chain.clone();
        assert_eq!(
            purged.drop_oldest(),
            1 + 5,
            "the first change and the run of five after it"
        );
        assert_eq!(purged.anchor_sequence, 6);
        assert_eq!(verify(&purged), Ok(purged.events.len() as u64));
    }
}
