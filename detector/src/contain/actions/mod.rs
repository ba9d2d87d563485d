//! The playbook's steps, one module each, in playbook order ([`playbook`]). Each declares the
//! RBAC it needs; none decides dry-run or guardrails (the dispatcher does).

pub mod cordon_node;
pub mod evict_pods;
pub mod freeze;
pub mod kernel_block;
pub mod kill;
pub mod label_node;
pub mod label_pod;
pub mod network_policy;
pub mod remove_from_service;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::Value;

use super::{
    Action, StepCtx, StepOutcome,
    kube::{ApiError, KubeApi},
};

/// Every step, in the order the playbook runs them.
pub fn playbook() -> Vec<Box<dyn Action>> {
    vec![
        Box::new(kernel_block::KernelBlock),
        Box::new(freeze::Freeze),
        Box::new(kill::Kill),
        Box::new(remove_from_service::RemoveFromService),
        Box::new(label_pod::LabelPod),
        Box::new(network_policy::NetworkPolicy),
        Box::new(label_node::LabelNode),
        Box::new(cordon_node::CordonNode),
        Box::new(evict_pods::EvictPods),
    ]
}

/// Pod labels, empty when unset.
pub(crate) fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

/// Reads a pod; `Ok(None)` when it is gone.
pub(crate) async fn read_pod(
    ctx: &StepCtx<'_>,
    namespace: &str,
    name: &str,
) -> Result<Option<Pod>, ApiError> {
    let Some(api) = ctx.api else {
        return Ok(None);
    };
    let pods: Api<Pod> = Api::namespaced(api.client().clone(), namespace);
    match api.call("get pod", || pods.get(name)).await {
        Ok(pod) => Ok(Some(pod)),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Reads the node a node step acts on; `Err` is the step's outcome when it cannot: the node is
/// gone (not applicable) or unreadable (failed).
pub(crate) async fn read_node(api: &KubeApi, name: &str) -> Result<(Api<Node>, Node), StepOutcome> {
    let nodes: Api<Node> = Api::all(api.client().clone());
    match api.call("get node", || nodes.get(name)).await {
        Ok(node) => Ok((nodes, node)),
        Err(ApiError::NotFound { .. }) => Err(StepOutcome::not_applicable("no such node")),
        Err(err) => Err(StepOutcome::Failed {
            error: err.to_string(),
        }),
    }
}

/// Patch flavours the playbook uses.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

/// Patches an object through `ctx.change` (dry-run aware); the call text is the exact request.
pub(crate) async fn patch<K>(
    ctx: &StepCtx<'_>,
    api: &Api<K>,
    name: &str,
    kind: PatchKind,
    body: &Value,
) -> Result<Option<K>, ApiError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + kube::Resource,
{
    let Some(kube) = ctx.api else {
        return Ok(None);
    };
    let content = match kind {
        PatchKind::Merge => "merge-patch",
        PatchKind::Strategic => "strategic-merge-patch",
    };
    let call = format!("PATCH {}/{name} ({content}) {body}", api.resource_url());
    let params = PatchParams::default();
    ctx.change(call, async || {
        kube.call("patch", || async {
            match kind {
                PatchKind::Merge => api.patch(name, &params, &Patch::Merge(body)).await,
                PatchKind::Strategic => api.patch(name, &params, &Patch::Strategic(body)).await,
            }
        })
        .await
    })
    .await
}

/// Times a step re-reads and re-applies after a 409 before giving up.
pub(crate) const CONFLICT_RETRIES: usize = 5;
