//! Cordons the node (`spec.unschedulable`), marking it with the incident that did so; release
//! uncordons only a node the detector cordoned and no other open incident holds.

use serde_json::json;

use super::{ApiStep, PatchKind, Scope, Step, label_node::NODE_RBAC};
use crate::contain::{ContainConfig, Rule, StepOutcome, kube::ApiError};

/// Sets `spec.unschedulable` and the `<prefix>cordoned-by` annotation.
pub struct CordonNode;

impl ApiStep for CordonNode {
    const NAME: &'static str = "cordon_node";
    const RBAC: &'static [Rule] = NODE_RBAC;
    const SCOPE: Scope = Scope::Node;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.cordon_node
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let node = step.node().await?;
        if node.spec.and_then(|s| s.unschedulable) == Some(true) {
            return Ok(StepOutcome::AlreadyDone {
                detail: "already cordoned".into(),
            });
        }
        let marker = format!("{}cordoned-by", step.config().annotation_prefix);
        let body = json!({
            "metadata": {"annotations": { marker: &step.incident.id }},
            "spec": {"unschedulable": true},
        });
        step.patch(&step.nodes(), PatchKind::Strategic, &body)
            .await?;
        Ok(StepOutcome::done(format!("cordoned {}", step.name)))
    }

    async fn undo(&self, step: &Step<'_>, _done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        let node = step.node().await?;
        let marker = format!("{}cordoned-by", step.config().annotation_prefix);
        let ours = node
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(&marker);
        if !ours {
            return Ok(StepOutcome::not_applicable(
                "the detector did not cordon this node",
            ));
        }
        let body = json!({
            "metadata": {"annotations": { marker: null }},
            "spec": {"unschedulable": false},
        });
        step.patch(&step.nodes(), PatchKind::Merge, &body).await?;
        Ok(StepOutcome::done(format!("uncordoned {}", step.name)))
    }
}
