//! Labels the pod as quarantined (what the deny-all NetworkPolicy selects) and annotates it
//! with the incident id, score and reason.

use serde_json::json;

use super::{ApiStep, POD_RBAC, PatchKind, Scope, Step, labels_of};
use crate::contain::{ContainConfig, Rule, StepOutcome, kube::ApiError};

/// `quarantine=true` plus `<prefix>incident`, `<prefix>score`, `<prefix>reason`.
pub struct LabelPod;

impl ApiStep for LabelPod {
    const NAME: &'static str = "label_pod";
    const RBAC: &'static [Rule] = POD_RBAC;
    const SCOPE: Scope = Scope::Pod;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.label_pod
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let label = &step.config().quarantine_label;
        let prefix = &step.config().annotation_prefix;
        let incident = step.incident;
        let Some(pod) = step.pod().await? else {
            return Ok(StepOutcome::not_applicable("the pod is gone"));
        };
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        if labels_of(&pod).get(&label.key) == Some(&label.value)
            && annotations.get(&format!("{prefix}incident")) == Some(&incident.id)
        {
            return Ok(StepOutcome::AlreadyDone {
                detail: format!("{}={} already set", label.key, label.value),
            });
        }
        let body = json!({"metadata": {
            "labels": { &label.key: &label.value },
            "annotations": {
                format!("{prefix}incident"): incident.id,
                format!("{prefix}score"): format!("{:.1}", incident.score),
                format!("{prefix}reason"): incident.reason.chars().take(1024).collect::<String>(),
            },
        }});
        step.patch(&step.pods(), PatchKind::Strategic, &body)
            .await?;
        Ok(StepOutcome::done(format!(
            "labelled {}={}",
            label.key, label.value
        )))
    }

    async fn undo(&self, step: &Step<'_>, _done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        let prefix = &step.config().annotation_prefix;
        let body = json!({"metadata": {
            "labels": { &step.config().quarantine_label.key: null },
            "annotations": {
                format!("{prefix}incident"): null,
                format!("{prefix}score"): null,
                format!("{prefix}reason"): null,
            },
        }});
        step.patch(&step.pods(), PatchKind::Merge, &body).await?;
        Ok(StepOutcome::done(
            "quarantine label and annotations removed",
        ))
    }
}
