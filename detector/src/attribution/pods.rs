//! The pod index: pods of this node by UID and by container id, plus a cache of recently
//! deleted pods, so that events from a pod that just died still attribute.
//!
//! Pure: the kube watcher ([`super::pod_watch`]) feeds it [`PodInfo`] values, tests feed it
//! directly. Time is injected.
//!
//! Memory bound: at most [`PodLimits::max_pods`] live pods and [`PodLimits::max_deleted`] deleted
//! ones. A pod keeps at most [`MAX_META_ENTRIES`] labels and as many annotations, each value cut
//! to [`MAX_META_VALUE_BYTES`] (keys are at most 317 bytes by the API's own validation), so one
//! pod's metadata is at most about 45 KiB even when hostile; typical pods take about 1 KiB (250
//! pods measure about 0.3 MiB, see the `memory_for_250_pods_of_50_processes` test). With the
//! defaults (1,024 live, 256 deleted) the worst case is about 56 MiB, the typical case 1.3 MiB.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use crate::event::Owner;

/// Labels (and, separately, annotations) kept per pod at most.
pub const MAX_META_ENTRIES: usize = 32;
/// Longest label or annotation value kept, in bytes; longer ones are cut.
pub const MAX_META_VALUE_BYTES: usize = 256;

/// What the daemon knows about a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations (`kubectl.kubernetes.io/last-applied-configuration` dropped).
    pub annotations: BTreeMap<String, String>,
    /// Top of the owner chain.
    pub owner: Option<Owner>,
    /// Service account.
    pub service_account: Option<String>,
    /// Node.
    pub node: Option<String>,
    /// Containers with a known id (init, regular and ephemeral).
    pub containers: Vec<ContainerInfo>,
}

/// A container of a pod, from its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Container id without the runtime scheme.
    pub id: String,
    /// Runtime from the id's scheme (`containerd`, `cri-o`, `docker`).
    pub runtime: String,
    /// Container name.
    pub name: String,
    /// Image.
    pub image: String,
    /// The commands of its exec probes (liveness, readiness, startup), from the pod's spec;
    /// at most [`MAX_PROBES`], each cut to [`MAX_PROBE_ARGS`] arguments.
    pub probes: Vec<Vec<String>>,
}

/// Exec probes kept per container.
pub const MAX_PROBES: usize = 3;
/// Arguments kept per exec probe command.
pub const MAX_PROBE_ARGS: usize = 16;

impl PodInfo {
    /// The container with this id.
    pub fn container(&self, id: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.id == id)
    }

    /// Cuts metadata to the documented bounds.
    pub fn bounded(mut self) -> Self {
        self.annotations
            .remove("kubectl.kubernetes.io/last-applied-configuration");
        for map in [&mut self.labels, &mut self.annotations] {
            while map.len() > MAX_META_ENTRIES {
                map.pop_last();
            }
            for value in map.values_mut() {
                if value.len() > MAX_META_VALUE_BYTES {
                    let mut end = MAX_META_VALUE_BYTES;
                    while !value.is_char_boundary(end) {
                        end -= 1;
                    }
                    value.truncate(end);
                }
            }
        }
        self
    }

    /// Approximate heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        let map = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| k.capacity() + v.capacity() + 2 * size_of::<String>() + 16)
                .sum::<usize>()
        };
        size_of::<Self>()
            + self.uid.capacity()
            + self.namespace.capacity()
            + self.name.capacity()
            + map(&self.labels)
            + map(&self.annotations)
            + self
                .owner
                .as_ref()
                .map_or(0, |o| o.kind.capacity() + o.name.capacity())
            + self.service_account.as_ref().map_or(0, String::capacity)
            + self.node.as_ref().map_or(0, String::capacity)
            + self
                .containers
                .iter()
                .map(|c| {
                    size_of::<ContainerInfo>()
                        + c.id.capacity()
                        + c.runtime.capacity()
                        + c.name.capacity()
                        + c.image.capacity()
                        + c.probes
                            .iter()
                            .flatten()
                            .map(|a| a.capacity() + size_of::<String>())
                            .sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// Limits of a [`PodIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodLimits {
    /// Live pods at most (the kubelet's default is 110 per node); more are not indexed.
    pub max_pods: usize,
    /// Deleted pods remembered at most; the oldest go first.
    pub max_deleted: usize,
    /// How long a deleted pod is remembered.
    pub deleted_ttl: Duration,
}

impl Default for PodLimits {
    fn default() -> Self {
        Self {
            max_pods: 1024,
            max_deleted: 256,
            deleted_ttl: Duration::from_secs(60),
        }
    }
}

/// A pod found in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The pod.
    pub pod: Arc<PodInfo>,
    /// It was deleted (it comes from the deleted-pod cache).
    pub deleted: bool,
}

