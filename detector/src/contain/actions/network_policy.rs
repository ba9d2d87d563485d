//! Ensures one deny-all NetworkPolicy per namespace selecting the quarantine label: both
//! policy types, no rules. Create-or-update, never one per incident; kept on release (it
//! selects nothing once no pod carries the label).

use futures::{FutureExt as _, future::BoxFuture};
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy as Policy, NetworkPolicySpec},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{Api, api::PostParams};

use super::CONFLICT_RETRIES;
use crate::contain::{Action, ContainConfig, Incident, Rule, StepCtx, StepOutcome, kube::ApiError};

/// The deny-all NetworkPolicy.
pub struct NetworkPolicy;

const RBAC: &[Rule] = &[Rule {
    api_group: "networking.k8s.io",
    resource: "networkpolicies",
    verbs: &["get", "create", "update"],
}];

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

impl Action for NetworkPolicy {
    fn name(&self) -> &'static str {
        "network_policy"
    }

    fn rbac(&self) -> &'static [Rule] {
        RBAC
    }

    fn enabled(&self, config: &ContainConfig) -> bool {
        config.steps.network_policy
    }

    fn run<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
    ) -> BoxFuture<'a, StepOutcome> {
        async move {
            let (Some(api), Some(namespace)) = (ctx.api, incident.subject.namespace.as_deref())
            else {
                return StepOutcome::not_applicable("no cluster or no namespace");
            };
            let name = ctx.config.network_policy_name.as_str();
            let want = deny_all(ctx.config);
            let policies: Api<Policy> = Api::namespaced(api.client().clone(), namespace);
            let url = policies.resource_url().to_owned();
            let params = PostParams::default();
            let mut last = String::new();
            for _ in 0..CONFLICT_RETRIES {
                let existing = match api
                    .call("get networkpolicy", || policies.get_opt(name))
                    .await
                {
                    Ok(existing) => existing,
                    Err(err) => {
                        return StepOutcome::Failed {
                            error: err.to_string(),
                        };
                    }
                };
                let result = match existing {
                    Some(policy) if policy.spec.as_ref().is_some_and(|s| is_deny_all(s, &want)) => {
                        return StepOutcome::AlreadyDone {
                            detail: format!("{namespace}/{name} denies all"),
                        };
                    }
                    Some(mut policy) => {
                        policy.spec = Some(want.clone());
                        let body = serde_json::to_string(&policy).unwrap_or_default();
                        ctx.change(format!("PUT {url}/{name} {body}"), async || {
                            api.call("replace networkpolicy", || {
                                policies.replace(name, &params, &policy)
                            })
                            .await
                        })
                        .await
                        .map(|_| "updated")
                    }
                    None => {
                        let policy = Policy {
                            metadata: kube::api::ObjectMeta {
                                name: Some(name.to_owned()),
                                namespace: Some(namespace.to_owned()),
                                labels: Some(
                                    [(
                                        "app.kubernetes.io/managed-by".to_owned(),
                                        "detector".to_owned(),
                                    )]
                                    .into(),
                                ),
                                ..Default::default()
                            },
                            spec: Some(want.clone()),
                        };
                        let body = serde_json::to_string(&policy).unwrap_or_default();
                        ctx.change(format!("POST {url} {body}"), async || {
                            api.call("create networkpolicy", || policies.create(&params, &policy))
                                .await
                        })
                        .await
                        .map(|_| "created")
                    }
                };
                match result {
                    Ok(what) => return StepOutcome::done(format!("{namespace}/{name} {what}")),
                    // Created or changed by someone else meanwhile: read it again.
                    Err(ApiError::Conflict { message, .. }) => last = message,
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
        _ctx: &'a StepCtx<'a>,
        _incident: &'a Incident,
        _done: &'a StepOutcome,
    ) -> BoxFuture<'a, StepOutcome> {
        async {
            StepOutcome::not_applicable(
                "the policy is shared by the namespace's quarantined pods; it selects nothing once the label is gone",
            )
        }
        .boxed()
    }
}
