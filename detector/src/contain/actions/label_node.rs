//! Labels the node as suspect.

use serde_json::json;

use super::{ApiStep, PatchKind, Scope, Step};
use crate::contain::{ContainConfig, Rule, StepOutcome, kube::ApiError};

/// `detector.security/suspect=true` on the node.
pub struct LabelNode;

/// Node reads and patches (label, cordon).
pub(crate) const NODE_RBAC: &[Rule] = &[Rule {
    api_group: "",
    resource: "nodes",
    verbs: &["get", "patch"],
}];

impl ApiStep for LabelNode {
    const NAME: &'static str = "label_node";
    const RBAC: &'static [Rule] = NODE_RBAC;
    const SCOPE: Scope = Scope::Node;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.label_node
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let label = &step.config().node_label;
        let node = step.node().await?;
        if node.metadata.labels.unwrap_or_default().get(&label.key) == Some(&label.value) {
            return Ok(StepOutcome::AlreadyDone {
                detail: format!("{}={} already set", label.key, label.value),
            });
        }
        let body = json!({"metadata": {"labels": { &label.key: &label.value }}});
        step.patch(&step.nodes(), PatchKind::Merge, &body).await?;
        Ok(StepOutcome::done(format!(
            "labelled {}={}",
            label.key, label.value
        )))
    }

    async fn undo(&self, step: &Step<'_>, _done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        let body = json!({"metadata": {"labels": { &step.config().node_label.key: null }}});
        step.patch(&step.nodes(), PatchKind::Merge, &body).await?;
        Ok(StepOutcome::done("suspect label removed"))
    }
}
