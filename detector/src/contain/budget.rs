//! The cluster-wide action budget: at most `max` containments per `window_s` across every
//! node, kept in one `coordination.k8s.io/v1` Lease that the nodes update with optimistic
//! concurrency (no consensus of our own).
//!
//! The Lease's `<prefix>containments` annotation lists the containments of the window, each
//! with its time, node, pod and incident. Taking from the budget is read, drop what left the
//! window, refuse when `max` remain, else append and write back with the `resourceVersion`
//! read: a node that lost the race gets a 409 and reads again. Every successful write takes
//! exactly one unit, so at most `max` writers can ever conflict in a window, and the others
//! read a spent budget and write nothing. The Lease outlives every daemon (a restarted one
//! reads the same budget); `spec.holderIdentity` and `renewTime` name the last node that took
//! from it, for people reading it with `kubectl`.
//!
//! Times are the nodes' wall clocks (UTC): a clock off by a few seconds moves an entry's expiry
//! by as much, which a window of minutes absorbs.
//!
//! What the API cannot answer (unreachable, timed out, forbidden) is [`Take::Unreachable`]: the
//! node's own budget, which admitted the containment already, decides alone, and the journal
//! says so. A Lease whose list cannot be read is a refusal naming it: a broken brake is not
//! taken for no brake (delete the Lease to reset it).

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use serde::{Deserialize, Serialize};

use super::{
    ContainConfig, Rule,
    actions::managed_labels,
    kube::{ApiError, KubeApi},
};

/// What taking from the budget needs: the Lease, in the daemon's own namespace.
pub const RBAC: &[Rule] = &[Rule {
    api_group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["get", "create", "update"],
}];

/// Reads and writes of a Lease that keep changing under the node before it gives up, besides
/// one per unit of the budget (each conflict is another node's successful take, so a node
/// loses at most `max` races in a window; see the module's documentation).
const SPARE_ATTEMPTS: u32 = 16;

/// One containment counted against the budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// When it was taken (RFC 3339, UTC).
    pub at: String,
    /// The node that took it.
    pub node: String,
    /// The pod, `namespace/name`.
    pub pod: String,
    /// The incident.
    pub incident: String,
}

/// Who takes a unit.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The node.
    pub node: &'a str,
    /// The pod, `namespace/name`.
    pub pod: &'a str,
    /// The incident.
    pub incident: &'a str,
}

/// What the budget said.
#[derive(Debug, Clone, PartialEq)]
pub enum Take {
    /// Taken: `spent` of the window's `max`, this one included.
    Granted {
        /// Units spent in the window, this one included.
        spent: usize,
    },
    /// Dry run: the budget has room, and this write would take it.
    WouldGrant {
        /// The write.
        call: String,
    },
    /// Spent: not contained.
    Refused {
        /// Why, with the containments that spent it.
        why: String,
        /// When a unit frees again (from now).
        free_in: Duration,
    },
    /// The API did not answer: the node's own budget decides.
    Unreachable {
        /// The failure.
        error: String,
    },
}

/// The annotation that lists the window's containments.
pub fn annotation(config: &ContainConfig) -> String {
    format!("{}containments", config.annotation_prefix)
}

