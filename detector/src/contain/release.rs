//! Release: undoes, newest first, the steps of an incident that can be undone. Used by the
//! daemon ([`super::ContainmentHandle::release`]) and by `detector release`, which cannot reach
//! the daemon's kernel maps: it undoes the API steps itself and journals the kernel block as
//! pending; the daemon, which follows the journal, lifts it and journals the release as done.

use std::path::Path;

use super::{
    ContainConfig, Incident, SharedBlock, StepCtx, StepOutcome,
    actions::steps,
    config::Mode,
    journal::{EntryKind, IncidentRecord, IncidentState},
    kube::KubeApi,
};

/// Failure to release.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReleaseError {
    /// No incident has this id.
    #[error("no incident {0}")]
    Unknown(String),
    /// The incident was refused by the guardrails or already released: nothing to undo.
    #[error("incident {id} is {state:?}: nothing to release")]
    NotActive {
        /// The id.
        id: String,
        /// Its state.
        state: IncidentState,
    },
    /// Some undo failed; the journal has each outcome and release can be run again.
    #[error("incident {id}: could not undo {failed:?}")]
    Incomplete {
        /// The id.
        id: String,
        /// Steps whose undo failed.
        failed: Vec<String>,
    },
    /// The daemon is not running (the handle's dispatcher has stopped).
    #[error("the containment dispatcher has stopped")]
    Stopped,
}

/// An incident record as the actions see it.
pub fn incident_of(record: &IncidentRecord, node_held_by: Vec<String>) -> Incident {
    Incident {
        id: record.id.clone(),
        subject: record.subject.clone(),
        node: record.node.clone(),
        score: record.score,
        reason: record.reason.clone(),
        cgroup_ids: record.cgroup_ids.clone(),
        pod: None,
        node_held_by,
        event_ktime_ns: 0,
        rules: Vec::new(),
        mode: match record.state {
            IncidentState::Proposed => Mode::Propose,
            _ => Mode::Enforce,
        },
    }
}

/// Other open incidents on the incident's node.
pub fn node_held_by<'a>(
    record: &IncidentRecord,
    all: impl IntoIterator<Item = &'a IncidentRecord>,
) -> Vec<String> {
    all.into_iter()
        .filter(|r| r.id != record.id && r.active() && !r.dry_run && r.node == record.node)
        .map(|r| r.id.clone())
        .collect()
}

/// Undoes the incident's steps; `record` receives each journal entry. `by` names the caller
/// (`daemon` or `cli`).
#[expect(
    clippy::too_many_arguments,
    reason = "the release's whole context, spelled out"
)]
pub async fn release(
    config: &ContainConfig,
    record: &IncidentRecord,
    node_held_by: Vec<String>,
    api: Option<&KubeApi>,
    block: Option<&SharedBlock>,
    cgroup_root: Option<&Path>,
    by: &str,
    mut journal: impl FnMut(EntryKind),
) -> Result<(), ReleaseError> {
    match record.state {
        IncidentState::Proposed
        | IncidentState::Open
        | IncidentState::Contained
        | IncidentState::ReleasePending => {}
        state => {
            return Err(ReleaseError::NotActive {
                id: record.id.clone(),
                state,
            });
        }
    }
    let incident = incident_of(record, node_held_by);
    let actions = steps();
    let mut failed = Vec::new();
    let mut pending = false;
    if !record.dry_run {
        for (name, outcome) in record.steps.iter().rev() {
            if !matches!(
                outcome,
                StepOutcome::Done { .. } | StepOutcome::AlreadyDone { .. }
            ) {
                continue;
            }
            let already = record
                .undone
                .iter()
                .any(|(n, o)| n == name && o.ok() && !matches!(o, StepOutcome::DryRun { .. }));
            if already {
                continue;
            }
            let Some(action) = actions.iter().find(|a| a.name() == name) else {
                continue;
            };
            let ctx = StepCtx::new(config, api, block, cgroup_root, config.dry_run);
            let mut undo = action.undo(&ctx, &incident, outcome).await;
            if config.dry_run && matches!(undo, StepOutcome::Done { .. }) {
                undo = StepOutcome::DryRun {
                    calls: ctx.take_calls(),
                };
            }
            match &undo {
                StepOutcome::Failed { .. } => failed.push(name.clone()),
                StepOutcome::Pending { .. } => pending = true,
                _ => {}
            }
            journal(EntryKind::Undo {
                step: name.clone(),
                outcome: undo,
            });
        }
    }
    if config.dry_run {
        return Ok(());
    }
    if !failed.is_empty() {
        return Err(ReleaseError::Incomplete {
            id: record.id.clone(),
            failed,
        });
    }
    journal(if pending {
        EntryKind::ReleaseRequested { by: by.to_owned() }
    } else {
        EntryKind::Released
    });
    Ok(())
}
