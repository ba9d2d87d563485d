//! Termination protection: while an incident holds them, neither the cluster autoscaler nor
//! Karpenter may remove the suspect pod or its node (the evidence is on the node, and an
//! emptied, cordoned node is the first a scale-down picks). Release puts back what each
//! annotation was before; a node another open incident holds keeps its protection.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{ApiStep, POD_RBAC, PatchKind, Scope, Step};
use crate::contain::{ContainConfig, Rule, StepOutcome, kube::ApiError};

/// Karpenter's opt-out from voluntary disruption (pods and nodes).
pub const KARPENTER_DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";
/// The cluster autoscaler's opt-out from scaling a node down.
pub const CA_SCALE_DOWN_DISABLED: &str = "cluster-autoscaler.kubernetes.io/scale-down-disabled";
/// The cluster autoscaler's mark of a pod it must not evict to scale its node down.
pub const CA_SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";

/// Marks the suspect pod `karpenter.sh/do-not-disrupt` and not safe to evict.
pub struct ProtectPod;

/// Marks the node `karpenter.sh/do-not-disrupt` and scale-down-disabled.
pub struct ProtectNode;

const POD_ANNOTATIONS: &[(&str, &str)] = &[
    (KARPENTER_DO_NOT_DISRUPT, "true"),
    (CA_SAFE_TO_EVICT, "false"),
];

const NODE_ANNOTATIONS: &[(&str, &str)] = &[
    (KARPENTER_DO_NOT_DISRUPT, "true"),
    (CA_SCALE_DOWN_DISABLED, "true"),
];

/// Sets `wanted` on an object whose annotations are `current`; the undo data holds what each
/// changed annotation was (`null`: absent).
async fn annotate<K>(
    step: &Step<'_>,
    api: &kube::Api<K>,
    current: &BTreeMap<String, String>,
    wanted: &[(&str, &str)],
) -> Result<StepOutcome, ApiError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + kube::Resource,
{
    let changed: Vec<(&str, &str)> = wanted
        .iter()
        .copied()
        .filter(|(k, v)| current.get(*k).map(String::as_str) != Some(*v))
        .collect();
    let list = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if changed.is_empty() {
        return Ok(StepOutcome::AlreadyDone {
            detail: format!("{} already set", list(wanted)),
        });
    }
    let set: Map<String, Value> = changed
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let before: Map<String, Value> = changed
        .iter()
        .map(|(k, _)| ((*k).to_owned(), json!(current.get(*k))))
        .collect();
    step.patch(
        api,
        PatchKind::Merge,
        &json!({"metadata": {"annotations": set}}),
    )
    .await?;
    Ok(StepOutcome::Done {
        detail: format!("annotated {}", list(&changed)),
        undo: json!({ "annotations": before }),
    })
}

/// Puts back what [`annotate`] recorded.
async fn restore<K>(
    step: &Step<'_>,
    api: &kube::Api<K>,
    done: &StepOutcome,
) -> Result<StepOutcome, ApiError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + kube::Resource,
{
    let before = &done.undo_data()["annotations"];
    if before.as_object().is_none_or(Map::is_empty) {
        return Ok(StepOutcome::not_applicable("no annotation was changed"));
    }
    step.patch(
        api,
        PatchKind::Merge,
        &json!({"metadata": {"annotations": before}}),
    )
    .await?;
    Ok(StepOutcome::done(format!("annotations put back: {before}")))
}

impl ApiStep for ProtectPod {
    const NAME: &'static str = "protect_pod";
    const RBAC: &'static [Rule] = POD_RBAC;
    const SCOPE: Scope = Scope::Pod;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.protect_pod
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let Some(pod) = step.pod().await? else {
            return Ok(StepOutcome::not_applicable("the pod is gone"));
        };
        let current = pod.metadata.annotations.unwrap_or_default();
        annotate(step, &step.pods(), &current, POD_ANNOTATIONS).await
    }

    async fn undo(&self, step: &Step<'_>, done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        restore(step, &step.pods(), done).await
    }
}

impl ApiStep for ProtectNode {
    const NAME: &'static str = "protect_node";
    const RBAC: &'static [Rule] = super::label_node::NODE_RBAC;
    const SCOPE: Scope = Scope::Node;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.protect_node
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let node = step.node().await?;
        let current = node.metadata.annotations.unwrap_or_default();
        annotate(step, &step.nodes(), &current, NODE_ANNOTATIONS).await
    }

    async fn undo(&self, step: &Step<'_>, done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        restore(step, &step.nodes(), done).await
    }
}
