//! Labels the pod as quarantined (what the deny-all NetworkPolicy selects) and annotates it
//! with the incident id, score and reason.

use futures::{FutureExt as _, future::BoxFuture};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::json;

use super::{PatchKind, labels_of, patch, read_pod};
use crate::contain::{Action, ContainConfig, Incident, Rule, StepCtx, StepOutcome, kube::ApiError};

/// `quarantine=true` plus `<prefix>incident`, `<prefix>score`, `<prefix>reason`.
pub struct LabelPod;

const RBAC: &[Rule] = &[Rule {
    api_group: "",
    resource: "pods",
    verbs: &["get", "patch"],
}];

impl Action for LabelPod {
    fn name(&self) -> &'static str {
        "label_pod"
    }

    fn rbac(&self) -> &'static [Rule] {
        RBAC
    }

    fn enabled(&self, config: &ContainConfig) -> bool {
        config.steps.label_pod
    }

    fn run<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
    ) -> BoxFuture<'a, StepOutcome> {
        async move {
            let (Some(api), Some((namespace, name))) = (ctx.api, incident.pod_ref()) else {
                return StepOutcome::not_applicable("no cluster or no pod identity");
            };
            let label = &ctx.config.quarantine_label;
            let prefix = &ctx.config.annotation_prefix;
            let pod = match read_pod(ctx, namespace, name).await {
                Ok(Some(pod)) => pod,
                Ok(None) => return StepOutcome::not_applicable("the pod is gone"),
                Err(err) => return StepOutcome::Failed { error: err.to_string() },
            };
            let annotations = pod.metadata.annotations.clone().unwrap_or_default();
            if labels_of(&pod).get(&label.key) == Some(&label.value)
                && annotations.get(&format!("{prefix}incident")) == Some(&incident.id)
            {
                return StepOutcome::AlreadyDone {
                    detail: format!("{}={} already set", label.key, label.value),
                };
            }
            let body = json!({"metadata": {
                "labels": { &label.key: &label.value },
                "annotations": {
                    format!("{prefix}incident"): incident.id,
                    format!("{prefix}score"): format!("{:.1}", incident.score),
                    format!("{prefix}reason"): incident.reason.chars().take(1024).collect::<String>(),
                },
            }});
            let pods: Api<Pod> = Api::namespaced(api.client().clone(), namespace);
            match patch(ctx, &pods, name, PatchKind::Strategic, &body).await {
                Ok(_) => StepOutcome::done(format!("labelled {}={}", label.key, label.value)),
                Err(ApiError::NotFound { .. }) => StepOutcome::not_applicable("the pod is gone"),
                Err(err) => StepOutcome::Failed { error: err.to_string() },
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
            let (Some(api), Some((namespace, name))) = (ctx.api, incident.pod_ref()) else {
                return StepOutcome::not_applicable("no cluster or no pod identity");
            };
            let prefix = &ctx.config.annotation_prefix;
            let body = json!({"metadata": {
                "labels": { &ctx.config.quarantine_label.key: null },
                "annotations": {
                    format!("{prefix}incident"): null,
                    format!("{prefix}score"): null,
                    format!("{prefix}reason"): null,
                },
            }});
            let pods: Api<Pod> = Api::namespaced(api.client().clone(), namespace);
            match patch(ctx, &pods, name, PatchKind::Merge, &body).await {
                Ok(_) => StepOutcome::done("quarantine label and annotations removed"),
                Err(ApiError::NotFound { .. }) => StepOutcome::not_applicable("the pod is gone"),
                Err(err) => StepOutcome::Failed {
                    error: err.to_string(),
                },
            }
        }
        .boxed()
    }
}
