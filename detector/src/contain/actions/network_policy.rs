//! Ensures one deny-all NetworkPolicy per namespace selecting the quarantine label: both
//! policy types, no rules. Create-or-update, never one per incident; kept on release (it
//! selects nothing once no pod carries the label).

use k8s_openapi::{
    api::networking::v1::{NetworkPolicy as Policy, NetworkPolicySpec},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{Api, api::PostParams};

use super::{ApiStep, Scope, Step, managed_labels, reread_on_conflict};
use crate::contain::{ContainConfig, Rule, StepOutcome, kube::ApiError};

/// The deny-all NetworkPolicy.
pub struct NetworkPolicy;

/// The wanted spec.
pub fn deny_all(config: &ContainConfig) -> NetworkPolicySpec {
    NetworkPolicySpec {
        pod_selector: Some(LabelSelector {
            match_labels: Some(
                [(
                    config.quarantine_label.key.clone(),
                    config.quarantine_label.value.clone(),
                )]
                .into(),
            ),
            match_expressions: None,
        }),
        policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
        ingress: None,
        egress: None,
    }
}

fn is_deny_all(spec: &NetworkPolicySpec, want: &NetworkPolicySpec) -> bool {
    spec.pod_selector == want.pod_selector
        && spec.policy_types == want.policy_types
        && spec.ingress.as_ref().is_none_or(Vec::is_empty)
        && spec.egress.as_ref().is_none_or(Vec::is_empty)
}

/// One attempt: reads the namespace's policy, then creates it or makes it deny all.
async fn ensure(step: &Step<'_>) -> Result<StepOutcome, ApiError> {
    let (api, namespace) = (step.api, step.namespace);
    let name = step.config().network_policy_name.as_str();
    let want = deny_all(step.config());
    let policies: Api<Policy> = Api::namespaced(api.client().clone(), namespace);
    let url = policies.resource_url().to_owned();
    let params = PostParams::default();
    let what = match api
        .call("get networkpolicy", || policies.get_opt(name))
        .await?
    {
        Some(policy) if policy.spec.as_ref().is_some_and(|s| is_deny_all(s, &want)) => {
            return Ok(StepOutcome::AlreadyDone {
                detail: format!("{namespace}/{name} denies all"),
            });
        }
        Some(mut policy) => {
            policy.spec = Some(want);
            let body = serde_json::to_string(&policy).unwrap_or_default();
            step.ctx
                .change(format!("PUT {url}/{name} {body}"), async || {
                    api.call("replace networkpolicy", || {
                        policies.replace(name, &params, &policy)
                    })
                    .await
                })
                .await?;
            "updated"
        }
        None => {
            let policy = Policy {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(managed_labels()),
                    ..Default::default()
                },
                spec: Some(want),
            };
            let body = serde_json::to_string(&policy).unwrap_or_default();
            step.ctx
                .change(format!("POST {url} {body}"), async || {
                    api.call("create networkpolicy", || policies.create(&params, &policy))
                        .await
                })
                .await?;
            "created"
        }
    };
    Ok(StepOutcome::done(format!("{namespace}/{name} {what}")))
}

impl ApiStep for NetworkPolicy {
    const NAME: &'static str = "network_policy";
    const RBAC: &'static [Rule] = &[Rule {
        api_group: "networking.k8s.io",
        resource: "networkpolicies",
        verbs: &["get", "create", "update"],
    }];
    const SCOPE: Scope = Scope::Pod;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.network_policy
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        // Created or changed by someone else meanwhile: read it again.
        reread_on_conflict(|| ensure(step)).await
    }

    async fn undo(&self, _step: &Step<'_>, _done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        Ok(StepOutcome::not_applicable(
            "the policy is shared by the namespace's quarantined pods; it selects nothing once the label is gone",
        ))
    }
}