/// Pods by UID and container id, live and recently deleted.
#[derive(Debug, Default)]
pub struct PodIndex {
    limits: PodLimits,
    live: HashMap<String, Arc<PodInfo>>,
    by_container: HashMap<String, String>,
    deleted: HashMap<String, (Arc<PodInfo>, Instant)>,
    deleted_order: VecDeque<(Instant, String)>,
    watching: bool,
    overflow: u64,
}

/// The index shared between the watcher task and the pipeline.
pub type SharedPodIndex = Arc<RwLock<PodIndex>>;

impl PodIndex {
    /// An empty index.
    pub fn new(limits: PodLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// An empty index behind a lock, to share.
    pub fn shared(limits: PodLimits) -> SharedPodIndex {
        Arc::new(RwLock::new(Self::new(limits)))
    }

    /// Whether a watcher feeds this index; only then are events of unknown pods held.
    pub fn watching(&self) -> bool {
        self.watching
    }

    /// Set by the watcher when it starts and stops.
    pub fn set_watching(&mut self, watching: bool) {
        self.watching = watching;
    }

    /// Live pods.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether there are no live pods.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Deleted pods remembered.
    pub fn deleted_len(&self) -> usize {
        self.deleted.len()
    }

    /// Pods not indexed because the index was full.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// Adds or replaces a pod.
    pub fn apply(&mut self, pod: PodInfo) {
        let pod = pod.bounded();
        if !self.live.contains_key(&pod.uid) && self.live.len() >= self.limits.max_pods {
            self.overflow += 1;
            return;
        }
        if let Some(old) = self.live.get(&pod.uid) {
            for c in &old.containers {
                self.by_container.remove(&c.id);
            }
        }
        for c in &pod.containers {
            self.by_container.insert(c.id.clone(), pod.uid.clone());
        }
        // A pod that comes back (a relist after a missed delete) is live again.
        self.deleted.remove(&pod.uid);
        self.live.insert(pod.uid.clone(), Arc::new(pod));
    }

    /// Moves a pod to the deleted-pod cache.
    pub fn delete(&mut self, uid: &str, now: Instant) {
        let Some(pod) = self.live.remove(uid) else {
            return;
        };
        for c in &pod.containers {
            if self.by_container.get(&c.id).is_some_and(|u| u == uid) {
                self.by_container.remove(&c.id);
            }
        }
        self.evict(now);
        while self.deleted.len() >= self.limits.max_deleted.max(1) {
            let Some((_, oldest)) = self.deleted_order.pop_front() else {
                break;
            };
            self.deleted.remove(&oldest);
        }
        self.deleted.insert(uid.to_owned(), (pod, now));
        self.deleted_order.push_back((now, uid.to_owned()));
    }

    /// After a full relist: pods not in `uids` were deleted while the watch was down.
    pub fn retain_live(&mut self, uids: &std::collections::HashSet<String>, now: Instant) {
        let gone: Vec<String> = self
            .live
            .keys()
            .filter(|uid| !uids.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.delete(&uid, now);
        }
    }

    /// A pod by UID, live or recently deleted.
    pub fn get(&self, uid: &str, now: Instant) -> Option<Found> {
        if let Some(pod) = self.live.get(uid) {
            return Some(Found {
                pod: pod.clone(),
                deleted: false,
            });
        }
        self.deleted
            .get(uid)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.limits.deleted_ttl)
            .map(|(pod, _)| Found {
                pod: pod.clone(),
                deleted: true,
            })
    }

