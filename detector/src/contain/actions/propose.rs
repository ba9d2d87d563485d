//! The proposal of a `propose`-mode incident: the pod is annotated `<prefix>proposed=<incident>`
//! and an Event asks a person to approve it. Not a playbook step: the dispatcher runs it in
//! the playbook's place, and the playbook once the incident is approved (`detector approve
//! INCIDENT`, or the pod annotated `<prefix>approve=<incident>`). Release removes both
//! annotations.

use serde_json::json;

use super::{ApiStep, POD_RBAC, PatchKind, Scope, Step};
use crate::contain::{ContainConfig, Rule, StepOutcome, kube::ApiError};

/// Annotates the pod with the proposal.
pub struct Propose;

/// Its name in the journal.
pub const NAME: &str = "propose";

/// The annotation naming the proposed incident.
pub fn proposed_key(config: &ContainConfig) -> String {
    format!("{}proposed", config.annotation_prefix)
}

/// The annotation by which a person approves it (its value is the incident's id).
pub fn approve_key(config: &ContainConfig) -> String {
    format!("{}approve", config.annotation_prefix)
}

impl ApiStep for Propose {
    const NAME: &'static str = NAME;
    const RBAC: &'static [Rule] = POD_RBAC;
    const SCOPE: Scope = Scope::Pod;

    /// Always: the modes decide whether an incident is proposed.
    fn enabled(_config: &ContainConfig) -> bool {
        true
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let key = proposed_key(step.config());
        let Some(pod) = step.pod().await? else {
            return Ok(StepOutcome::not_applicable("the pod is gone"));
        };
        let annotations = pod.metadata.annotations.unwrap_or_default();
        if annotations.get(&key) == Some(&step.incident.id) {
            return Ok(StepOutcome::AlreadyDone {
                detail: format!("{key}={} already set", step.incident.id),
            });
        }
        let body = json!({"metadata": {"annotations": { &key: &step.incident.id }}});
        step.patch(&step.pods(), PatchKind::Merge, &body).await?;
        Ok(StepOutcome::done(format!(
            "proposed: {key}={}; approve with `detector approve {}` or the annotation {}={}",
            step.incident.id,
            step.incident.id,
            approve_key(step.config()),
            step.incident.id
        )))
    }

    async fn undo(&self, step: &Step<'_>, _done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        let config = step.config();
        let body = json!({"metadata": {"annotations": {
            proposed_key(config): null,
            approve_key(config): null,
        }}});
        step.patch(&step.pods(), PatchKind::Merge, &body).await?;
        Ok(StepOutcome::done("proposal annotations removed"))
    }
}
