//! Optional (`steps.revoke_service_account`, off by default, and its RBAC only with the
//! `deploy/components/revoke-credentials` component): the suspect pod's ServiceAccount is
//! taken out of every RoleBinding and ClusterRoleBinding that names it (journaled: release puts
//! it back), and its legacy token Secrets are deleted (not undone: a token that may have left
//! the pod must not come back; the token controller makes no new ones). Grants through groups
//! (`system:serviceaccounts`, `system:authenticated`) cannot be taken from one account: they
//! are named in the outcome. Projected tokens already issued stay valid until they expire;
//! the kernel block keeps the pod itself from using them.
//!
//! Editing a binding needs the `bind` verb on its role (the API server's escalation check):
//! whoever holds the detector's ServiceAccount with this component can bind any role, which is
//! why it is a component of its own, not part of the base RBAC.

use k8s_openapi::api::{
    core::v1::Secret,
    rbac::v1::{ClusterRoleBinding, RoleBinding, Subject},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};

use super::{ApiStep, Scope, Step, access::names, reread_on_conflict};
use crate::contain::{ContainConfig, Rule, StepOutcome, kube::ApiError};

/// Revokes the pod's ServiceAccount's bindings and legacy tokens.
pub struct RevokeServiceAccount;

/// The component whose RBAC the step needs.
pub const COMPONENT: &str = "revoke-credentials";

/// The subject that names ServiceAccount `namespace/name` explicitly.
fn account(namespace: &str, name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
        api_group: None,
    }
}

/// One binding the account was taken out of, for release.
fn revoked(kind: &str, namespace: Option<&str>, name: &str) -> Value {
    json!({"kind": kind, "namespace": namespace, "name": name})
}

/// A 403 says what is missing.
fn forbidden_hint(err: ApiError) -> ApiError {
    match err {
        ApiError::Rejected {
            what,
            code: 403,
            message,
        } => ApiError::Rejected {
            what,
            code: 403,
            message: format!(
                "{message} (the step needs deploy/components/{COMPONENT} on the cluster)"
            ),
        },
        other => other,
    }
}

/// A RoleBinding or a ClusterRoleBinding: what revocation reads and edits of either.
trait Binding:
    Clone
    + std::fmt::Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
    + kube::Resource<DynamicType = ()>
    + Send
    + Sync
{
    /// Its kind.
    const KIND: &'static str;
    /// Its subjects.
    fn subjects_mut(&mut self) -> &mut Option<Vec<Subject>>;
}

impl Binding for RoleBinding {
    const KIND: &'static str = "RoleBinding";

    fn subjects_mut(&mut self) -> &mut Option<Vec<Subject>> {
        &mut self.subjects
    }
}

impl Binding for ClusterRoleBinding {
    const KIND: &'static str = "ClusterRoleBinding";

    fn subjects_mut(&mut self) -> &mut Option<Vec<Subject>> {
        &mut self.subjects
    }
}

/// Edits the subjects of binding `name`: read afresh, `edit` (which says whether it changed
/// anything), replaced at the version read, a 409 read again.
async fn edit_binding<K: Binding>(
    step: &Step<'_>,
    api: &Api<K>,
    name: &str,
    edit: impl Fn(&mut Vec<Subject>) -> bool,
) -> Result<(), ApiError> {
    let edit = &edit;
    let outcome = reread_on_conflict(|| async move {
        let mut fresh = step.api.call("get binding", || api.get(name)).await?;
        if !edit(fresh.subjects_mut().get_or_insert_default()) {
            return Ok(StepOutcome::AlreadyDone {
                detail: String::new(),
            });
        }
        let params = PostParams::default();
        let body = serde_json::to_string(&fresh).unwrap_or_default();
        step.ctx
            .change(
                format!("PUT {}/{name} {body}", api.resource_url()),
                async || {
                    step.api
                        .call("replace binding", || api.replace(name, &params, &fresh))
                        .await
                },
            )
            .await?;
        Ok(StepOutcome::done(""))
    })
    .await
    .map_err(forbidden_hint)?;
    match outcome {
        StepOutcome::Failed { error } => Err(ApiError::Conflict {
            what: format!("{} {name}", K::KIND),
            message: error,
        }),
        _ => Ok(()),
    }
}

/// Takes ServiceAccount `sa` of the step's namespace out of the bindings of `api` that name
/// it (`namespace`: the bindings', for a RoleBinding); returns what it changed.
async fn strip<K: Binding>(
    step: &Step<'_>,
    api: &Api<K>,
    namespace: Option<&str>,
    sa: &str,
) -> Result<Vec<Value>, ApiError> {
    let ns = step.namespace;
    let params = ListParams::default();
    let list = step.api.call("list bindings", || api.list(&params)).await?;
    let explicit = |s: &Subject| s.kind == "ServiceAccount" && names(s, ns, sa, namespace);
    let mut changed = Vec::new();
    for mut binding in list.items {
        if !binding.subjects_mut().iter().flatten().any(explicit) {
            continue;
        }
        let name = binding.meta().name.clone().unwrap_or_default();
        edit_binding(step, api, &name, |subjects| {
            let before = subjects.len();
            subjects.retain(|s| !explicit(s));
            subjects.len() != before
        })
        .await?;
        changed.push(revoked(K::KIND, namespace, &name));
    }
    Ok(changed)
}

