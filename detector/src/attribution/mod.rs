//! Attribution: every event learns its container, its pod and the chain of parent executables.
//!
//! - [`cgroup_path`]: pure parser from a cgroup path to pod UID, QoS class and container id.
//! - [`cgroup_ids`]: cgroup id (cgroup2 inode number) to path, by walking the cgroup2 mount.
//! - [`process_table`]: parent chains from exec/exit events and a `/proc` scan at start.
//! - [`lineage`]: the runtime's processes and the workload's, and how each was started.
//! - [`pods`]: the pod index by UID and container id, with the deleted-pod cache.
//! - [`pod_watch`]: the only Kubernetes-specific code; a `spec.nodeName` watch feeding [`pods`].
//! - [`node`]: which node this is.
//!
//! [`Enricher`] ties them together with a sans-IO core: [`Enricher::enrich`] takes an event and
//! `now` and either returns it enriched or holds it (its pod is not known yet);
//! [`Enricher::tick`] releases held events once their pod is known, or after the hold bound
//! with `pod.resolved: false`. With no cluster (no watcher feeding the index) nothing is held:
//! events carry what the cgroup path and the process table give.
//!
//! Wiring it into the pipeline (sync, on the batch consumer's side):
//!
//! ```no_run
//! # use detector::attribution::{AttributionConfig, Enricher, pods::PodIndex};
//! # fn wire(batches: &mut tokio::sync::mpsc::Receiver<Vec<detector::event::Event>>) {
//! let config = AttributionConfig::default();
//! let index = PodIndex::shared(config.pod_limits());
//! let mut enricher = Enricher::for_node(&config, std::path::Path::new("/sys/fs/cgroup"), index.clone());
//! // With a cluster: tokio::spawn(detector::attribution::pod_watch::watch_pods(client, &node, index));
//! while let Some(batch) = batches.blocking_recv() {
//!     let out = enricher.process(batch, std::time::Instant::now());
//!     // ... write `out`; call `enricher.tick(now)` on a timer too, so held events leave on time.
//! }
//! # }
//! ```

pub mod cgroup_ids;
pub mod cgroup_path;
pub mod lineage;
pub mod node;
pub mod pod_watch;
pub mod pods;
pub mod process_table;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::Path,
    sync::{Arc, PoisonError},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use self::{
    cgroup_ids::CgroupPaths,
    cgroup_path::{CgroupIdentity, Runtime},
    lineage::Place,
    pods::{PodLimits, SharedPodIndex},
    process_table::{ProcessLimits, ProcessTable, ScannedProcess},
};
use crate::{
    config::Problem,
    event::{Body, Container, Event, Pod, Syscall, SyscallOperation},
};

/// Attribution settings (the `attribution` section of the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributionConfig {
    /// This node's name; else the `NODE_NAME` environment variable, else the host name.
    pub node_name: Option<String>,
    /// Watch this node's pods through the Kubernetes API (in-cluster service account or
    /// `KUBECONFIG`). Off: standalone, cgroup-derived pod UID and container id only.
    pub kubernetes: bool,
    /// How long an event of a pod the API has not shown yet is held, in milliseconds.
    pub hold_ms: u64,
    /// Events held at most; beyond it the oldest leave unresolved.
    pub max_held_events: usize,
    /// How long deleted pods still attribute events, in milliseconds.
    pub deleted_pod_ttl_ms: u64,
    /// Live pods indexed at most.
    pub max_pods: usize,
    /// Deleted pods remembered at most.
    pub max_deleted_pods: usize,
    /// Processes tracked at most.
    pub max_processes: usize,
    /// How long exited processes stay in the table, in milliseconds.
    pub exited_process_grace_ms: u64,
    /// Ancestors per event at most.
    pub max_ancestry: usize,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        let pods = PodLimits::default();
        let processes = ProcessLimits::default();
        Self {
            node_name: None,
            kubernetes: false,
            // A pod shows up in the watch within about a second of its first container start.
            hold_ms: 2000,
            max_held_events: 16_384,
            deleted_pod_ttl_ms: pods.deleted_ttl.as_millis() as u64,
            max_pods: pods.max_pods,
            max_deleted_pods: pods.max_deleted,
            max_processes: processes.capacity,
            exited_process_grace_ms: processes.exited_grace.as_millis() as u64,
            max_ancestry: processes.max_depth,
        }
    }
}