/// Takes one unit for `claim`, now, or says why not. The caller takes for one
/// incident at a time, so that a node never races itself. Taking again for an incident the
/// node listed already (a resumed one) is granted without a second unit.
pub async fn take(
    api: &KubeApi,
    config: &ContainConfig,
    namespace: &str,
    claim: Claim<'_>,
    dry_run: bool,
) -> Take {
    let budget = &config.cluster_budget;
    let leases: Api<Lease> = Api::namespaced(api.client().clone(), namespace);
    let name = budget.lease.as_str();
    let key = annotation(config);
    let now = Timestamp::now();
    let window = SignedDuration::from_secs(budget.window_s as i64);
    let attempts = budget.max.saturating_add(SPARE_ATTEMPTS);
    for attempt in 0..attempts {
        if attempt > 0 {
            // Another node took a unit meanwhile: read again, after a short jittered pause so
            // that the losers of a race do not collide again in step.
            tokio::time::sleep(api.backoff(attempt.min(3))).await;
        }
        let found = match api.call("get lease", || leases.get_opt(name)).await {
            Ok(found) => found,
            Err(err) => {
                return Take::Unreachable {
                    error: err.to_string(),
                };
            }
        };
        let listed = match &found {
            Some(lease) => match listed(lease, &key) {
                Ok(spent) => spent,
                Err(error) => {
                    return Take::Refused {
                        why: format!("Lease {namespace}/{name}: {error}"),
                        free_in: Duration::from_secs(budget.window_s),
                    };
                }
            },
            None => Vec::new(),
        };
        // Each entry with its time, those of the window only.
        let mut spent: Vec<(Timestamp, Spent)> = listed
            .into_iter()
            .filter_map(|s| Some((s.at.parse::<Timestamp>().ok()?, s)))
            .filter(|(at, _)| now.duration_since(*at) < window)
            .collect();
        // Incident ids are unique per node only (a counter and the pid, which another node's
        // daemon may have too).
        if spent
            .iter()
            .any(|(_, s)| s.incident == claim.incident && s.node == claim.node)
        {
            return Take::Granted { spent: spent.len() };
        }
        if spent.len() >= budget.max as usize {
            let oldest = spent.iter().map(|(at, _)| *at).min().unwrap_or(now);
            let free_in = (window - now.duration_since(oldest))
                .try_into()
                .unwrap_or_default();
            let by: Vec<String> = spent
                .iter()
                .map(|(_, s)| format!("{} on {} ({}, {})", s.pod, s.node, s.incident, s.at))
                .collect();
            return Take::Refused {
                why: format!(
                    "cluster budget of {} containments per {}s spent: {}",
                    budget.max,
                    budget.window_s,
                    by.join("; ")
                ),
                free_in,
            };
        }
        spent.push((
            now,
            Spent {
                at: stamp(now),
                node: claim.node.to_owned(),
                pod: claim.pod.to_owned(),
                incident: claim.incident.to_owned(),
            },
        ));
        let count = spent.len();
        let entries: Vec<&Spent> = spent.iter().map(|(_, s)| s).collect();
        let list = serde_json::to_string(&entries).unwrap_or_default();
        let mut lease = found.clone().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(managed_labels()),
                ..ObjectMeta::default()
            },
            spec: None,
        });
        lease
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(key.clone(), list);
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(claim.node.to_owned());
        spec.lease_duration_seconds = i32::try_from(budget.window_s).ok();
        spec.renew_time = Some(MicroTime(now));
        if spec.acquire_time.is_none() {
            spec.acquire_time = Some(MicroTime(now));
        }
        let body = serde_json::to_string(&lease).unwrap_or_default();
        let params = PostParams::default();
        if dry_run {
            let call = match found {
                Some(_) => format!("PUT {}/{name} {body}", leases.resource_url()),
                None => format!("POST {} {body}", leases.resource_url()),
            };
            return Take::WouldGrant { call };
        }
        let written = match found {
            Some(_) => {
                api.call("replace lease", || leases.replace(name, &params, &lease))
                    .await
            }
            None => {
                api.call("create lease", || leases.create(&params, &lease))
                    .await
            }
        };
        match written {
            Ok(_) => return Take::Granted { spent: count },
            // Another node wrote first (or created it first): read again.
            Err(ApiError::Conflict { .. }) => {}
            Err(err) => {
                return Take::Unreachable {
                    error: err.to_string(),
                };
            }
        }
    }
    Take::Refused {
        why: format!(
            "Lease {namespace}/{name} changed under each of {attempts} attempts to take from it"
        ),
        free_in: Duration::from_secs(1),
    }
}

/// The containments a Lease lists.
fn listed(lease: &Lease, key: &str) -> Result<Vec<Spent>, String> {
    match lease.metadata.annotations.as_ref().and_then(|a| a.get(key)) {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|err| {
            format!(
                "annotation {key} is not a list of containments ({err}); delete the Lease to \
                 reset the budget"
            )
        }),
    }
}

/// A time as the Lease lists it.
fn stamp(at: Timestamp) -> String {
    at.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(annotation: Option<&str>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                annotations: annotation
                    .map(|a| [("p/containments".to_owned(), a.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: None,
        }
    }

    #[test]
    fn a_lease_lists_its_containments_or_says_what_is_wrong_with_them() {
        assert_eq!(listed(&lease(None), "p/containments"), Ok(Vec::new()));
        let one = r#"[{"at":"2026-12-06T08:00:00Z","node":"n","pod":"a/b","incident":"i"}]"#;
        assert_eq!(
            listed(&lease(Some(one)), "p/containments").unwrap().len(),
            1
        );
        let err = listed(&lease(Some("{oops")), "p/containments").unwrap_err();
        assert!(
            err.contains("annotation p/containments is not a list"),
            "{err}"
        );
        assert!(err.contains("delete the Lease"), "{err}");
    }

    #[test]
    fn claim_times_are_rfc3339_and_read_back() {
        let at = stamp(Timestamp::now());
        assert!(at.parse::<Timestamp>().is_ok(), "{at}");
        assert!(at.ends_with('Z'), "{at}");
    }
}
