//! The only part of attribution that talks to the Kubernetes API: a kube-rs watcher on the pods
//! of this node (`spec.nodeName=<node>`, never a cluster-wide watch), feeding the shared
//! [`PodIndex`](super::pods::PodIndex).
//!
//! The index is the reflector's store: it keeps the slim [`PodInfo`] rather than whole `Pod`
//! objects (managed fields are dropped before anything else sees them), and a relist
//! (`Init`..`InitDone`) moves pods that disappeared meanwhile to the deleted-pod cache instead of
//! forgetting them.
//!
//! Owners: a pod's controller reference names the owner; a ReplicaSet is followed to its
//! Deployment with one GET (cached per ReplicaSet), falling back to the `pod-template-hash`
//! naming convention (`<deployment>-<hash>`) when the GET fails.

use std::{
    collections::{HashMap, HashSet},
    pin::pin,
    sync::PoisonError,
    time::Instant,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{ContainerStatus, Pod, PodSpec},
};
use kube::{
    Api, Client, ResourceExt as _,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{debug, info, warn};

use super::{
    AttributionConfig,
    node::{self, NoNodeName},
    pods::{ContainerInfo, MAX_PROBE_ARGS, MAX_PROBES, PodInfo, SharedPodIndex},
};
use crate::event::Owner;

/// ReplicaSet owners remembered at most.
const MAX_CACHED_OWNERS: usize = 4096;

/// Failure to reach the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum PodWatchError {
    /// No client configuration (in-cluster service account or kubeconfig) could be loaded.
    #[error("cannot configure a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The node name, needed to scope the watch, is unknown.
    #[error(transparent)]
    NodeName(#[from] NoNodeName),
}

/// The daemon's entry point for the watch: finds the node name (configuration, `NODE_NAME`,
/// host name) and a client (in-cluster or `KUBECONFIG`), then runs [`watch_pods`] until the
/// task is dropped. Only call it when `attribution.kubernetes` is on.
/// `on_synced` runs each time a full list of the node's pods has been applied (readiness).
pub async fn run(
    config: &AttributionConfig,
    index: SharedPodIndex,
    on_synced: impl Fn() + Send,
) -> Result<(), PodWatchError> {
    let node = node::detect(config.node_name.as_deref())?;
    info!(node = %node.name, source = ?node.source, "node identity");
    let client = default_client().await?;
    watch_pods_with(client, &node.name, index, on_synced).await;
    Ok(())
}

/// A client from the in-cluster service account or the kubeconfig (`KUBECONFIG`).
pub async fn default_client() -> Result<Client, PodWatchError> {
    let config = kube::Config::infer()
        .await
        .map_err(|err| PodWatchError::Client(kube::Error::InferConfig(err)))?;
    client_from(config).map_err(PodWatchError::Client)
}

/// A client for `config` without kube's own retry layer: left on, it retries 429 and 503
/// answers inside a single call for up to minutes (15 attempts, backoff to 1,000 s), so a
/// PodDisruptionBudget's refusal of an eviction reached containment as a timeout. The watcher
/// and each containment step have retry policies of their own.
pub fn client_from(mut config: kube::Config) -> Result<Client, kube::Error> {
    config.default_retry = false;
    Client::try_from(config)
}

/// Watches the pods of `node` and keeps `index` up to date; runs until the task is dropped.
/// API errors are logged and retried with backoff; while the watcher runs, the index says it
/// is watching, so events of pods it does not know yet are held briefly.
pub async fn watch_pods(client: Client, node: &str, index: SharedPodIndex) {
    watch_pods_with(client, node, index, || {}).await;
}

/// [`watch_pods`], calling `on_synced` whenever a full list has been applied.
pub async fn watch_pods_with(
    client: Client,
    node: &str,
    index: SharedPodIndex,
    on_synced: impl Fn() + Send,
) {
    let api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut owners = OwnerResolver::new(client);
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|pod| pod.managed_fields_mut().clear());
    let mut stream = pin!(stream);
    set_watching(&index, true);
    info!(node, "watching the pods of this node");
    let mut relisted: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                let owner = owners.resolve(&pod).await;
                if let Some(info) = pod_info(&pod, owner) {
                    relisted.insert(info.uid.clone());
                    write(&index).apply(info);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let mut index = write(&index);
                index.retain_live(&relisted, Instant::now());
                debug!(pods = index.len(), "pod list synced");
                on_synced();
            }
            Ok(watcher::Event::Apply(pod)) => {
                let owner = owners.resolve(&pod).await;
                if let Some(info) = pod_info(&pod, owner) {
                    write(&index).apply(info);
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    write(&index).delete(uid, Instant::now());
                }
            }
            Err(err) => warn!(%err, "pod watch failed; retrying"),
        }
    }
    set_watching(&index, false);
}

fn write(index: &SharedPodIndex) -> std::sync::RwLockWriteGuard<'_, super::pods::PodIndex> {
    index.write().unwrap_or_else(PoisonError::into_inner)
}

fn set_watching(index: &SharedPodIndex, watching: bool) {
    write(index).set_watching(watching);
}

/// The slim form of a pod; `None` without a UID (never from a real API server).
pub fn pod_info(pod: &Pod, owner: Option<Owner>) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone()?;
    let status = pod.status.as_ref();
    let statuses = status
        .into_iter()
        .flat_map(|s| {
            [
                s.container_statuses.as_deref(),
                s.init_container_statuses.as_deref(),
                s.ephemeral_container_statuses.as_deref(),
            ]
        })
        .flatten()
        .flatten();
    let spec = pod.spec.as_ref();
    let containers = statuses
        .filter_map(|status| container_info(status, spec))
        .collect();
    Some(
        PodInfo {
            uid,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            owner,
            service_account: spec.and_then(|s| s.service_account_name.clone()),
            node: spec.and_then(|s| s.node_name.clone()),
            containers,
        }
        .bounded(),
    )
}