impl AttributionConfig {
    /// Every problem, located under `attribution.`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("max_held_events", self.max_held_events),
            ("max_pods", self.max_pods),
            ("max_deleted_pods", self.max_deleted_pods),
            ("max_processes", self.max_processes),
        ] {
            if value == 0 {
                problems.push(Problem {
                    at: format!("attribution.{key}"),
                    message: "must be greater than 0".into(),
                });
            }
        }
        if self
            .node_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            problems.push(Problem {
                at: "attribution.node_name".into(),
                message: "is blank; leave it out to use NODE_NAME or the host name".into(),
            });
        }
        problems
    }

    /// The pod index limits.
    pub fn pod_limits(&self) -> PodLimits {
        PodLimits {
            max_pods: self.max_pods,
            max_deleted: self.max_deleted_pods,
            deleted_ttl: Duration::from_millis(self.deleted_pod_ttl_ms),
        }
    }

    /// The process table limits.
    pub fn process_limits(&self) -> ProcessLimits {
        ProcessLimits {
            capacity: self.max_processes,
            exited_grace: Duration::from_millis(self.exited_process_grace_ms),
            max_depth: self.max_ancestry,
        }
    }
}

/// Resolves cgroup ids to cgroup paths (relative to the cgroup2 root).
pub trait CgroupLookup: Send {
    /// The path of a cgroup, `None` when it does not exist (any more).
    fn path(&mut self, cgroup_id: u64, now: Instant) -> Option<Arc<str>>;
}

impl CgroupLookup for HashMap<u64, String> {
    fn path(&mut self, cgroup_id: u64, _now: Instant) -> Option<Arc<str>> {
        self.get(&cgroup_id).map(|p| Arc::from(p.as_str()))
    }
}

/// cgroup identities cached at most (cleared when full).
const MAX_IDENTITIES: usize = 16_384;

/// What the enricher counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnricherStats {
    /// Events that were held at least once.
    pub held: u64,
    /// Events released with `pod.resolved: false`.
    pub unresolved: u64,
    /// Events that got pod metadata from the index.
    pub resolved: u64,
}

struct Held {
    event: Event,
    since: Instant,
    uid: String,
}

/// Attribution of events: container and pod from the cgroup, pod metadata from the index,
/// ancestry from the process table. See the module documentation.
///
/// Memory bound: the process table, the pod index and the cgroup path cache state theirs;
/// besides them at most `max_held_events` held events and [`MAX_IDENTITIES`] parsed cgroup
/// identities (about 200 bytes each).
pub struct Enricher {
    cgroups: Box<dyn CgroupLookup>,
    identities: HashMap<u64, Option<Arc<CgroupIdentity>>>,
    processes: ProcessTable,
    pods: SharedPodIndex,
    held: VecDeque<Held>,
    held_uids: HashMap<String, usize>,
    hold: Duration,
    max_held: usize,
    stats: EnricherStats,
}

impl Enricher {
    /// An enricher over any cgroup lookup; the pure core, used by tests.
    pub fn new(
        cgroups: Box<dyn CgroupLookup>,
        pods: SharedPodIndex,
        config: &AttributionConfig,
    ) -> Self {
        Self {
            cgroups,
            identities: HashMap::new(),
            processes: ProcessTable::new(config.process_limits()),
            pods,
            held: VecDeque::new(),
            held_uids: HashMap::new(),
            hold: Duration::from_millis(config.hold_ms),
            max_held: config.max_held_events.max(1),
            stats: EnricherStats::default(),
        }
    }

