//! The incident as an OpenReports `Report` (`openreports.io/v1alpha1`) in the pod's namespace,
//! besides the Events: one `fail` result per rule of the verdict (policy: the rule's id,
//! category: its ATT&CK tactic, severity, the pod as the resource), scoped to the pod, for the
//! dashboards and policy tooling that read reports (Policy Reporter, Kyverno's UI). A cluster
//! without the CRD gets none (not applicable). A Report tells the current state, so release
//! deletes it; the journal and the SIEM keep the history.

use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams},
};
use serde_json::{Value, json};

use super::{ApiStep, Scope, Step};
use crate::{
    contain::{ContainConfig, Incident, Rule, StepOutcome, kube::ApiError},
    rules::RuleMeta,
};

/// Creates the incident's Report.
pub struct Report;

/// The Report's name.
pub fn report_name(incident: &str) -> String {
    format!("detector-{incident}")
}

/// The pod a Report is about.
pub struct ReportedPod<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// UID, when known.
    pub uid: Option<&'a str>,
}

/// A Report named `name` on `pod`, as the OpenReports API defines it: one `fail` result per
/// rule (or one result saying `message` when there are none), each with `properties`.
pub fn report_object(
    name: &str,
    pod: &ReportedPod<'_>,
    rules: &[RuleMeta],
    message: &str,
    properties: &[(&str, String)],
) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let timestamp = json!({"seconds": now.unix_timestamp(), "nanos": now.nanosecond()});
    let resource = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod.name,
        "namespace": pod.namespace,
        "uid": pod.uid,
    });
    let props = |extra: Option<(&str, &str)>| {
        let mut map = serde_json::Map::new();
        for (k, v) in properties
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(extra)
        {
            map.insert(k.into(), json!(v));
        }
        Value::Object(map)
    };
    let mut results: Vec<Value> = rules
        .iter()
        .map(|rule| {
            json!({
                "source": "detector",
                "policy": rule.id,
                "rule": rule.technique,
                "category": rule.tactic,
                "severity": rule.severity,
                "timestamp": timestamp,
                "result": "fail",
                "scored": true,
                "resources": [resource],
                "message": rule.description,
                "properties": props(Some(("technique", &rule.technique))),
            })
        })
        .collect();
    if results.is_empty() {
        results.push(json!({
            "source": "detector",
            "policy": "containment",
            "severity": "high",
            "timestamp": timestamp,
            "result": "fail",
            "scored": true,
            "resources": [resource],
            "message": message,
            "properties": props(None),
        }));
    }
    json!({
        "apiVersion": "openreports.io/v1alpha1",
        "kind": "Report",
        "metadata": {
            "name": name,
            "namespace": pod.namespace,
            "labels": {"app.kubernetes.io/managed-by": "detector"},
        },
        "source": "detector",
        "scope": resource,
        "summary": {"pass": 0, "fail": results.len(), "warn": 0, "error": 0, "skip": 0},
        "results": results,
    })
}

/// The Report of `incident` on its pod `namespace/name`.
pub fn report(incident: &Incident, namespace: &str, name: &str, prefix: &str) -> Value {
    let pod = ReportedPod {
        namespace,
        name,
        uid: incident.subject.pod_uid.as_deref(),
    };
    let mut value = report_object(
        &report_name(&incident.id),
        &pod,
        &incident.rules,
        &incident.reason,
        &[
            ("incident", incident.id.clone()),
            ("score", format!("{:.1}", incident.score)),
            ("node", incident.node.clone()),
        ],
    );
    value["metadata"]["annotations"] = json!({ format!("{prefix}incident"): incident.id });
    value
}

/// The Report resource.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("openreports.io", "v1alpha1", "Report"),
        "reports",
    )
}

impl ApiStep for Report {
    const NAME: &'static str = "report";
    const RBAC: &'static [Rule] = &[Rule {
        api_group: "openreports.io",
        resource: "reports",
        verbs: &["create", "delete"],
    }];
    const SCOPE: Scope = Scope::Pod;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.report
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let resource = resource();
        let reports: Api<DynamicObject> =
            Api::namespaced_with(step.api.client().clone(), step.namespace, &resource);
        let value = report(
            step.incident,
            step.namespace,
            step.name,
            &step.config().annotation_prefix,
        );
        let Ok(object) = serde_json::from_value::<DynamicObject>(value.clone()) else {
            return Ok(StepOutcome::Failed {
                error: "the Report does not read as a Kubernetes object".into(),
            });
        };
        let name = report_name(&step.incident.id);
        let params = PostParams::default();
        let created = step
            .ctx
            .change(
                format!("POST {} {value}", reports.resource_url()),
                async || {
                    step.api
                        .call("create report", || reports.create(&params, &object))
                        .await
                },
            )
            .await;
        match created {
            Ok(_) => Ok(StepOutcome::done(format!(
                "Report {}/{name} with {} results",
                step.namespace,
                value["results"].as_array().map_or(0, Vec::len)
            ))),
            Err(ApiError::Conflict { .. }) => Ok(StepOutcome::AlreadyDone {
                detail: format!("Report {}/{name} exists", step.namespace),
            }),
            Err(ApiError::NotFound { .. }) => Ok(StepOutcome::not_applicable(
                "the OpenReports Report CRD (openreports.io/v1alpha1) is not installed",
            )),
            Err(err) => Err(err),
        }
    }

    async fn undo(&self, step: &Step<'_>, _done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        let resource = resource();
        let reports: Api<DynamicObject> =
            Api::namespaced_with(step.api.client().clone(), step.namespace, &resource);
        let name = report_name(&step.incident.id);
        let params = DeleteParams::default();
        let deleted = step
            .ctx
            .change(
                format!("DELETE {}/{name}", reports.resource_url()),
                async || {
                    step.api
                        .call("delete report", || reports.delete(&name, &params))
                        .await
                },
            )
            .await;
        match deleted {
            Ok(_) => Ok(StepOutcome::done(format!(
                "Report {}/{name} deleted",
                step.namespace
            ))),
            Err(ApiError::NotFound { .. }) => {
                Ok(StepOutcome::not_applicable("the Report is gone already"))
            }
            Err(err) => Err(err),
        }
    }
}
