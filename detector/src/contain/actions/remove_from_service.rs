//! Takes the pod out of its ReplicaSet and its Services: strips the labels their selectors
//! match. The ReplicaSet releases the pod and starts a replacement; Services stop routing to
//! it. The removed labels are recorded so that release can put them back.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{Pod, Service},
};
use kube::{Api, api::ListParams};
use serde_json::{Map, Value, json};

use super::{ApiStep, PatchKind, Scope, Step, labels_of, reread_on_conflict};
use crate::contain::{ContainConfig, Rule, StepOutcome, kube::ApiError};

/// Strips controller and Service selector labels from the pod.
pub struct RemoveFromService;

/// The label keys that tie the pod to its ReplicaSet and Services, and who selects it.
async fn selected_keys(
    step: &Step<'_>,
    pod: &Pod,
) -> Result<(BTreeSet<String>, Vec<String>), ApiError> {
    let (api, namespace) = (step.api, step.namespace);
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
    keys.retain(|k| labels.contains_key(k) && *k != step.config().quarantine_label.key);
    Ok((keys, by))
}

/// One attempt: reads the pod, finds the selected labels, removes them if the pod is unchanged.
async fn strip(step: &Step<'_>) -> Result<StepOutcome, ApiError> {
    let Some(pod) = step.pod().await? else {
        return Ok(StepOutcome::not_applicable("the pod is gone"));
    };
    let (keys, by) = selected_keys(step, &pod).await?;
    if keys.is_empty() {
        return Ok(StepOutcome::AlreadyDone {
            detail: format!("no selector matches the pod ({})", by.join(", ")),
        });
    }
    let labels = labels_of(&pod);
    let removed: BTreeMap<&String, &String> = keys
        .iter()
        .filter_map(|k| Some((k, labels.get(k)?)))
        .collect();
    let nulls: Map<String, Value> = keys.iter().map(|k| (k.clone(), Value::Null)).collect();
    let body = json!({"metadata": {
        "resourceVersion": pod.metadata.resource_version,
        "labels": nulls,
    }});
    step.patch(&step.pods(), PatchKind::Merge, &body).await?;
    Ok(StepOutcome::Done {
        detail: format!(
            "removed labels {} ({})",
            keys.iter().cloned().collect::<Vec<_>>().join(", "),
            by.join(", ")
        ),
        undo: json!({ "labels": removed }),
    })
}

impl ApiStep for RemoveFromService {
    const NAME: &'static str = "remove_from_service";
    const RBAC: &'static [Rule] = &[
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
    const SCOPE: Scope = Scope::Pod;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.remove_from_service
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        reread_on_conflict(|| strip(step)).await
    }

    async fn undo(&self, step: &Step<'_>, done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        let labels = &done.undo_data()["labels"];
        if labels.as_object().is_none_or(Map::is_empty) {
            return Ok(StepOutcome::not_applicable("no labels were removed"));
        }
        let body = json!({"metadata": {"labels": labels}});
        step.patch(&step.pods(), PatchKind::Merge, &body).await?;
        Ok(StepOutcome::done(format!("restored labels {labels}")))
    }
}