    /// The daemon's enricher: cgroup ids resolved under the cgroup2 mount `cgroup2`, the process
    /// table seeded from `/proc`.
    pub fn for_node(config: &AttributionConfig, cgroup2: &Path, pods: SharedPodIndex) -> Self {
        let mut enricher = Self::new(Box::new(CgroupPaths::new(cgroup2)), pods, config);
        let scanned = process_table::scan_proc(Path::new("/proc"));
        let cgroup_id = |path: &str| {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(cgroup2.join(path.trim_start_matches('/')))
                .map(|m| m.ino())
                .ok()
        };
        let ids: Vec<Option<u64>> = scanned
            .iter()
            .map(|p| p.cgroup_path.as_deref().and_then(cgroup_id))
            .collect();
        enricher.seed_processes(scanned.into_iter().zip(ids), Instant::now());
        enricher
    }

    /// Adds processes found by a `/proc` scan, each with its cgroup id when known; those in
    /// containers get their roles from the shape of their container's process tree.
    pub fn seed_processes(
        &mut self,
        scanned: impl IntoIterator<Item = (ScannedProcess, Option<u64>)>,
        now: Instant,
    ) {
        let scanned: Vec<_> = scanned.into_iter().collect();
        let mut in_containers = Vec::new();
        for (p, cgroup) in &scanned {
            self.processes.exec(p.pid, p.ppid, &p.exe);
            if let Some(uid) = p.uid {
                self.processes.swap_uid(p.pid, uid);
            }
            let Some(cgroup) = *cgroup else { continue };
            let container = self
                .identity(cgroup, now)
                .is_some_and(|i| i.container.is_some() || i.pod.is_some());
            if container {
                in_containers.push(lineage::Found {
                    pid: p.pid,
                    ppid: p.ppid,
                    cgroup,
                    comm: &p.comm,
                    ns_pid: p.ns_pid,
                    start: p.start_ticks,
                });
            }
        }
        let roles = lineage::seed_roles(&in_containers);
        for (p, cgroup) in &scanned {
            if let (Some(&(role, leader)), Some(cgroup)) = (roles.get(&p.pid), *cgroup) {
                let place = Place {
                    cgroup,
                    container: true,
                    ns_pid: p.ns_pid,
                    tty: p.tty,
                    probe: false,
                    parent_cgroup: None,
                };
                self.processes
                    .seed_in_container(p.pid, role, leader, &place);
            }
        }
    }

    /// The path of a cgroup relative to the cgroup2 mount, `None` when it is gone.
    pub fn cgroup_path(&mut self, cgroup_id: u64, now: Instant) -> Option<Arc<str>> {
        self.cgroups.path(cgroup_id, now)
    }

    /// The process table.
    pub fn processes(&self) -> &ProcessTable {
        &self.processes
    }

    /// What was counted so far.
    pub fn stats(&self) -> EnricherStats {
        self.stats
    }

    /// Events held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Approximate heap bytes of the process table, the pod index, held events and the cgroup
    /// identity cache (the cgroup path cache reports its own).
    pub fn approx_bytes(&self) -> usize {
        let pods = self
            .pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .approx_bytes();
        let identity = size_of::<u64>() + size_of::<Option<Arc<CgroupIdentity>>>() + 1;
        self.processes.approx_bytes()
            + pods
            + self.identities.capacity() * identity
            + self.identities.len() * (size_of::<CgroupIdentity>() + 160)
            + self.held.capacity() * size_of::<Held>()
    }