/// Puts ServiceAccount `subject` back in binding `name` of `api`; `false` when the binding is
/// gone.
async fn put_back<K: Binding>(
    step: &Step<'_>,
    api: &Api<K>,
    name: &str,
    subject: &Subject,
) -> Result<bool, ApiError> {
    let result = edit_binding(step, api, name, |subjects| {
        let absent = !subjects.contains(subject);
        if absent {
            subjects.push(subject.clone());
        }
        absent
    })
    .await;
    match result {
        Ok(()) => Ok(true),
        Err(ApiError::NotFound { .. }) => Ok(false),
        Err(err) => Err(err),
    }
}

impl RevokeServiceAccount {
    /// Deletes the account's legacy token Secrets; returns their names.
    async fn tokens(step: &Step<'_>, sa: &str) -> Result<Vec<String>, ApiError> {
        let api: Api<Secret> = Api::namespaced(step.api.client().clone(), step.namespace);
        let params = ListParams::default().fields("type=kubernetes.io/service-account-token");
        let list = step
            .api
            .call("list secrets", || api.list(&params))
            .await
            .map_err(forbidden_hint)?;
        let mut deleted = Vec::new();
        for secret in list.items {
            let annotations = secret.metadata.annotations.unwrap_or_default();
            if annotations
                .get("kubernetes.io/service-account.name")
                .map(String::as_str)
                != Some(sa)
            {
                continue;
            }
            let name = secret.metadata.name.unwrap_or_default();
            let delete = DeleteParams::default();
            let result = step
                .ctx
                .change(
                    format!("DELETE {}/{name}", api.resource_url()),
                    async || {
                        step.api
                            .call("delete secret", || api.delete(&name, &delete))
                            .await
                    },
                )
                .await;
            match result {
                Ok(_) | Err(ApiError::NotFound { .. }) => deleted.push(name),
                Err(err) => return Err(forbidden_hint(err)),
            }
        }
        Ok(deleted)
    }
}

impl ApiStep for RevokeServiceAccount {
    const NAME: &'static str = "revoke_service_account";
    const RBAC: &'static [Rule] = &[
        Rule {
            api_group: "rbac.authorization.k8s.io",
            resource: "rolebindings",
            verbs: &["list", "get", "update"],
        },
        Rule {
            api_group: "rbac.authorization.k8s.io",
            resource: "clusterrolebindings",
            verbs: &["list", "get", "update"],
        },
        // The API server's escalation check on editing a binding.
        Rule {
            api_group: "rbac.authorization.k8s.io",
            resource: "roles",
            verbs: &["bind"],
        },
        Rule {
            api_group: "rbac.authorization.k8s.io",
            resource: "clusterroles",
            verbs: &["bind"],
        },
        Rule {
            api_group: "",
            resource: "secrets",
            verbs: &["list", "delete"],
        },
    ];
    const RBAC_COMPONENT: Option<&'static str> = Some(COMPONENT);
    const SCOPE: Scope = Scope::Pod;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.revoke_service_account
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let Some(pod) = step.pod().await? else {
            return Ok(StepOutcome::not_applicable("the pod is gone"));
        };
        let sa = pod
            .spec
            .and_then(|s| s.service_account_name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let client = step.api.client().clone();
        let local: Api<RoleBinding> = Api::namespaced(client.clone(), step.namespace);
        let cluster: Api<ClusterRoleBinding> = Api::all(client);
        let mut bindings = strip(step, &local, Some(step.namespace), &sa).await?;
        bindings.extend(strip(step, &cluster, None, &sa).await?);
        let tokens = Self::tokens(step, &sa).await?;
        let listed: Vec<String> = bindings
            .iter()
            .map(|b| {
                format!(
                    "{} {}",
                    b["kind"].as_str().unwrap_or_default(),
                    b["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        if bindings.is_empty() && tokens.is_empty() {
            return Ok(StepOutcome::AlreadyDone {
                detail: format!(
                    "no binding names ServiceAccount {}/{sa} and it has no legacy token \
                     (grants through groups stay: see list_access)",
                    step.namespace
                ),
            });
        }
        Ok(StepOutcome::Done {
            detail: format!(
                "ServiceAccount {}/{sa} taken out of [{}]; legacy tokens deleted [{}] (grants \
                 through groups stay: see list_access)",
                step.namespace,
                listed.join(", "),
                tokens.join(", ")
            ),
            undo: json!({"service_account": sa, "bindings": bindings, "tokens": tokens}),
        })
    }

    async fn undo(&self, step: &Step<'_>, done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        let data = done.undo_data();
        let Some(sa) = data["service_account"].as_str() else {
            return Ok(StepOutcome::not_applicable("nothing was revoked"));
        };
        let subject = account(step.namespace, sa);
        let mut restored = Vec::new();
        let mut gone = Vec::new();
        for binding in data["bindings"].as_array().into_iter().flatten() {
            let name = binding["name"].as_str().unwrap_or_default().to_owned();
            let kind = binding["kind"].as_str().unwrap_or_default();
            let client = step.api.client().clone();
            let present = if kind == "RoleBinding" {
                let api: Api<RoleBinding> = Api::namespaced(client, step.namespace);
                put_back(step, &api, &name, &subject).await?
            } else {
                let api: Api<ClusterRoleBinding> = Api::all(client);
                put_back(step, &api, &name, &subject).await?
            };
            if present {
                restored.push(format!("{kind} {name}"));
            } else {
                // Deleted meanwhile: nothing to put back.
                gone.push(format!("{kind} {name}"));
            }
        }
        Ok(StepOutcome::done(format!(
            "ServiceAccount {}/{sa} back in [{}]{}; deleted legacy tokens stay deleted",
            step.namespace,
            restored.join(", "),
            if gone.is_empty() {
                String::new()
            } else {
                format!(" ([{}] deleted meanwhile)", gone.join(", "))
            }
        )))
    }
}
