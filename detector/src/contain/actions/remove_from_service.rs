//! Takes the pod out of its ReplicaSet and its Services: strips the labels their selectors
//! match. The ReplicaSet releases the pod and starts a replacement; Services stop routing to
//! it. The removed labels are recorded so that release can put them back.

use std::collections::{BTreeMap, BTreeSet};

use futures::{FutureExt as _, future::BoxFuture};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{Pod, Service},
};
use kube::{Api, api::ListParams};
use serde_json::{Map, Value, json};

use super::{CONFLICT_RETRIES, PatchKind, labels_of, patch, read_pod};
use crate::contain::{Action, ContainConfig, Incident, Rule, StepCtx, StepOutcome, kube::ApiError};

/// Strips controller and Service selector labels from the pod.
pub struct RemoveFromService;

const RBAC: &[Rule] = &[
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["get", "patch"],
    },
    Rule {
        api_group: "",
        resource: "services",
        verbs: &["list"],
    },
    Rule {
        api_group: "apps",
        resource: "replicasets",
        verbs: &["get"],
    },
];

/// The label keys that tie the pod to its ReplicaSet and Services, and who selects it.
async fn selected_keys(
    ctx: &StepCtx<'_>,
    pod: &Pod,
    namespace: &str,
) -> Result<(BTreeSet<String>, Vec<String>), ApiError> {
    let Some(api) = ctx.api else {
        return Ok(Default::default());
    };
    let labels = labels_of(pod);
    let mut keys = BTreeSet::new();
    let mut by = Vec::new();
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if let Some(owner) = controller {
        if owner.kind == "ReplicaSet" {
            let sets: Api<ReplicaSet> = Api::namespaced(api.client().clone(), namespace);
            match api.call("get replicaset", || sets.get(&owner.name)).await {
                Ok(rs) => {
                    let selector = rs.spec.map(|s| s.selector).unwrap_or_default();
                    keys.extend(selector.match_labels.unwrap_or_default().into_keys());
                    keys.extend(
                        selector
                            .match_expressions
                            .unwrap_or_default()
                            .into_iter()
                            .map(|e| e.key),
                    );
                    by.push(format!("ReplicaSet {}", owner.name));
                }
                // The ReplicaSet is gone: nothing will replace the pod, nothing to detach from.
                Err(ApiError::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        } else {
            by.push(format!(
                "{} {} kept (only ReplicaSet pods are replaced when their labels go)",
                owner.kind, owner.name
            ));
        }
    }
    let services: Api<Service> = Api::namespaced(api.client().clone(), namespace);
    let params = ListParams::default();
    let list = api.call("list services", || services.list(&params)).await?;
    for service in list.items {
        let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
        if !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            keys.extend(selector.into_keys());
            by.push(format!(
                "Service {}",
                service.metadata.name.unwrap_or_default()
            ));
        }
    }
    keys.retain(|k| labels.contains_key(k) && *k != ctx.config.quarantine_label.key);
    Ok((keys, by))
}

impl Action for RemoveFromService {
    fn name(&self) -> &'static str {
        "remove_from_service"
    }

    fn rbac(&self) -> &'static [Rule] {
        RBAC
    }

    fn enabled(&self, config: &ContainConfig) -> bool {
        config.steps.remove_from_service
    }

    fn run<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
    ) -> BoxFuture<'a, StepOutcome> {
        async move {
            let (Some(_), Some((namespace, name))) = (ctx.api, incident.pod_ref()) else {
                return StepOutcome::not_applicable("no cluster or no pod identity");
            };
            let mut last = String::new();
            for _ in 0..CONFLICT_RETRIES {
                let pod = match read_pod(ctx, namespace, name).await {
                    Ok(Some(pod)) => pod,
                    Ok(None) => return StepOutcome::not_applicable("the pod is gone"),
                    Err(err) => {
                        return StepOutcome::Failed {
                            error: err.to_string(),
                        };
                    }
                };
                let (keys, by) = match selected_keys(ctx, &pod, namespace).await {
                    Ok(found) => found,
                    Err(err) => {
                        return StepOutcome::Failed {
                            error: err.to_string(),
                        };
                    }
                };
                if keys.is_empty() {
                    return StepOutcome::AlreadyDone {
                        detail: format!("no selector matches the pod ({})", by.join(", ")),
                    };
                }
                let labels = labels_of(&pod);
                let removed: BTreeMap<&String, &String> = keys
                    .iter()
                    .filter_map(|k| Some((k, labels.get(k)?)))
                    .collect();
                let nulls: Map<String, Value> =
                    keys.iter().map(|k| (k.clone(), Value::Null)).collect();
                // The resourceVersion makes the patch conditional: a pod changed since the read
                // answers 409, and the selectors are matched again.
                let body = json!({"metadata": {
                    "resourceVersion": pod.metadata.resource_version,
                    "labels": nulls,
                }});
                let pods: Api<Pod> = Api::namespaced(
                    ctx.api.map(|a| a.client().clone()).expect("checked above"),
                    namespace,
                );
                match patch(ctx, &pods, name, PatchKind::Merge, &body).await {
                    Ok(_) => {
                        return StepOutcome::Done {
                            detail: format!(
                                "removed labels {} ({})",
                                keys.iter().cloned().collect::<Vec<_>>().join(", "),
                                by.join(", ")
                            ),
                            undo: json!({ "labels": removed }),
                        };
                    }
                    Err(ApiError::Conflict { message, .. }) => last = message,
                    Err(ApiError::NotFound { .. }) => {
                        return StepOutcome::not_applicable("the pod is gone");
                    }
                    Err(err) => {
                        return StepOutcome::Failed {
                            error: err.to_string(),
                        };
                    }
                }
            }
            StepOutcome::Failed {
                error: format!("still conflicting after {CONFLICT_RETRIES} re-reads: {last}"),
            }
        }
        .boxed()
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
        done: &'a StepOutcome,
    ) -> BoxFuture<'a, StepOutcome> {
        async move {
            let (Some(api), Some((namespace, name))) = (ctx.api, incident.pod_ref()) else {
                return StepOutcome::not_applicable("no cluster or no pod identity");
            };
            let labels = &done.undo_data()["labels"];
            if labels.as_object().is_none_or(Map::is_empty) {
                return StepOutcome::not_applicable("no labels were removed");
            }
            let pods: Api<Pod> = Api::namespaced(api.client().clone(), namespace);
            let body = json!({"metadata": {"labels": labels}});
            match patch(ctx, &pods, name, PatchKind::Merge, &body).await {
                Ok(_) => StepOutcome::done(format!("restored labels {labels}")),
                Err(ApiError::NotFound { .. }) => StepOutcome::not_applicable("the pod is gone"),
                Err(err) => StepOutcome::Failed {
                    error: err.to_string(),
                },
            }
        }
        .boxed()
    }
}
