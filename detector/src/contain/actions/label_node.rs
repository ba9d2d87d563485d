//! Labels the node as suspect.

use futures::{FutureExt as _, future::BoxFuture};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde_json::json;

use super::{PatchKind, patch, read_node};
use crate::contain::{
    Action, ContainConfig, EventTarget, Incident, Rule, StepCtx, StepOutcome, kube::ApiError,
};

/// `detector.security/suspect=true` on the node.
pub struct LabelNode;

/// Node reads and patches (label, cordon).
pub(crate) const NODE_RBAC: &[Rule] = &[Rule {
    api_group: "",
    resource: "nodes",
    verbs: &["get", "patch"],
}];

impl Action for LabelNode {
    fn name(&self) -> &'static str {
        "label_node"
    }

    fn rbac(&self) -> &'static [Rule] {
        NODE_RBAC
    }

    fn enabled(&self, config: &ContainConfig) -> bool {
        config.steps.label_node
    }

    fn event_target(&self) -> EventTarget {
        EventTarget::Node
    }

    fn run<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
    ) -> BoxFuture<'a, StepOutcome> {
        async move {
            let Some(api) = ctx.api else {
                return StepOutcome::not_applicable("no cluster");
            };
            if incident.node.is_empty() {
                return StepOutcome::not_applicable("node unknown");
            }
            let label = &ctx.config.node_label;
            let (nodes, node) = match read_node(api, &incident.node).await {
                Ok(read) => read,
                Err(outcome) => return outcome,
            };
            if node.metadata.labels.unwrap_or_default().get(&label.key) == Some(&label.value) {
                return StepOutcome::AlreadyDone {
                    detail: format!("{}={} already set", label.key, label.value),
                };
            }
            let body = json!({"metadata": {"labels": { &label.key: &label.value }}});
            match patch(ctx, &nodes, &incident.node, PatchKind::Merge, &body).await {
                Ok(_) => StepOutcome::done(format!("labelled {}={}", label.key, label.value)),
                Err(err) => StepOutcome::Failed {
                    error: err.to_string(),
                },
            }
        }
        .boxed()
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
        _done: &'a StepOutcome,
    ) -> BoxFuture<'a, StepOutcome> {
        async move {
            let Some(api) = ctx.api else {
                return StepOutcome::not_applicable("no cluster");
            };
            if let Some(other) = incident.node_held_by.first() {
                return StepOutcome::not_applicable(format!(
                    "incident {other} still holds the node"
                ));
            }
            let nodes: Api<Node> = Api::all(api.client().clone());
            let body = json!({"metadata": {"labels": { &ctx.config.node_label.key: null }}});
            match patch(ctx, &nodes, &incident.node, PatchKind::Merge, &body).await {
                Ok(_) => StepOutcome::done("suspect label removed"),
                Err(ApiError::NotFound { .. }) => StepOutcome::not_applicable("no such node"),
                Err(err) => StepOutcome::Failed {
                    error: err.to_string(),
                },
            }
        }
        .boxed()
    }
}