    /// The pod running a container, live or recently deleted.
    pub fn by_container(&self, id: &str, now: Instant) -> Option<Found> {
        if let Some(uid) = self.by_container.get(id) {
            return self.get(uid, now);
        }
        self.deleted
            .values()
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.limits.deleted_ttl)
            .find(|(pod, _)| pod.container(id).is_some())
            .map(|(pod, _)| Found {
                pod: pod.clone(),
                deleted: true,
            })
    }

    /// Forgets deleted pods older than the TTL.
    pub fn evict(&mut self, now: Instant) {
        while let Some((at, uid)) = self.deleted_order.front() {
            if now.saturating_duration_since(*at) < self.limits.deleted_ttl {
                break;
            }
            if self.deleted.get(uid).is_some_and(|(_, when)| when == at) {
                self.deleted.remove(uid);
            }
            self.deleted_order.pop_front();
        }
    }

    /// Approximate heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        let key = size_of::<String>() + 8;
        self.live.capacity() * (key + size_of::<Arc<PodInfo>>())
            + self
                .live
                .values()
                .map(|p| p.approx_bytes() + 16)
                .sum::<usize>()
            + self.by_container.capacity() * 2 * key
            + self
                .by_container
                .iter()
                .map(|(k, v)| k.capacity() + v.capacity())
                .sum::<usize>()
            + self.deleted.capacity() * (key + size_of::<(Arc<PodInfo>, Instant)>())
            + self
                .deleted
                .values()
                .map(|(p, _)| p.approx_bytes() + 16)
                .sum::<usize>()
            + self.deleted_order.capacity() * size_of::<(Instant, String)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pod(uid: &str, container: &str) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            namespace: "default".into(),
            name: format!("pod-{uid}"),
            containers: vec![ContainerInfo {
                probes: Vec::new(),
                id: container.into(),
                runtime: "containerd".into(),
                name: "app".into(),
                image: "nginx:1".into(),
            }],
            ..PodInfo::default()
        }
    }

    #[test]
    fn by_uid_and_container_then_deleted_within_ttl() {
        let t0 = Instant::now();
        let limits = PodLimits::default();
        let mut index = PodIndex::new(limits);
        index.apply(pod("u1", "c1"));
        assert_eq!(index.get("u1", t0).unwrap().pod.name, "pod-u1");
        assert_eq!(index.by_container("c1", t0).unwrap().pod.uid, "u1");
        index.delete("u1", t0);
        assert_eq!(index.len(), 0);
        let found = index.get("u1", t0 + Duration::from_secs(1)).unwrap();
        assert!(found.deleted);
        assert_eq!(
            index
                .by_container("c1", t0 + Duration::from_secs(1))
                .unwrap()
                .pod
                .uid,
            "u1"
        );
        assert!(index.get("u1", t0 + limits.deleted_ttl).is_none());
        index.evict(t0 + limits.deleted_ttl);
        assert_eq!(index.deleted_len(), 0);
    }

    #[test]
    fn updates_move_container_ids_and_relists_delete_missing_pods() {
        let t0 = Instant::now();
        let mut index = PodIndex::new(PodLimits::default());
        index.apply(pod("u1", "c1"));
        index.apply(pod("u1", "c2"));
        assert!(index.by_container("c1", t0).is_none());
        assert!(index.by_container("c2", t0).is_some());
        index.apply(pod("u2", "c3"));
        index.retain_live(&["u2".to_owned()].into_iter().collect(), t0);
        assert!(index.get("u1", t0).unwrap().deleted);
        assert!(!index.get("u2", t0).unwrap().deleted);
    }

    #[test]
    fn limits_hold() {
        let t0 = Instant::now();
        let mut index = PodIndex::new(PodLimits {
            max_pods: 2,
            max_deleted: 1,
            deleted_ttl: Duration::from_secs(60),
        });
        for uid in ["a", "b", "c"] {
            index.apply(pod(uid, uid));
        }
        assert_eq!((index.len(), index.overflow()), (2, 1));
        index.delete("a", t0);
        index.delete("b", t0);
        assert_eq!(index.deleted_len(), 1);
        assert!(index.get("a", t0).is_none());
        let mut big = pod("x", "x");
        big.annotations.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        for i in 0..100 {
            big.labels
                .insert(format!("k{i:03}"), "é".repeat(MAX_META_VALUE_BYTES));
        }
        let big = big.bounded();
        assert!(big.annotations.is_empty());
        assert_eq!(big.labels.len(), MAX_META_ENTRIES);
        assert!(big.labels.values().all(|v| v.len() <= MAX_META_VALUE_BYTES));
    }
}
