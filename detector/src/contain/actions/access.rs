//! What the suspect pod's credentials reach: its ServiceAccount's RoleBindings and
//! ClusterRoleBindings (those naming it, and those naming a group it belongs to), each with the
//! rules of its role, listed in the incident as the responder's blast radius. Read only: the
//! pod's own use of the token is cut by the kernel block (the API server and the cloud
//! metadata endpoint are addresses like any other).

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::{Api, api::ListParams};

use super::{ApiStep, Scope, Step};
use crate::contain::{ContainConfig, Rule, StepOutcome, kube::ApiError};

/// Lists what the pod's ServiceAccount may do.
pub struct ListAccess;

/// The groups every ServiceAccount of `namespace` belongs to.
fn groups(namespace: &str) -> [String; 3] {
    [
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".to_owned(),
    ]
}

/// Whether a binding subject is the ServiceAccount `namespace/name` or one of its groups.
/// A RoleBinding's ServiceAccount subject without a namespace is of the binding's own.
pub fn names(subject: &Subject, namespace: &str, name: &str, binding_ns: Option<&str>) -> bool {
    match subject.kind.as_str() {
        "ServiceAccount" => {
            subject.name == name && subject.namespace.as_deref().or(binding_ns) == Some(namespace)
        }
        "Group" => groups(namespace).contains(&subject.name),
        _ => false,
    }
}

/// `verbs on resources (group)` for each rule.
fn rules_text(rules: &[PolicyRule]) -> String {
    if rules.is_empty() {
        return "no rules".into();
    }
    rules
        .iter()
        .map(|r| {
            let resources = r
                .resources
                .as_ref()
                .map(|v| v.join(","))
                .or_else(|| r.non_resource_urls.as_ref().map(|v| v.join(",")))
                .unwrap_or_default();
            let groups = r.api_groups.as_ref().map(|g| {
                g.iter()
                    .map(|g| if g.is_empty() { "core" } else { g.as_str() })
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let names = r
                .resource_names
                .as_ref()
                .map(|n| format!(" named {}", n.join(",")))
                .unwrap_or_default();
            match groups {
                Some(groups) => format!("{} {resources}{names} ({groups})", r.verbs.join(",")),
                None => format!("{} {resources}{names}", r.verbs.join(",")),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl ListAccess {
    /// The rules of a binding's role, or why they cannot be read.
    async fn rules(step: &Step<'_>, namespace: &str, role: &RoleRef) -> String {
        let client = step.api.client().clone();
        let read = match role.kind.as_str() {
            "ClusterRole" => {
                let roles: Api<ClusterRole> = Api::all(client);
                step.api
                    .call("get clusterrole", || roles.get(&role.name))
                    .await
                    .map(|r| r.rules.unwrap_or_default())
            }
            _ => {
                let roles: Api<Role> = Api::namespaced(client, namespace);
                step.api
                    .call("get role", || roles.get(&role.name))
                    .await
                    .map(|r| r.rules.unwrap_or_default())
            }
        };
        match read {
            Ok(rules) => rules_text(&rules),
            Err(err) => format!("rules unreadable: {err}"),
        }
    }
}

impl ApiStep for ListAccess {
    const NAME: &'static str = "list_access";
    const RBAC: &'static [Rule] = &[
        Rule {
            api_group: "rbac.authorization.k8s.io",
            resource: "rolebindings",
            verbs: &["list"],
        },
        Rule {
            api_group: "rbac.authorization.k8s.io",
            resource: "clusterrolebindings",
            verbs: &["list"],
        },
        Rule {
            api_group: "rbac.authorization.k8s.io",
            resource: "roles",
            verbs: &["get"],
        },
        Rule {
            api_group: "rbac.authorization.k8s.io",
            resource: "clusterroles",
            verbs: &["get"],
        },
    ];
    const SCOPE: Scope = Scope::Pod;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.list_access
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let Some(pod) = step.pod().await? else {
            return Ok(StepOutcome::not_applicable("the pod is gone"));
        };
        let namespace = step.namespace;
        let spec = pod.spec.unwrap_or_default();
        let account = spec
            .service_account_name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let token = if spec.automount_service_account_token == Some(false) {
            "its token is not mounted"
        } else {
            "its token is mounted"
        };
        let client = step.api.client().clone();
        let params = ListParams::default();
        let local: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
        let cluster: Api<ClusterRoleBinding> = Api::all(client);
        let local = step
            .api
            .call("list rolebindings", || local.list(&params))
            .await?;
        let cluster = step
            .api
            .call("list clusterrolebindings", || cluster.list(&params))
            .await?;
        let mut grants = Vec::new();
        for binding in &local.items {
            let subjects = binding.subjects.as_deref().unwrap_or_default();
            if subjects
                .iter()
                .any(|s| names(s, namespace, &account, Some(namespace)))
            {
                let name = binding.metadata.name.clone().unwrap_or_default();
                let rules = Self::rules(step, namespace, &binding.role_ref).await;
                grants.push(format!(
                    "RoleBinding {namespace}/{name} -> {} {}: {rules}",
                    binding.role_ref.kind, binding.role_ref.name
                ));
            }
        }
        for binding in &cluster.items {
            let subjects = binding.subjects.as_deref().unwrap_or_default();
            if subjects.iter().any(|s| names(s, namespace, &account, None)) {
                let name = binding.metadata.name.clone().unwrap_or_default();
                let rules = Self::rules(step, namespace, &binding.role_ref).await;
                grants.push(format!(
                    "ClusterRoleBinding {name} -> ClusterRole {}: {rules}",
                    binding.role_ref.name
                ));
            }
        }
        let reach = if grants.is_empty() {
            "no binding grants it anything".to_owned()
        } else {
            grants.join(" | ")
        };
        Ok(StepOutcome::done(format!(
            "ServiceAccount {namespace}/{account} ({token}): {reach}"
        )))
    }

    async fn undo(&self, _step: &Step<'_>, _done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        Ok(StepOutcome::not_applicable("a listing changes nothing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(kind: &str, name: &str, namespace: Option<&str>) -> Subject {
        Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: namespace.map(Into::into),
            api_group: None,
        }
    }

    #[test]
    fn a_service_account_is_named_by_itself_or_by_its_groups() {
        let sa = subject("ServiceAccount", "web", Some("shop"));
        assert!(names(&sa, "shop", "web", None));
        assert!(!names(&sa, "other", "web", None));
        // A RoleBinding's subject without a namespace is of the binding's.
        let bare = subject("ServiceAccount", "web", None);
        assert!(names(&bare, "shop", "web", Some("shop")));
        assert!(!names(&bare, "shop", "web", None));
        for group in [
            "system:serviceaccounts",
            "system:serviceaccounts:shop",
            "system:authenticated",
        ] {
            assert!(names(&subject("Group", group, None), "shop", "web", None));
        }
        assert!(!names(
            &subject("Group", "system:serviceaccounts:other", None),
            "shop",
            "web",
            None
        ));
        assert!(!names(&subject("User", "web", None), "shop", "web", None));
    }

    #[test]
    fn rules_read_as_verbs_on_resources_of_their_groups() {
        let rules = [PolicyRule {
            api_groups: Some(vec![String::new(), "apps".into()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["get".into(), "list".into()],
            resource_names: Some(vec!["db".into()]),
            non_resource_urls: None,
        }];
        assert_eq!(rules_text(&rules), "get,list secrets named db (core,apps)");
        assert_eq!(rules_text(&[]), "no rules");
    }
}
