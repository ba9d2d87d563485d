//! Cordons the node (`spec.unschedulable`), marking it with the incident that did so; release
//! uncordons only a node the detector cordoned and no other open incident holds.

use futures::{FutureExt as _, future::BoxFuture};
use serde_json::json;

use super::{PatchKind, label_node::NODE_RBAC, patch, read_node};
use crate::contain::{Action, ContainConfig, EventTarget, Incident, Rule, StepCtx, StepOutcome};

/// Sets `spec.unschedulable` and the `<prefix>cordoned-by` annotation.
pub struct CordonNode;

impl Action for CordonNode {
    fn name(&self) -> &'static str {
        "cordon_node"
    }

    fn rbac(&self) -> &'static [Rule] {
        NODE_RBAC
    }

    fn enabled(&self, config: &ContainConfig) -> bool {
        config.steps.cordon_node
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
            let (nodes, node) = match read_node(api, &incident.node).await {
                Ok(read) => read,
                Err(outcome) => return outcome,
            };
            if node.spec.and_then(|s| s.unschedulable) == Some(true) {
                return StepOutcome::AlreadyDone {
                    detail: "already cordoned".into(),
                };
            }
            let marker = format!("{}cordoned-by", ctx.config.annotation_prefix);
            let body = json!({
                "metadata": {"annotations": { marker: &incident.id }},
                "spec": {"unschedulable": true},
            });
            match patch(ctx, &nodes, &incident.node, PatchKind::Strategic, &body).await {
                Ok(_) => StepOutcome::done(format!("cordoned {}", incident.node)),
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
            let (nodes, node) = match read_node(api, &incident.node).await {
                Ok(read) => read,
                Err(outcome) => return outcome,
            };
            let marker = format!("{}cordoned-by", ctx.config.annotation_prefix);
            let ours = node
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key(&marker);
            if !ours {
                return StepOutcome::not_applicable("the detector did not cordon this node");
            }
            let body = json!({
                "metadata": {"annotations": { marker: null }},
                "spec": {"unschedulable": false},
            });
            match patch(ctx, &nodes, &incident.node, PatchKind::Merge, &body).await {
                Ok(_) => StepOutcome::done(format!("uncordoned {}", incident.node)),
                Err(err) => StepOutcome::Failed {
                    error: err.to_string(),
                },
            }
        }
        .boxed()
    }
}