    /// Enriches one event, or holds it (returns `None`) until its pod is known.
    pub fn enrich(&mut self, mut event: Event, now: Instant) -> Option<Event> {
        let identity = event.cgroup_id.and_then(|id| self.identity(id, now));
        self.track_process(&mut event, identity.as_deref(), now);
        let Some(identity) = identity else {
            return Some(event);
        };
        event.container = identity.container.as_ref().map(|c| Container {
            id: c.id.clone(),
            runtime: c.runtime.as_str().to_owned(),
            name: None,
            image: None,
        });
        let Some(pod) = &identity.pod else {
            return Some(event);
        };
        event.pod = Some(Pod {
            uid: pod.uid.clone(),
            qos: Some(pod.qos.as_str().to_owned()),
            resolved: false,
            ..Pod::default()
        });
        let uid = pod.uid.clone();
        let (complete, watching) = {
            let index = self.pods.read().unwrap_or_else(PoisonError::into_inner);
            (fill(&mut event, &index, now, false), index.watching())
        };
        // Later events of a pod with held events wait behind them, to keep their order.
        let behind = self.held_uids.contains_key(&uid);
        if complete && !behind {
            self.stats.resolved += 1;
            return Some(event);
        }
        if !watching && !behind {
            let index = self.pods.read().unwrap_or_else(PoisonError::into_inner);
            fill(&mut event, &index, now, true);
            drop(index);
            if event.pod.as_ref().is_some_and(|p| p.resolved) {
                self.stats.resolved += 1;
            } else {
                self.stats.unresolved += 1;
            }
            return Some(event);
        }
        self.stats.held += 1;
        *self.held_uids.entry(uid.clone()).or_default() += 1;
        self.held.push_back(Held {
            event,
            since: now,
            uid,
        });
        None
    }

    /// Releases held events whose pod became known, and those held past the bound (marked
    /// `resolved: false`); evicts exited processes. Call it on every batch and on a timer.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        self.processes.evict(now);
        let mut out = Vec::new();
        if self.held.is_empty() {
            return out;
        }
        let index = self.pods.read().unwrap_or_else(PoisonError::into_inner);
        let mut blocked: HashSet<String> = HashSet::new();
        let mut keep = VecDeque::with_capacity(self.held.len());
        let overflow = self.held.len().saturating_sub(self.max_held);
        for (i, mut held) in std::mem::take(&mut self.held).into_iter().enumerate() {
            if blocked.contains(&held.uid) {
                keep.push_back(held);
                continue;
            }
            let last_chance =
                i < overflow || now.saturating_duration_since(held.since) >= self.hold;
            let complete = fill(&mut held.event, &index, now, last_chance);
            if complete || last_chance {
                if held.event.pod.as_ref().is_some_and(|p| p.resolved) {
                    self.stats.resolved += 1;
                } else {
                    self.stats.unresolved += 1;
                }
                if let Some(n) = self.held_uids.get_mut(&held.uid) {
                    *n -= 1;
                    if *n == 0 {
                        self.held_uids.remove(&held.uid);
                    }
                }
                out.push(held.event);
            } else {
                blocked.insert(held.uid.clone());
                keep.push_back(held);
            }
        }
        self.held = keep;
        out
    }

    /// [`Self::tick`], then [`Self::enrich`] on every event of a batch: what is ready, in order.
    pub fn process(&mut self, batch: Vec<Event>, now: Instant) -> Vec<Event> {
        let mut out = self.tick(now);
        out.extend(batch.into_iter().filter_map(|e| self.enrich(e, now)));
        if self.held.len() > self.max_held {
            out.extend(self.tick(now));
        }
        out
    }

    /// Releases every held event as it is, for shutdown.
    pub fn drain(&mut self) -> Vec<Event> {
        let index = self.pods.read().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let out: Vec<Event> = std::mem::take(&mut self.held)
            .into_iter()
            .map(|mut h| {
                fill(&mut h.event, &index, now, true);
                h.event
            })
            .collect();
        self.held_uids.clear();
        out
    }

    fn track_process(
        &mut self,
        event: &mut Event,
        identity: Option<&CgroupIdentity>,
        now: Instant,
    ) {
        let (Some(pid), Some(ppid)) = (event.process.pid, event.process.ppid) else {
            return;
        };
        let mut place = Place {
            cgroup: event.cgroup_id.unwrap_or(0),
            container: identity.is_some_and(|i| i.container.is_some() || i.pod.is_some()),
            ns_pid: event.process.ns_pid,
            tty: false,
            probe: false,
            parent_cgroup: None,
        };
        event.lineage = match &event.body {
            Body::Exec(exec) => {
                place.tty = exec.tty;
                place.parent_cgroup = exec.parent_cgroup_id;
                place.probe = identity
                    .and_then(|i| i.container.as_ref())
                    .is_some_and(|c| self.is_exec_probe(&c.id, &exec.argv, now));
                self.processes
                    .exec_at(pid, ppid, &exec.filename, &place, &exec.argv)
            }
            _ => self.processes.observe_at(
                pid,
                ppid,
                event.process.comm.as_deref().unwrap_or("?"),
                &place,
            ),
        };
        if let Some(uid) = event.process.uid {
            let before = self.processes.swap_uid(pid, uid);
            if let Body::Syscall(call) = &mut event.body {
                tag_from_non_root(call, before, uid);
            }
        }
        event.ancestry = self.processes.ancestry(ppid);
        if matches!(event.body, Body::Exit(_)) {
            self.processes.exit(pid, now);
        }
    }

    /// `argv` is the command of one of the container's exec probes, as its pod's spec says.
    fn is_exec_probe(&self, container_id: &str, argv: &[String], now: Instant) -> bool {
        let index = self.pods.read().unwrap_or_else(PoisonError::into_inner);
        index.by_container(container_id, now).is_some_and(|found| {
            found
                .pod
                .container(container_id)
                .is_some_and(|c| c.probes.iter().any(|probe| probe == argv))
        })
    }

    fn identity(&mut self, cgroup_id: u64, now: Instant) -> Option<Arc<CgroupIdentity>> {
        if let Some(found) = self.identities.get(&cgroup_id) {
            return found.clone();
        }
        // An unknown id is not cached here: the lookup remembers misses itself, and the cgroup
        // may show up later.
        let path = self.cgroups.path(cgroup_id, now)?;
        let identity = cgroup_path::parse(&path).ok().map(Arc::new);
        if self.identities.len() >= MAX_IDENTITIES {
            self.identities.clear();
        }
        self.identities.insert(cgroup_id, identity.clone());
        identity
    }
}