fn container_info(status: &ContainerStatus, spec: Option<&PodSpec>) -> Option<ContainerInfo> {
    let (scheme, id) = status.container_id.as_deref()?.split_once("://")?;
    Some(ContainerInfo {
        id: id.to_owned(),
        runtime: super::cgroup_path::Runtime::from_scheme(scheme)
            .as_str()
            .to_owned(),
        name: status.name.clone(),
        image: status.image.clone(),
        probes: spec.map_or_else(Vec::new, |spec| exec_probes(spec, &status.name)),
    })
}

/// The exec probes' commands of the container `name` in `spec` (regular or init containers;
/// ephemeral containers have no probes).
fn exec_probes(spec: &PodSpec, name: &str) -> Vec<Vec<String>> {
    let Some(container) = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
    else {
        return Vec::new();
    };
    [
        &container.liveness_probe,
        &container.readiness_probe,
        &container.startup_probe,
    ]
    .into_iter()
    .flatten()
    .filter_map(|probe| probe.exec.as_ref()?.command.clone())
    .map(|mut command| {
        command.truncate(MAX_PROBE_ARGS);
        command
    })
    .take(MAX_PROBES)
    .collect()
}

/// Top owner of a pod: its controller, a ReplicaSet followed to its Deployment.
struct OwnerResolver {
    client: Client,
    replica_sets: HashMap<(String, String), Owner>,
}

impl OwnerResolver {
    fn new(client: Client) -> Self {
        Self {
            client,
            replica_sets: HashMap::new(),
        }
    }

    async fn resolve(&mut self, pod: &Pod) -> Option<Owner> {
        let refs = pod.metadata.owner_references.as_deref()?;
        let controller = refs
            .iter()
            .find(|r| r.controller == Some(true))
            .or(refs.first())?;
        if controller.kind != "ReplicaSet" {
            return Some(Owner {
                kind: controller.kind.clone(),
                name: controller.name.clone(),
            });
        }
        let namespace = pod.namespace().unwrap_or_default();
        let key = (namespace.clone(), controller.name.clone());
        if let Some(owner) = self.replica_sets.get(&key) {
            return Some(owner.clone());
        }
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        let owner = match api.get_opt(&controller.name).await {
            Ok(Some(rs)) => rs
                .owner_references()
                .iter()
                .find(|r| r.controller == Some(true))
                .map(|r| Owner {
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                })
                .unwrap_or_else(|| Owner {
                    kind: "ReplicaSet".to_owned(),
                    name: controller.name.clone(),
                }),
            Ok(None) => owner_by_template_hash(&controller.name, pod.labels()),
            Err(err) => {
                warn!(%err, replicaset = %controller.name, "cannot get the ReplicaSet; guessing its owner from its name");
                owner_by_template_hash(&controller.name, pod.labels())
            }
        };
        if self.replica_sets.len() >= MAX_CACHED_OWNERS {
            self.replica_sets.clear();
        }
        self.replica_sets.insert(key, owner.clone());
        Some(owner)
    }
}

/// A Deployment's ReplicaSets are named `<deployment>-<pod-template-hash>`.
pub fn owner_by_template_hash(
    replica_set: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Owner {
    let deployment = labels
        .get("pod-template-hash")
        .and_then(|hash| replica_set.strip_suffix(hash.as_str()))
        .and_then(|prefix| prefix.strip_suffix('-'))
        .filter(|name| !name.is_empty());
    match deployment {
        Some(name) => Owner {
            kind: "Deployment".to_owned(),
            name: name.to_owned(),
        },
        None => Owner {
            kind: "ReplicaSet".to_owned(),
            name: replica_set.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_fallback() {
        let labels = [("pod-template-hash".to_owned(), "5d4f8b9c7".to_owned())].into();
        assert_eq!(
            owner_by_template_hash("web-5d4f8b9c7", &labels),
            Owner {
                kind: "Deployment".into(),
                name: "web".into()
            }
        );
        assert_eq!(owner_by_template_hash("other", &labels).kind, "ReplicaSet");
        assert_eq!(
            owner_by_template_hash("-5d4f8b9c7", &labels).kind,
            "ReplicaSet"
        );
        assert_eq!(
            owner_by_template_hash("web-5d4f8b9c7", &Default::default()).kind,
            "ReplicaSet"
        );
    }

    #[test]
    fn pods_become_slim_infos() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "a": "b"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": [{"name": "app",
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}},
                "readinessProbe": {"httpGet": {"port": 80}},
                "startupProbe": {"exec": {"command": ["sh", "-c", "test -f /tmp/up"]}}}]},
            "status": {
                "containerStatuses": [{"name": "app", "image": "nginx:1", "imageID": "", "ready": true,
                    "restartCount": 0, "containerID": "containerd://abc"}],
                "initContainerStatuses": [{"name": "init", "image": "busybox", "imageID": "",
                    "ready": false, "restartCount": 0}]
            }
        }))
        .unwrap();
        let info = pod_info(&pod, None).unwrap();
        assert_eq!(info.namespace, "shop");
        assert_eq!(info.node.as_deref(), Some("n1"));
        assert_eq!(info.service_account.as_deref(), Some("sa"));
        assert_eq!(info.annotations.len(), 1);
        assert_eq!(
            info.containers,
            [ContainerInfo {
                id: "abc".into(),
                runtime: "containerd".into(),
                name: "app".into(),
                image: "nginx:1".into(),
                probes: vec![
                    vec!["cat".into(), "/tmp/healthy".into()],
                    vec!["sh".into(), "-c".into(), "test -f /tmp/up".into()],
                ],
            }]
        );
    }
}
