//! Optional (`steps.snapshot_volumes`, off by default): a `snapshot.storage.k8s.io/v1`
//! VolumeSnapshot of each PersistentVolumeClaim the suspect pod mounts, with the configured
//! class, before anything else can change what the attacker left on them. Kept on release:
//! they are evidence, deleted by a person when the case is closed.

use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PostParams},
};
use serde_json::json;

use super::{ApiStep, Scope, Step, managed_labels};
use crate::contain::{ContainConfig, Rule, StepOutcome, kube::ApiError};

/// Snapshots the pod's volumes.
pub struct SnapshotVolumes;

/// The VolumeSnapshot resource.
fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

/// The snapshot's name: the claim's and the incident's, within the 253 characters a name has.
pub fn snapshot_name(claim: &str, incident: &str) -> String {
    let mut name = format!("{claim}-{incident}");
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_owned()
}

impl ApiStep for SnapshotVolumes {
    const NAME: &'static str = "snapshot_volumes";
    const RBAC: &'static [Rule] = &[Rule {
        api_group: "snapshot.storage.k8s.io",
        resource: "volumesnapshots",
        verbs: &["create"],
    }];
    const SCOPE: Scope = Scope::Pod;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.snapshot_volumes
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let Some(pod) = step.pod().await? else {
            return Ok(StepOutcome::not_applicable("the pod is gone"));
        };
        let claims: Vec<String> = pod
            .spec
            .unwrap_or_default()
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
            .collect();
        if claims.is_empty() {
            return Ok(StepOutcome::not_applicable(
                "the pod mounts no PersistentVolumeClaim",
            ));
        }
        let resource = resource();
        let snapshots: Api<DynamicObject> =
            Api::namespaced_with(step.api.client().clone(), step.namespace, &resource);
        let url = snapshots.resource_url().to_owned();
        let params = PostParams::default();
        let class = step.config().snapshot_class.as_deref();
        let mut taken = Vec::new();
        let mut failed = Vec::new();
        for claim in &claims {
            let name = snapshot_name(claim, &step.incident.id);
            let mut spec = json!({"source": {"persistentVolumeClaimName": claim}});
            if let Some(class) = class {
                spec["volumeSnapshotClassName"] = json!(class);
            }
            let object = DynamicObject {
                types: Some(kube::api::TypeMeta {
                    api_version: resource.api_version.clone(),
                    kind: resource.kind.clone(),
                }),
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(step.namespace.to_owned()),
                    labels: Some(managed_labels()),
                    annotations: Some(
                        [(
                            format!("{}incident", step.config().annotation_prefix),
                            step.incident.id.clone(),
                        )]
                        .into(),
                    ),
                    ..ObjectMeta::default()
                },
                data: json!({ "spec": spec }),
            };
            let body = serde_json::to_string(&object).unwrap_or_default();
            let created = step
                .ctx
                .change(format!("POST {url} {body}"), async || {
                    step.api
                        .call("create volumesnapshot", || {
                            snapshots.create(&params, &object)
                        })
                        .await
                })
                .await;
            match created {
                // Already taken for this incident (a resumed step).
                Ok(_) | Err(ApiError::Conflict { .. }) => taken.push(name),
                Err(ApiError::NotFound { .. }) => {
                    return Ok(StepOutcome::Failed {
                        error: format!(
                            "the VolumeSnapshot API ({}) is not served: is the CSI snapshot \
                             controller installed?",
                            resource.api_version
                        ),
                    });
                }
                Err(err) => failed.push(format!("{claim}: {err}")),
            }
        }
        let detail = format!(
            "VolumeSnapshots {} of the claims {} (class {})",
            taken.join(", "),
            claims.join(", "),
            class.unwrap_or("the cluster's default")
        );
        if failed.is_empty() {
            Ok(StepOutcome::Done {
                detail,
                undo: json!({ "snapshots": taken }),
            })
        } else {
            Ok(StepOutcome::Failed {
                error: format!("{detail}; not taken: {}", failed.join("; ")),
            })
        }
    }

    async fn undo(&self, _step: &Step<'_>, _done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        Ok(StepOutcome::not_applicable(
            "the snapshots are evidence: kept until a person deletes them",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_name_is_a_valid_name_of_claim_and_incident() {
        assert_eq!(snapshot_name("data", "inc-1"), "data-inc-1");
        let long = snapshot_name(&"a".repeat(250), "inc-20261206t081500-12-3");
        assert!(long.len() <= 253);
        assert!(!long.ends_with('-'));
    }
}