/// Adds `from_non_root` to a setuid call (to uid 0, as the kernel reports only those) when the
/// caller's real uid before the call is known and not 0: `before`, the table's as of the
/// process's previous event, or, for a refused call (which changed nothing), `after`, the
/// event's own.
fn tag_from_non_root(call: &mut Syscall, before: Option<u32>, after: u32) {
    const TAG: &str = "from_non_root";
    if call.op != SyscallOperation::Setuid || call.has_tag(TAG) {
        return;
    }
    let before = if call.result < 0 { Some(after) } else { before };
    if before.is_some_and(|uid| uid != 0) {
        // Before `refused`, which closes the tags of every call.
        let at = call
            .tags
            .iter()
            .position(|t| t == "refused")
            .unwrap_or(call.tags.len());
        call.tags.insert(at, TAG.to_owned());
    }
}

/// Fills pod and container metadata from the index. True when nothing is missing: the pod is
/// known and so is the container (when the event has one). With `last_chance`, fills what there
/// is (a pod known without this container's status still counts as resolved).
fn fill(event: &mut Event, index: &pods::PodIndex, now: Instant, last_chance: bool) -> bool {
    let Some(pod) = event.pod.as_mut() else {
        return true;
    };
    let Some(found) = index.get(&pod.uid, now) else {
        return false;
    };
    let info = &found.pod;
    let container = event.container.as_mut().map(|c| (info.container(&c.id), c));
    if let Some((None, _)) = container
        && !last_chance
    {
        return false;
    }
    pod.namespace = Some(info.namespace.clone());
    pod.name = Some(info.name.clone());
    pod.labels = info.labels.clone();
    pod.owner = info.owner.clone();
    pod.node = info.node.clone();
    pod.resolved = true;
    if let Some((Some(known), container)) = container {
        container.name = Some(known.name.clone());
        container.image = Some(known.image.clone());
        if container.runtime == Runtime::Unknown.as_str() {
            container.runtime = known.runtime.clone();
        }
    }
    true
}

#[cfg(test)]
mod tests;
