//! The dispatcher: the one place that decides whether a verdict is acted on (guardrails,
//! budget, warm-up, idempotency), whether for real or as a dry run, and in which order the
//! steps run.
//!
//! [`Guard`] is the sans-IO part: time is passed in, so it is tested without a clock.
//! [`Containment::start`] runs the rest on a thread of its own: the kernel block is applied in
//! the dispatcher's loop as soon as a verdict arrives, the API steps of each incident run as a
//! task of their own, and every entry goes through a group-committing journal writer.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use tokio::sync::{mpsc, oneshot};

use super::{
    ContainConfig, EventTarget, Incident, NetworkBlock, SharedBlock, StepCtx, StepOutcome,
    actions::{kernel_block, playbook, propose, read_pod},
    budget,
    config::{LabelTerm, Mode},
    journal::{self, Entry, EntryKind, IncidentRecord, Journal, JournalError},
    kube::{EventObject, KubeApi},
    release::{self, ReleaseError},
};
use crate::{
    metrics::Metrics,
    score::{Decision, Subject, Verdict},
};

/// How often proposals are checked for a person's approval on the pod, and unconfirmed
/// incidents for their expiry.
const REVIEW_EVERY: Duration = Duration::from_secs(2);

/// The cluster budget's step name in the journal.
const CLUSTER_BUDGET: &str = "cluster_budget";

/// Verdicts waiting for the dispatcher at most; beyond it they are dropped and counted.
const QUEUE: usize = 1024;

/// Why a verdict was not acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `contain.enabled` is off.
    Disabled,
    /// Within `warmup_s` of the start.
    WarmUp,
    /// The daemon's own pod.
    OwnPod,
    /// A protected namespace.
    ProtectedNamespace(String),
    /// A pod matching a protected label selector.
    ProtectedLabel(String),
    /// This containment would exceed the budget: the dispatcher disarms.
    BudgetExhausted {
        /// The budget.
        max: u32,
        /// Its window, in seconds.
        window_s: u64,
    },
    /// Disarmed by an exhausted budget earlier.
    Disarmed,
    /// The cluster-wide budget is spent, as the Lease said for an earlier verdict: refused on
    /// the spot until a unit frees.
    ClusterBudget {
        /// The budget.
        max: u32,
        /// Its window, in seconds.
        window_s: u64,
    },
}

impl Refusal {
    /// The reason as a metric label (one of [`crate::metrics::REFUSAL_REASONS`]).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::WarmUp => "warm_up",
            Self::OwnPod => "own_pod",
            Self::ProtectedNamespace(_) => "protected_namespace",
            Self::ProtectedLabel(_) => "protected_label",
            Self::BudgetExhausted { .. } => "budget_exhausted",
            Self::Disarmed => "disarmed",
            Self::ClusterBudget { .. } => "cluster_budget",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => write!(f, "containment is disabled"),
            Self::WarmUp => write!(f, "warming up"),
            Self::OwnPod => write!(f, "the daemon's own pod"),
            Self::ProtectedNamespace(ns) => write!(f, "protected namespace {ns}"),
            Self::ProtectedLabel(term) => write!(f, "protected label {term}"),
            Self::BudgetExhausted { max, window_s } => write!(
                f,
                "budget of {max} containments per {window_s}s exhausted: disarmed until restart"
            ),
            Self::Disarmed => write!(f, "disarmed (budget exhausted)"),
            Self::ClusterBudget { max, window_s } => write!(
                f,
                "the cluster budget of {max} containments per {window_s}s is spent"
            ),
        }
    }
}

/// What the guard says about a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Contain.
    Contain,
    /// An incident is already open for this pod: no duplicate work.
    Duplicate(String),
    /// Refused, journaled as such.
    Refuse(Refusal),
}

/// What became of a contain verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Acted on: the incident's id.
    Incident(String),
    /// Not acted on: an incident is open already, or the refusal is for good (protected,
    /// disabled, disarmed).
    Ignored,
    /// Refused for a reason that lapses (the warm-up): the pod is to be decided again after
    /// `after`, and contained then if it is still above the threshold.
    Deferred {
        /// The reason, as journaled.
        why: String,
        /// When it lapses.
        after: Duration,
    },
}

impl Taken {
    /// The incident's id, when one was opened.
    pub fn incident(&self) -> Option<&str> {
        match self {
            Self::Incident(id) => Some(id),
            _ => None,
        }
    }
}

/// The daemon's own pod, from the downward API (`POD_NAMESPACE`, `POD_NAME`, `POD_UID`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnPod {
    /// Namespace (protected as a whole).
    pub namespace: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// UID.
    pub uid: Option<String>,
}

impl OwnPod {
    /// From the environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            namespace: var("POD_NAMESPACE"),
            name: var("POD_NAME"),
            uid: var("POD_UID"),
        }
    }
}

/// The guardrails, sans-IO: times are milliseconds on any monotonic clock.
#[derive(Debug)]
pub struct Guard {
    enabled: bool,
    protected_namespaces: BTreeSet<String>,
    protected_labels: Vec<(String, LabelTerm)>,
    own: OwnPod,
    warmup_until_ms: u64,
    max: u32,
    window_ms: u64,
    /// When each containment of the window was admitted, and its incident.
    recent: VecDeque<(u64, String)>,
    armed: bool,
    active: HashMap<String, String>,
    cluster: (u32, u64),
    /// Until when the cluster budget is known to be spent.
    cluster_spent_until_ms: u64,
}

impl Guard {
    /// A guard for this configuration, started at `now_ms`.
    pub fn new(config: &ContainConfig, own: OwnPod, now_ms: u64) -> Self {
        let mut protected_namespaces: BTreeSet<String> =
            config.protected_namespaces.iter().cloned().collect();
        protected_namespaces.extend(own.namespace.clone());
        Self {
            enabled: config.enabled,
            protected_namespaces,
            protected_labels: config
                .protected_labels
                .iter()
                .filter_map(|t| Some((t.clone(), LabelTerm::parse(t).ok()?)))
                .collect(),
            own,
            warmup_until_ms: now_ms + config.warmup_s * 1000,
            max: config.budget.max,
            window_ms: config.budget.window_s * 1000,
            recent: VecDeque::new(),
            armed: true,
            active: HashMap::new(),
            cluster: (config.cluster_budget.max, config.cluster_budget.window_s),
            cluster_spent_until_ms: 0,
        }
    }

    /// The protected namespaces, the daemon's own included.
    pub fn protected_namespaces(&self) -> &BTreeSet<String> {
        &self.protected_namespaces
    }

    /// Whether the budget has disarmed the dispatcher.
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// How long the warm-up lasts from `now_ms`.
    pub fn warmup_left(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.warmup_until_ms.saturating_sub(now_ms))
    }

    /// The guard's key for a subject.
    pub fn key(subject: &Subject) -> String {
        subject
            .pod_uid
            .as_ref()
            .map_or_else(|| subject.key.clone(), |uid| format!("pod:{uid}"))
    }

    /// Whether the pod's labels are protected.
    pub fn protected_by_labels(&self, labels: &BTreeMap<String, String>) -> Option<Refusal> {
        self.protected_labels
            .iter()
            .find(|(_, term)| term.matches(labels))
            .map(|(text, _)| Refusal::ProtectedLabel(text.clone()))
    }

    /// Decides about a verdict; on [`Admission::Contain`] the containment counts against the
    /// budget and the pod is active until [`Guard::closed`].
    pub fn admit(
        &mut self,
        subject: &Subject,
        labels: Option<&BTreeMap<String, String>>,
        now_ms: u64,
        incident: &str,
    ) -> Admission {
        if !self.enabled {
            return Admission::Refuse(Refusal::Disabled);
        }
        let own = (self.own.uid.is_some() && subject.pod_uid == self.own.uid)
            || (self.own.name.is_some()
                && subject.pod == self.own.name
                && subject.namespace == self.own.namespace);
        if own {
            return Admission::Refuse(Refusal::OwnPod);
        }
        if let Some(ns) = &subject.namespace
            && self.protected_namespaces.contains(ns)
        {
            return Admission::Refuse(Refusal::ProtectedNamespace(ns.clone()));
        }
        if let Some(refusal) = labels.and_then(|l| self.protected_by_labels(l)) {
            return Admission::Refuse(refusal);
        }
        let key = Self::key(subject);
        if let Some(open) = self.active.get(&key) {
            return Admission::Duplicate(open.clone());
        }
        if now_ms < self.warmup_until_ms {
            return Admission::Refuse(Refusal::WarmUp);
        }
        if !self.armed {
            return Admission::Refuse(Refusal::Disarmed);
        }
        if now_ms < self.cluster_spent_until_ms {
            return Admission::Refuse(Refusal::ClusterBudget {
                max: self.cluster.0,
                window_s: self.cluster.1,
            });
        }
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) >= self.window_ms)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max as usize {
            self.armed = false;
            return Admission::Refuse(Refusal::BudgetExhausted {
                max: self.max,
                window_s: self.window_ms / 1000,
            });
        }
        self.recent.push_back((now_ms, incident.to_owned()));
        self.active.insert(key, incident.to_owned());
        Admission::Contain
    }

    /// How long verdicts are still refused on the spot for the spent cluster budget.
    pub fn cluster_spent_for(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.cluster_spent_until_ms.saturating_sub(now_ms))
    }

    /// The cluster budget refused incident `incident` of `subject`: the pod may be contained
    /// again later, the incident's unit of this node's budget is given back, and verdicts are
    /// refused on the spot for `free_in` (until the Lease has a unit free).
    pub fn refused_by_cluster(
        &mut self,
        subject: &Subject,
        incident: &str,
        now_ms: u64,
        free_in: Duration,
    ) {
        self.active.remove(&Self::key(subject));
        self.recent.retain(|(_, id)| id != incident);
        self.cluster_spent_until_ms = self
            .cluster_spent_until_ms
            .max(now_ms + free_in.as_millis() as u64);
    }

    /// Marks a pod active (incidents resumed at start).
    pub fn resumed(&mut self, subject: &Subject, incident: &str) {
        self.active.insert(Self::key(subject), incident.to_owned());
    }

    /// The pod's incident is released (or rolled back): a new verdict may contain it again.
    pub fn closed(&mut self, subject: &Subject) {
        self.active.remove(&Self::key(subject));
    }
}

/// Failure to start containment.
#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    /// The journal cannot be opened or read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The dispatcher's thread or runtime cannot start.
    #[error("cannot start the containment dispatcher: {0}")]
    Start(#[source] std::io::Error),
}

/// An Event the dispatcher raises outside a playbook step.
struct Alert {
    /// `Pod` or `Node`.
    kind: &'static str,
    name: String,
    namespace: Option<String>,
    reason: &'static str,
    message: String,
    /// Makes the Event's name unique.
    unique: String,
}

enum Command {
    /// Admitted and kernel-blocked on the caller's thread: run the other steps.
    Steps {
        incident: Box<Incident>,
        kernel: Option<StepOutcome>,
    },
    /// A Kubernetes Event about a refusal (a disarmed node, a spent cluster budget).
    Event(Box<Alert>),
    Release {
        id: String,
        reply: oneshot::Sender<Result<(), ReleaseError>>,
    },
    Flush(oneshot::Sender<()>),
    /// Stop: wait for the running incidents up to `grace`, then interrupt them (journaled, so
    /// that the next start resumes them).
    Shutdown {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
}

/// Entry point.
pub struct Containment;

/// Receives every journal entry the daemon records, or picks up from a `detector release`, with
/// the subject of its incident: how containment actions reach the SIEM exporter. Called on the
/// dispatcher's threads and the caller's (the kernel block): it must not block.
pub type EntrySink = Box<dyn Fn(&Entry, Option<&Subject>) + Send + Sync>;

/// The handle the daemon keeps: non-blocking verdict intake, release, and shutdown on drop.
pub struct ContainmentHandle {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
    journal: PathBuf,
}

/// What the incident tasks share.
struct Shared {
    config: ContainConfig,
    api: Option<KubeApi>,
    block: SharedBlock,
    cgroup_root: Option<PathBuf>,
    guard: Mutex<Guard>,
    /// Every incident of the journal, with each entry folded in as it is recorded or read.
    incidents: Mutex<BTreeMap<String, IncidentRecord>>,
    /// Entries recorded since start, for the sink; kept only until the sink is set.
    backlog: Mutex<Vec<Entry>>,
    writer: std::sync::mpsc::Sender<WriterMsg>,
    node: String,
    started: Instant,
    counter: AtomicU64,
    metrics: std::sync::OnceLock<Metrics>,
    sink: std::sync::OnceLock<EntrySink>,
    /// Incident id to its subject, for what the sink receives.
    subjects: Mutex<HashMap<String, Subject>>,
    /// Incident id to the API step it is running.
    running: Mutex<HashMap<String, &'static str>>,
    /// This boot's id, recorded with each incident: its cgroup ids mean nothing in another.
    boot_id: Option<String>,
    /// The namespace of the cluster budget's Lease.
    budget_namespace: String,
    /// Held while taking from the cluster budget: this node's incidents take one at a time.
    budget_lock: tokio::sync::Mutex<()>,
    /// Incidents whose release at their expiry is under way.
    expiring: Mutex<HashSet<String>>,
}

enum WriterMsg {
    Entry(Box<Entry>),
    Sync(std::sync::mpsc::Sender<()>),
}

impl Shared {
    /// Notes the API step incident `id` runs (`None`: none any more).
    fn running(&self, id: &str, step: Option<&'static str>) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match step {
            Some(step) => running.insert(id.to_owned(), step),
            None => running.remove(id),
        };
    }

    fn record(&self, incident: &str, kind: EntryKind) -> Entry {
        let entry = Entry::new(incident, kind);
        if let (Some(metrics), EntryKind::Step { step, outcome }) =
            (self.metrics.get(), &entry.kind)
        {
            let status = serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v["status"].as_str().map(str::to_owned))
                .unwrap_or_default();
            metrics.record_containment_action(step, &status);
        }
        self.fold(&entry);
        let _ = self.writer.send(WriterMsg::Entry(Box::new(entry.clone())));
        self.announce(&entry);
        entry
    }

    /// Hands an entry to the sink, with its incident's subject. The subjects' lock also orders
    /// this against [`ContainmentHandle::set_entry_sink`]'s replay.
    fn announce(&self, entry: &Entry) {
        let mut subjects = self.subjects.lock().unwrap_or_else(PoisonError::into_inner);
        if let EntryKind::Opened { subject, .. } | EntryKind::Refused { subject, .. } = &entry.kind
        {
            subjects.insert(entry.incident.clone(), subject.clone());
        }
        if let Some(sink) = self.sink.get() {
            sink(entry, subjects.get(&entry.incident));
        }
    }

    /// Folds a new entry into the incidents, and keeps it for the sink until there is one.
    fn fold(&self, entry: &Entry) {
        journal::apply(&mut self.incidents(), entry);
        if self.sink.get().is_none() {
            self.backlog
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(entry.clone());
        }
    }

    fn incidents(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, IncidentRecord>> {
        self.incidents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn records(&self) -> BTreeMap<String, IncidentRecord> {
        self.incidents().clone()
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn new_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = time::OffsetDateTime::now_utc();
        format!(
            "inc-{:04}{:02}{:02}t{:02}{:02}{:02}-{}-{n}",
            now.year(),
            now.month() as u8,
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            std::process::id()
        )
    }

    fn ctx(&self, dry_run: bool) -> StepCtx<'_> {
        StepCtx::new(
            &self.config,
            self.api.as_ref(),
            Some(&self.block),
            self.cgroup_root.as_deref(),
            dry_run,
        )
    }
}

/// A dry run's outcome lists the calls instead of claiming they were made.
fn finish(ctx: &StepCtx<'_>, outcome: StepOutcome) -> StepOutcome {
    match outcome {
        StepOutcome::Done { .. } if ctx.dry_run() => StepOutcome::DryRun {
            calls: ctx.take_calls(),
        },
        other => other,
    }
}

impl Containment {
    /// Starts the dispatcher on a thread of its own. `kube: None` is the standalone mode: the
    /// kernel block still applies and API steps are journaled as not applicable. Incidents the
    /// journal shows open are resumed (their kernel block re-applied first).
    pub fn start(
        config: ContainConfig,
        quarantine: impl NetworkBlock + 'static,
        kube: Option<Client>,
        journal_dir: &Path,
    ) -> Result<ContainmentHandle, ContainError> {
        Self::start_with(
            config,
            Box::new(quarantine),
            kube,
            journal_dir,
            OwnPod::from_env(),
        )
    }

    /// [`Containment::start`] with the daemon's own pod given.
    pub fn start_with(
        mut config: ContainConfig,
        quarantine: Box<dyn NetworkBlock>,
        kube: Option<Client>,
        journal_dir: &Path,
        own: OwnPod,
    ) -> Result<ContainmentHandle, ContainError> {
        let journal = Journal::open(journal_dir)?;
        let budget_namespace = config
            .cluster_budget
            .namespace
            .clone()
            .or_else(|| own.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let (entries, offset) = journal.read_from(0)?;
        let incidents = journal::replay(entries.iter());
        drop(entries);
        // Ids go on from the journal's count: a restart within the same second, with the same
        // pid (a container's pid 1), names its first incident anew.
        let known = incidents.len() as u64;
        let started = Instant::now();
        let guard = Guard::new(&config, own, 0);
        config.protected_namespaces = guard.protected_namespaces().iter().cloned().collect();
        let node = crate::attribution::node::detect(config.node_name.as_deref())
            .map(|n| n.name)
            .unwrap_or_default();
        let (writer_tx, writer_rx) = std::sync::mpsc::channel();
        let journal_path = journal.path().to_owned();
        std::thread::Builder::new()
            .name("contain-journal".into())
            .spawn(move || write_journal(&journal, &writer_rx))
            .map_err(ContainError::Start)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("contain")
            .enable_all()
            .build()
            .map_err(ContainError::Start)?;
        let api = kube.map(|client| KubeApi::new(client, config.api.clone()));
        let shared = Arc::new(Shared {
            config,
            api,
            block: Arc::new(Mutex::new(quarantine)),
            cgroup_root: crate::cgroup::cgroup2_mount(),
            guard: Mutex::new(guard),
            incidents: Mutex::new(incidents),
            backlog: Mutex::new(Vec::new()),
            writer: writer_tx,
            node,
            started,
            counter: AtomicU64::new(known),
            metrics: std::sync::OnceLock::new(),
            sink: std::sync::OnceLock::new(),
            subjects: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            boot_id: crate::clock::boot_id(),
            budget_namespace,
            budget_lock: tokio::sync::Mutex::new(()),
            expiring: Mutex::new(HashSet::new()),
        });
        // What the journal held at start, taken before the first verdict can add to it: only
        // these are resumed. Incidents in force hold their pods at once, so a verdict right after
        // a restart does no duplicate work (the dispatcher resumes them later).
        let at_start: Vec<IncidentRecord> = shared.records().into_values().collect();
        shared
            .subjects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(
                at_start
                    .iter()
                    .map(|record| (record.id.clone(), record.subject.clone())),
            );
        for record in &at_start {
            let in_force = record.active();
            if in_force && !record.dry_run {
                shared.guard().resumed(&record.subject, &record.id);
            }
        }
        lift_unclaimed_blocks(&shared, &at_start);
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("contain-dispatch".into())
            .spawn({
                let shared = shared.clone();
                move || runtime.block_on(dispatch(shared, rx, offset, at_start))
            })
            .map_err(ContainError::Start)?;
        Ok(ContainmentHandle {
            shared,
            tx: Some(tx),
            thread: Some(thread),
            dropped,
            journal: journal_path,
        })
    }
}

/// Lifts the blocks an earlier run left pinned (see [`crate::sensors::pin`]) that no incident
/// in force of this boot holds: released while no daemon ran, or left by a lost journal. Runs
/// before the first verdict, so that it only sees what earlier runs blocked.
fn lift_unclaimed_blocks(shared: &Shared, at_start: &[IncidentRecord]) {
    let mut block = shared.block.lock().unwrap_or_else(PoisonError::into_inner);
    let blocked = block.blocked();
    if blocked.is_empty() {
        return;
    }
    let claimed: HashSet<u64> = at_start
        .iter()
        .filter(|r| r.active() && !r.dry_run && r.boot_id.is_some() && r.boot_id == shared.boot_id)
        .flat_map(|r| {
            let applied = r
                .step(kernel_block::NAME)
                .and_then(kernel_block::applied_to)
                .unwrap_or_default();
            r.cgroup_ids.iter().copied().chain(applied)
        })
        .collect();
    for id in blocked.into_iter().filter(|id| !claimed.contains(id)) {
        match block.release(id) {
            Ok(()) => tracing::info!(
                "cgroup {id}: blocked by an earlier run, and no incident in force holds it: lifted"
            ),
            Err(err) => tracing::warn!("cgroup {id}: lifting a block no incident holds: {err}"),
        }
    }
}

/// Group commit: every entry queued meanwhile goes out in one write and one fdatasync.
fn write_journal(journal: &Journal, rx: &std::sync::mpsc::Receiver<WriterMsg>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut syncs = Vec::new();
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            match msg {
                WriterMsg::Entry(entry) => batch.push(*entry),
                WriterMsg::Sync(done) => syncs.push(done),
            }
        }
        if !batch.is_empty()
            && let Err(err) = journal.append_entries(&batch)
        {
            tracing::error!("cannot journal {} entries: {err}", batch.len());
        }
        for done in syncs {
            let _ = done.send(());
        }
    }
}

/// A read-only view of the incidents, for what needs to know what a step did (an evidence
/// capture names the snapshots its incident took).
#[derive(Clone)]
pub struct IncidentView(Arc<Shared>);

impl IncidentView {
    /// The configuration.
    pub fn config(&self) -> &ContainConfig {
        &self.0.config
    }

    /// The latest outcome of `step` of incident `id`, once it has run.
    pub fn step(&self, id: &str, step: &str) -> Option<StepOutcome> {
        self.0.incidents().get(id)?.step(step).cloned()
    }
}

impl ContainmentHandle {
    /// A read-only view of the incidents.
    pub fn view(&self) -> IncidentView {
        IncidentView(self.shared.clone())
    }

    /// Hands a verdict to the dispatcher; only `contain` verdicts matter. It never waits on
    /// I/O: the guardrails and the kernel block (a map update) run here, in microseconds, the
    /// journal and the API steps run on the dispatcher's own thread.
    /// `event_ktime_ns` is the kernel time of the deciding event; `cgroup_ids` the pod-level
    /// cgroup (or the container cgroups) to block. Returns the journal's id of the incident
    /// when the guardrails admitted it (a new incident was opened, or refused by a disarmed
    /// budget), so that callers act on the same decision and name it as the journal does.
    pub fn on_verdict(
        &self,
        verdict: &Verdict,
        event_ktime_ns: u64,
        cgroup_ids: Vec<u64>,
    ) -> Taken {
        if verdict.decision != Decision::Contain {
            return Taken::Ignored;
        }
        let Some(tx) = self.tx.as_ref() else {
            return Taken::Ignored;
        };
        let (taken, command) = admit_and_block(&self.shared, verdict, event_ktime_ns, cgroup_ids);
        if let Some(command) = command
            && tx.try_send(command).is_err()
        {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(
                "containment queue full: the API steps for {} dropped ({n} so far)",
                verdict.subject.key
            );
        }
        taken
    }

    /// Records every step's outcome and the containment latencies in `metrics` from now on.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        let _ = self.shared.metrics.set(metrics);
        self
    }

    /// Sends every journal entry to `sink` as well: first those recorded since start (the
    /// resumed incidents'), then each new one. The first sink set stays. An entry recorded
    /// while this runs may reach the sink twice, never not at all.
    pub fn set_entry_sink(&self, sink: EntrySink) {
        let shared = &self.shared;
        let subjects = shared
            .subjects
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shared.sink.set(sink).is_err() {
            return;
        }
        let backlog = std::mem::take(
            &mut *shared
                .backlog
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if let Some(sink) = shared.sink.get() {
            for entry in &backlog {
                sink(entry, subjects.get(&entry.incident));
            }
        }
    }

    /// Verdicts dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Verdicts waiting for the dispatcher.
    pub fn queue_depth(&self) -> usize {
        self.tx
            .as_ref()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// The journal file.
    pub fn journal_path(&self) -> &Path {
        &self.journal
    }

    /// Releases an incident (blocking; call it off the async runtime's threads).
    pub fn release(&self, id: &str) -> Result<(), ReleaseError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(ReleaseError::Stopped)?;
        tx.blocking_send(Command::Release {
            id: id.to_owned(),
            reply,
        })
        .map_err(|_| ReleaseError::Stopped)?;
        rx.blocking_recv().map_err(|_| ReleaseError::Stopped)?
    }

    /// Waits until every verdict handed over so far has been dispatched and every incident
    /// task has finished, and the journal is on disk (blocking; for tests and shutdown).
    pub fn flush(&self) {
        let (done, rx) = oneshot::channel();
        if let Some(tx) = &self.tx
            && tx.blocking_send(Command::Flush(done)).is_ok()
        {
            let _ = rx.blocking_recv();
        }
    }
}

impl ContainmentHandle {
    /// Stops within about `grace`: running incidents get that long to finish, then the step
    /// each runs is journaled as interrupted, for the next start to resume. Blocking.
    pub fn shutdown(mut self, grace: Duration) {
        let (done, rx) = oneshot::channel();
        if let Some(tx) = self.tx.take()
            && tx.blocking_send(Command::Shutdown { grace, done }).is_ok()
        {
            let _ = rx.blocking_recv();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ContainmentHandle {
    fn drop(&mut self) {
        self.flush();
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn dispatch(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Command>,
    mut offset: u64,
    at_start: Vec<IncidentRecord>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    // Only what the journal held at start: an incident opened since by a verdict is already
    // running, and resuming it too would run its steps twice.
    resume(&shared, &mut tasks, at_start);
    let mut tail = tokio::time::interval(Duration::from_millis(500));
    tail.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Nothing to review when no incident can be proposed or expire, and none is proposed now:
    // the incidents are not gone through every 2 s for nothing.
    let reviews = shared.config.modes.may_propose_or_expire()
        || shared
            .incidents()
            .values()
            .any(|r| r.state == journal::IncidentState::Proposed);
    let mut review_tick = tokio::time::interval(REVIEW_EVERY);
    review_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                Some(Command::Steps { incident, kernel }) => {
                    tasks.spawn(api_steps(shared.clone(), *incident, shared.config.dry_run, kernel));
                }
                Some(Command::Event(alert)) => raise(&shared, &alert).await,
                Some(Command::Release { id, reply }) => {
                    let result = release_in_daemon(&shared, &id).await;
                    let _ = reply.send(result);
                }
                Some(Command::Flush(done)) => {
                    while tasks.join_next().await.is_some() {}
                    sync_journal(&shared).await;
                    let _ = done.send(());
                }
                Some(Command::Shutdown { grace, done }) => {
                    interrupt(&shared, &mut tasks, grace).await;
                    let _ = done.send(());
                    return;
                }
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = tail.tick() => offset = follow_journal(&shared, offset, &mut tasks).await,
            _ = review_tick.tick(), if reviews => review(&shared, &mut tasks).await,
        }
    }
    while tasks.join_next().await.is_some() {}
    sync_journal(&shared).await;
}

/// Waits for the running incidents up to `grace`, then stops them: the step each was running
/// is journaled as interrupted, so that the next start, finding the incident open, resumes
/// its steps (each is idempotent).
async fn interrupt(shared: &Shared, tasks: &mut tokio::task::JoinSet<()>, grace: Duration) {
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let running: Vec<(String, &'static str)> = shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for (id, step) in running {
            tracing::warn!(
                "incident {id}: {step} interrupted by the shutdown; the next start resumes it"
            );
            shared.record(
                &id,
                EntryKind::Step {
                    step: step.into(),
                    outcome: StepOutcome::Pending {
                        why: "interrupted by the daemon's shutdown; the next start resumes it"
                            .into(),
                    },
                },
            );
        }
    }
    sync_journal(shared).await;
}

/// Raises an [`Alert`] as a Kubernetes Event (not in a dry run; best effort).
async fn raise(shared: &Shared, alert: &Alert) {
    let Some(api) = &shared.api else {
        return;
    };
    if shared.config.dry_run || !shared.config.events || alert.name.is_empty() {
        return;
    }
    let object = EventObject {
        kind: alert.kind,
        name: &alert.name,
        namespace: alert.namespace.as_deref(),
        uid: None,
        reporter: &shared.node,
    };
    api.event(object, alert.reason, &alert.message, &alert.unique)
        .await;
}

async fn sync_journal(shared: &Shared) {
    let (done, rx) = std::sync::mpsc::channel();
    if shared.writer.send(WriterMsg::Sync(done)).is_ok() {
        let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
    }
}

/// The cgroups of the incident's pod in this boot: the pod-level cgroup directories named by
/// its UID (the kubelet's layout; a restarted node restarts its containers in new cgroups).
fn pod_cgroups_now(shared: &Shared, record: &IncidentRecord) -> Vec<u64> {
    let (Some(root), Some(uid)) = (&shared.cgroup_root, &record.subject.pod_uid) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    find_pod_dirs(root, root, uid, 0, &mut found);
    found
}

/// Pod-level cgroup directories of pod `uid` below `dir`, at most eight levels deep.
fn find_pod_dirs(root: &Path, dir: &Path, uid: &str, depth: usize, found: &mut Vec<u64>) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy();
        match crate::attribution::cgroup_path::parse(&rel) {
            Ok(identity)
                if identity.container.is_none()
                    && identity.pod.as_ref().is_some_and(|p| p.uid == uid) =>
            {
                if let Ok(meta) = std::fs::metadata(&path) {
                    found.push(meta.ino());
                }
            }
            _ if depth < 8 => find_pod_dirs(root, &path, uid, depth + 1, found),
            _ => {}
        }
    }
}

/// Re-applies the kernel block of every incident in force and re-runs the steps of those that
/// were interrupted (every step is idempotent); finishes releases asked for while stopped.
fn resume(
    shared: &Arc<Shared>,
    tasks: &mut tokio::task::JoinSet<()>,
    records: Vec<IncidentRecord>,
) {
    for record in records {
        if record.dry_run {
            continue;
        }
        match record.state {
            journal::IncidentState::Proposed
            | journal::IncidentState::Open
            | journal::IncidentState::Contained => {
                let same_boot = record.boot_id.is_some() && record.boot_id == shared.boot_id;
                let mut incident = release::incident_of(&record, Vec::new());
                let blocked = record
                    .step(kernel_block::NAME)
                    .is_some_and(StepOutcome::changed);
                if !same_boot {
                    // Its cgroup ids are another boot's: nothing is blocked (or, at release,
                    // lifted) by them. The pod, when it still exists, is blocked by its cgroups
                    // of this boot; an incident whose pod is gone is closed.
                    let current = pod_cgroups_now(shared, &record);
                    if current.is_empty() {
                        tracing::warn!(
                            "incident {}: opened in an earlier boot and its pod is gone: closed",
                            record.id
                        );
                        shared.record(
                            &record.id,
                            EntryKind::Step {
                                step: kernel_block::NAME.into(),
                                outcome: StepOutcome::not_applicable(
                                    "opened in an earlier boot; its cgroup ids mean nothing now and \
                                     the pod is gone",
                                ),
                            },
                        );
                        let shared = shared.clone();
                        let id = record.id.clone();
                        tasks.spawn(async move {
                            if let Err(err) = release_in_daemon(&shared, &id).await {
                                tracing::warn!("incident {id}: closing it: {err}");
                            }
                        });
                        continue;
                    }
                    incident.cgroup_ids = current;
                }
                shared.guard().resumed(&record.subject, &record.id);
                if blocked {
                    let outcome = kernel_block::apply(&shared.ctx(false), &incident);
                    tracing::info!(
                        "incident {}: kernel block re-applied: {}",
                        record.id,
                        outcome.summary()
                    );
                    shared.record(
                        &record.id,
                        EntryKind::Step {
                            step: kernel_block::NAME.into(),
                            outcome,
                        },
                    );
                }
                let proposal_pending = record.state == journal::IncidentState::Proposed
                    && !record.step(propose::NAME).is_some_and(StepOutcome::ok);
                if record.state == journal::IncidentState::Open || proposal_pending {
                    tracing::info!("incident {}: resuming its steps", record.id);
                    tasks.spawn(api_steps(shared.clone(), incident, false, None));
                }
            }
            journal::IncidentState::ReleasePending => {
                shared.record(
                    &record.id,
                    EntryKind::Undo {
                        step: kernel_block::NAME.into(),
                        outcome: StepOutcome::done(
                            "lifted at the start: released while no daemon ran",
                        ),
                    },
                );
                shared.record(&record.id, EntryKind::Released);
            }
            _ => {}
        }
    }
}

/// Picks up what `detector release` wrote: its entries join the dispatcher's view, and a
/// release it left pending (the kernel block) is finished here.
async fn follow_journal(
    shared: &Arc<Shared>,
    offset: u64,
    tasks: &mut tokio::task::JoinSet<()>,
) -> u64 {
    let path = shared.config.journal_dir.join(journal::JOURNAL_FILE);
    let Ok((entries, next)) = journal::read_from(&path, offset) else {
        return offset;
    };
    let own = std::process::id();
    let foreign: Vec<Entry> = entries.into_iter().filter(|e| e.pid != own).collect();
    if foreign.is_empty() {
        return next;
    }
    for entry in &foreign {
        shared.fold(entry);
        shared.announce(entry);
    }
    for entry in foreign {
        match entry.kind {
            EntryKind::ReleaseRequested { .. } => {
                if let Err(err) = release_in_daemon(shared, &entry.incident).await {
                    tracing::warn!("incident {}: {err}", entry.incident);
                }
            }
            EntryKind::Approved { .. } => run_approved(shared, tasks, &entry.incident),
            _ => {}
        }
    }
    next
}

async fn release_in_daemon(shared: &Arc<Shared>, id: &str) -> Result<(), ReleaseError> {
    let records = shared.records();
    let record = records
        .get(id)
        .ok_or_else(|| ReleaseError::Unknown(id.to_owned()))?;
    let held = release::node_held_by(record, records.values());
    let result = release::release(
        &shared.config,
        record,
        held,
        shared.api.as_ref(),
        Some(&shared.block),
        shared.cgroup_root.as_deref(),
        "daemon",
        |kind| {
            shared.record(id, kind);
        },
    )
    .await;
    if result.is_ok() && !shared.config.dry_run {
        shared.guard().closed(&record.subject);
    }
    result
}

/// The hot path, on the caller's thread and without I/O: the guardrails, then the kernel
/// block (a map update), then the journal entries (queued to the writer). What needs the API
/// goes to the dispatcher's runtime as the returned command, with the incident's id.
fn admit_and_block(
    shared: &Arc<Shared>,
    verdict: &Verdict,
    event_ktime_ns: u64,
    cgroup_ids: Vec<u64>,
) -> (Taken, Option<Command>) {
    let id = shared.new_id();
    let now_ms = shared.now_ms();
    let (admission, warmup_left) = {
        let mut guard = shared.guard();
        let admission = guard.admit(&verdict.subject, None, now_ms, &id);
        (admission, guard.warmup_left(now_ms))
    };
    match admission {
        Admission::Contain => {}
        Admission::Duplicate(open) => {
            tracing::debug!("{}: incident {open} already open", verdict.subject.key);
            return (Taken::Ignored, None);
        }
        Admission::Refuse(refusal) => {
            if let Some(metrics) = shared.metrics.get() {
                metrics.record_containment_refused(refusal.label());
            }
            let why = refusal.to_string();
            let mut alert = None;
            let mut taken = Taken::Ignored;
            match refusal {
                Refusal::BudgetExhausted { .. } => {
                    tracing::error!(
                        "containment disarmed: {why}; {} not contained",
                        verdict.subject.key
                    );
                    alert = Some(Command::Event(Box::new(Alert {
                        kind: "Node",
                        name: shared.node.clone(),
                        namespace: None,
                        reason: "ContainmentDisarmed",
                        message: format!("{why}; {} not contained", verdict.subject.key),
                        unique: format!("{id}.disarmed"),
                    })));
                }
                Refusal::ClusterBudget { .. } => {
                    let after = shared.guard().cluster_spent_for(now_ms);
                    tracing::error!(
                        "{}: not contained: {why}; decided again in {after:?}",
                        verdict.subject.key
                    );
                    alert = refused_event(&id, &verdict.subject, &why)
                        .map(|alert| Command::Event(Box::new(alert)));
                    taken = Taken::Deferred {
                        why: why.clone(),
                        after,
                    };
                }
                Refusal::WarmUp => {
                    tracing::warn!(
                        "{}: not contained yet: {why}; decided again in {warmup_left:?}",
                        verdict.subject.key
                    );
                    taken = Taken::Deferred {
                        why: why.clone(),
                        after: warmup_left,
                    };
                }
                _ => tracing::warn!("{}: not contained: {why}", verdict.subject.key),
            }
            shared.record(
                &id,
                EntryKind::Refused {
                    subject: verdict.subject.clone(),
                    why,
                },
            );
            return (taken, alert);
        }
    }
    let dry_run = shared.config.dry_run;
    let mode = shared.config.modes.of(
        verdict.subject.namespace.as_deref(),
        verdict.rules.iter().map(|c| c.rule.id.as_str()),
    );
    let incident = Incident {
        id: id.clone(),
        subject: verdict.subject.clone(),
        node: shared.node.clone(),
        score: verdict.score,
        reason: verdict.reason.clone(),
        cgroup_ids,
        pod: None,
        node_held_by: Vec::new(),
        event_ktime_ns,
        mode,
        rules: verdict.rules.iter().map(|c| c.rule.clone()).collect(),
    };
    // The kernel block first: it needs no API round trip and cuts the pod off at once.
    let kernel = if shared.config.steps.kernel_block
        && (mode == Mode::Enforce || shared.config.modes.propose_kernel_block)
    {
        let ctx = shared.ctx(dry_run);
        Some(finish(&ctx, kernel_block::apply(&ctx, &incident)))
    } else {
        None
    };
    shared.record(
        &id,
        EntryKind::Opened {
            subject: incident.subject.clone(),
            node: incident.node.clone(),
            score: incident.score,
            reason: incident.reason.clone(),
            cgroup_ids: incident.cgroup_ids.clone(),
            event_ktime_ns,
            dry_run,
            boot_id: shared.boot_id.clone(),
            mode,
        },
    );
    if let Some(outcome) = kernel.clone() {
        let entry = shared.record(
            &id,
            EntryKind::Step {
                step: kernel_block::NAME.into(),
                outcome,
            },
        );
        let latency = Duration::from_nanos(
            entry
                .boot_ns
                .unwrap_or_default()
                .saturating_sub(event_ktime_ns),
        );
        if let Some(metrics) = shared.metrics.get() {
            metrics.observe_containment_kernel_block(latency);
        }
        tracing::info!(
            "incident {id}: {} kernel block {latency:?} after the event",
            verdict.subject.key,
        );
    }
    (
        Taken::Incident(id),
        Some(Command::Steps {
            incident: Box::new(incident),
            kernel,
        }),
    )
}

/// Every step after the kernel block, in playbook order, each journaled; then `Completed`.
async fn api_steps(
    shared: Arc<Shared>,
    mut incident: Incident,
    dry_run: bool,
    kernel: Option<StepOutcome>,
) {
    let id = incident.id.clone();
    if let (Some(_), Some((ns, name))) = (shared.api.as_ref(), incident.pod_ref()) {
        let ctx = shared.ctx(dry_run);
        match read_pod(&ctx, ns, name).await {
            Ok(Some(pod)) => {
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                let refusal = shared.guard().protected_by_labels(&labels);
                if let Some(refusal) = refusal {
                    roll_back(&shared, &incident, &refusal.to_string()).await;
                    return;
                }
                if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                    incident.node = node;
                }
                if incident.subject.pod_uid.is_none() {
                    incident.subject.pod_uid = pod.metadata.uid.clone();
                }
                incident.pod = Some(pod);
            }
            Ok(None) => tracing::warn!("incident {id}: pod {ns}/{name} not found"),
            Err(err) => tracing::warn!("incident {id}: cannot read the pod: {err}"),
        }
    }
    if incident.mode == Mode::Propose {
        propose_incident(&shared, &incident, dry_run, kernel).await;
        return;
    }
    if !take_from_cluster_budget(&shared, &incident, dry_run).await {
        return;
    }
    let mut events = Vec::new();
    if let Some(outcome) = kernel
        && shared.config.events
        && !dry_run
        && outcome.changed()
    {
        events.extend(emit_event(
            &shared,
            &incident,
            EventTarget::Pod,
            kernel_block::NAME,
            &outcome,
        ));
    }
    for action in playbook() {
        if action.name() == kernel_block::NAME || !action.enabled(&shared.config) {
            continue;
        }
        let ctx = shared.ctx(dry_run);
        shared.running(&id, Some(action.name()));
        let outcome = finish(&ctx, action.run(&ctx, &incident).await);
        if !outcome.ok() {
            tracing::warn!("incident {id}: {}: {}", action.name(), outcome.summary());
        }
        if shared.config.events && !dry_run && outcome.changed() {
            events.extend(emit_event(
                &shared,
                &incident,
                action.event_target(),
                action.name(),
                &outcome,
            ));
        }
        shared.record(
            &id,
            EntryKind::Step {
                step: action.name().into(),
                outcome,
            },
        );
        shared.running(&id, None);
    }
    let completed = shared.record(&id, EntryKind::Completed);
    if let (Some(metrics), Some(boot_ns)) = (shared.metrics.get(), completed.boot_ns)
        && incident.event_ktime_ns != 0
    {
        metrics.observe_containment_api(Duration::from_nanos(
            boot_ns.saturating_sub(incident.event_ktime_ns),
        ));
    }
    // Events are best effort and off the steps' path; the task ends once they are sent.
    for event in events {
        let _ = event.await;
    }
}

fn emit_event(
    shared: &Arc<Shared>,
    incident: &Incident,
    target: EventTarget,
    step: &str,
    outcome: &StepOutcome,
) -> Option<tokio::task::JoinHandle<()>> {
    shared.api.as_ref()?;
    let shared = shared.clone();
    let pod: Option<&Pod> = incident.pod.as_ref();
    let uid = match target {
        EventTarget::Pod => pod.and_then(|p| p.metadata.uid.clone()),
        EventTarget::Node => None,
    };
    let (kind, name, namespace) = match target {
        EventTarget::Pod => (
            "Pod",
            incident.subject.pod.clone().unwrap_or_default(),
            incident.subject.namespace.clone(),
        ),
        EventTarget::Node => ("Node", incident.node.clone(), None),
    };
    if name.is_empty() {
        return None;
    }
    let message = format!("incident {}: {step}: {}", incident.id, outcome.summary());
    let unique = format!("{}.{}", incident.id, step.replace('_', "-"));
    Some(tokio::spawn(async move {
        if let Some(api) = &shared.api {
            let reporter = shared.node.clone();
            api.event(
                EventObject {
                    kind,
                    name: &name,
                    namespace: namespace.as_deref(),
                    uid: uid.as_deref(),
                    reporter: &reporter,
                },
                "Quarantine",
                &message,
                &unique,
            )
            .await;
        }
    }))
}

/// A `propose`-mode incident: the proposal on the pod and an Event asking for approval, in
/// place of the API steps (its kernel block, when `modes.propose_kernel_block`, is in place).
async fn propose_incident(
    shared: &Arc<Shared>,
    incident: &Incident,
    dry_run: bool,
    kernel: Option<StepOutcome>,
) {
    let id = &incident.id;
    let ctx = shared.ctx(dry_run);
    shared.running(id, Some(propose::NAME));
    let outcome = finish(
        &ctx,
        super::Action::run(&propose::Propose, &ctx, incident).await,
    );
    shared.record(
        id,
        EntryKind::Step {
            step: propose::NAME.into(),
            outcome: outcome.clone(),
        },
    );
    shared.running(id, None);
    tracing::warn!(
        "incident {id}: {} proposed for containment: {}",
        incident.subject.key,
        outcome.summary()
    );
    if dry_run || !shared.config.events {
        return;
    }
    let lapses = match shared.config.modes.expiry(Mode::Propose) {
        Some(after) => format!("; released unless approved within {}s", after.as_secs()),
        None => String::new(),
    };
    let blocked = if kernel.as_ref().is_some_and(StepOutcome::changed) {
        "cut off the network in the kernel meanwhile"
    } else {
        "left running meanwhile"
    };
    let alert = Alert {
        kind: "Pod",
        name: incident.subject.pod.clone().unwrap_or_default(),
        namespace: incident.subject.namespace.clone(),
        reason: "ContainmentProposed",
        message: format!(
            "incident {id}: {} (score {:.1}); {blocked}; approve with `detector approve {id}` or \
             the pod annotation {}={id}{lapses}",
            incident.reason,
            incident.score,
            propose::approve_key(&shared.config),
        ),
        unique: format!("{id}.proposed"),
    };
    raise(shared, &alert).await;
}

/// Runs the playbook of an approved proposal (its `approved` entry is journaled already).
fn run_approved(shared: &Arc<Shared>, tasks: &mut tokio::task::JoinSet<()>, id: &str) {
    let records = shared.records();
    let Some(record) = records.get(id) else {
        tracing::warn!("incident {id}: approved, but no such incident");
        return;
    };
    if record.state != journal::IncidentState::Open || record.mode != Mode::Propose {
        tracing::info!(
            "incident {id}: approved while {:?}: nothing to run",
            record.state
        );
        return;
    }
    tracing::warn!("incident {id}: approved: running the playbook");
    let mut incident = release::incident_of(record, Vec::new());
    incident.mode = Mode::Enforce;
    tasks.spawn(api_steps(shared.clone(), incident, record.dry_run, None));
}

/// Every [`REVIEW_EVERY`]: proposals a person approved by annotating the pod run their
/// playbook; incidents nobody approved or confirmed within their mode's expiry are released,
/// journaled as expired.
async fn review(shared: &Arc<Shared>, tasks: &mut tokio::task::JoinSet<()>) {
    // The active incidents only: the others are never reviewed again.
    let active: Vec<IncidentRecord> = shared
        .incidents()
        .values()
        .filter(|r| r.active())
        .cloned()
        .collect();
    let running: HashSet<String> = shared
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .cloned()
        .collect();
    for record in &active {
        if running.contains(&record.id) || record.dry_run && record.expired {
            continue;
        }
        if record.expired {
            // Expired, and its release did not finish (the API refused it): again.
            release_at_expiry(shared, tasks, &record.id);
            continue;
        }
        let proposed = record.state == journal::IncidentState::Proposed;
        if proposed && approved_on_pod(shared, record).await {
            shared.record(
                &record.id,
                EntryKind::Approved {
                    by: "annotation".into(),
                },
            );
            run_approved(shared, tasks, &record.id);
            continue;
        }
        // An enforced incident expires once its steps are done, never in the middle of them.
        if !proposed && record.state != journal::IncidentState::Contained {
            continue;
        }
        let mode = if proposed {
            Mode::Propose
        } else {
            Mode::Enforce
        };
        let Some(expiry) = shared.config.modes.expiry(mode) else {
            continue;
        };
        if record.confirmed || record.age().is_none_or(|age| age < expiry) {
            continue;
        }
        tracing::warn!(
            "incident {}: not {} within {}s: released",
            record.id,
            if proposed { "approved" } else { "confirmed" },
            expiry.as_secs()
        );
        shared.record(
            &record.id,
            EntryKind::Expired {
                after_s: expiry.as_secs(),
            },
        );
        release_at_expiry(shared, tasks, &record.id);
    }
}

/// Releases an expired incident, unless its release is under way already (a review comes every
/// 2 s; a release may take longer).
fn release_at_expiry(shared: &Arc<Shared>, tasks: &mut tokio::task::JoinSet<()>, id: &str) {
    let fresh = shared
        .expiring
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id.to_owned());
    if !fresh {
        return;
    }
    let shared = shared.clone();
    let id = id.to_owned();
    tasks.spawn(async move {
        if let Err(err) = release_in_daemon(&shared, &id).await {
            tracing::warn!("incident {id}: releasing it at its expiry: {err}; tried again");
        }
        shared
            .expiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    });
}

/// Whether a person annotated the proposed incident's pod `<prefix>approve=<incident>`.
async fn approved_on_pod(shared: &Shared, record: &IncidentRecord) -> bool {
    let (Some(_), Some(ns), Some(name)) = (
        &shared.api,
        record.subject.namespace.as_deref(),
        record.subject.pod.as_deref(),
    ) else {
        return false;
    };
    let ctx = shared.ctx(false);
    match read_pod(&ctx, ns, name).await {
        Ok(Some(pod)) => {
            pod.metadata
                .annotations
                .unwrap_or_default()
                .get(&propose::approve_key(&shared.config))
                == Some(&record.id)
        }
        Ok(None) => false,
        Err(err) => {
            tracing::debug!(
                "incident {}: reading the pod for an approval: {err}",
                record.id
            );
            false
        }
    }
}

/// Takes the containment's unit of the cluster budget (journaled as the `cluster_budget`
/// step). `false` when the budget refused it: the incident is then refused (see
/// [`refuse_opened`]). With the API unreachable the node's own budget, which admitted the
/// incident already, decides, and the step says so.
async fn take_from_cluster_budget(
    shared: &Arc<Shared>,
    incident: &Incident,
    dry_run: bool,
) -> bool {
    let Some(api) = &shared.api else {
        return true;
    };
    let budget = &shared.config.cluster_budget;
    if !budget.enabled {
        return true;
    }
    let pod = incident.pod_ref().map_or_else(
        || incident.subject.key.clone(),
        |(ns, name)| format!("{ns}/{name}"),
    );
    let claim = budget::Claim {
        node: &incident.node,
        pod: &pod,
        incident: &incident.id,
    };
    shared.running(&incident.id, Some(CLUSTER_BUDGET));
    let taken = {
        let _one_at_a_time = shared.budget_lock.lock().await;
        budget::take(
            api,
            &shared.config,
            &shared.budget_namespace,
            claim,
            dry_run,
        )
        .await
    };
    let outcome = match taken {
        budget::Take::Granted { spent } => StepOutcome::done(format!(
            "{spent} of {} containments in the last {}s, this one included (Lease {}/{})",
            budget.max, budget.window_s, shared.budget_namespace, budget.lease
        )),
        budget::Take::WouldGrant { call } => StepOutcome::DryRun { calls: vec![call] },
        budget::Take::Unreachable { error } => {
            tracing::warn!(
                "incident {}: the cluster budget cannot be read or taken ({error}); this node's \
                 own budget decided",
                incident.id
            );
            StepOutcome::not_applicable(format!(
                "the cluster budget cannot be read or taken ({error}); this node's own budget \
                 decided"
            ))
        }
        budget::Take::Refused { why, free_in } => {
            shared.running(&incident.id, None);
            refuse_opened(shared, incident, &why, free_in, dry_run).await;
            return false;
        }
    };
    shared.record(
        &incident.id,
        EntryKind::Step {
            step: CLUSTER_BUDGET.into(),
            outcome,
        },
    );
    shared.running(&incident.id, None);
    true
}

/// The cluster budget refused an opened incident: its kernel block is lifted, the incident is
/// journaled as refused, an Event on the pod says why, and this node refuses verdicts on the
/// spot until the budget has a unit free.
async fn refuse_opened(
    shared: &Arc<Shared>,
    incident: &Incident,
    why: &str,
    free_in: Duration,
    dry_run: bool,
) {
    let id = &incident.id;
    tracing::error!(
        "incident {id}: {} not contained: {why}",
        incident.subject.key
    );
    if let Some(metrics) = shared.metrics.get() {
        metrics.record_containment_refused("cluster_budget");
    }
    if shared.config.steps.kernel_block {
        lift_kernel_block(shared, incident, dry_run);
    }
    let why = format!("{why}; not contained");
    shared.record(
        id,
        EntryKind::Refused {
            subject: incident.subject.clone(),
            why: why.clone(),
        },
    );
    let now_ms = shared.now_ms();
    shared
        .guard()
        .refused_by_cluster(&incident.subject, id, now_ms, free_in);
    if let Some(alert) = refused_event(id, &incident.subject, &why) {
        raise(shared, &alert).await;
    }
}

/// The Event on a pod that a budget left uncontained.
fn refused_event(id: &str, subject: &Subject, why: &str) -> Option<Alert> {
    Some(Alert {
        kind: "Pod",
        name: subject.pod.clone()?,
        namespace: subject.namespace.clone(),
        reason: "ContainmentRefused",
        message: format!("incident {id}: {why}"),
        unique: format!("{id}.refused"),
    })
}

/// Lifts the kernel block of an incident that is not going ahead, and journals the undo.
fn lift_kernel_block(shared: &Shared, incident: &Incident, dry_run: bool) {
    let ctx = shared.ctx(dry_run);
    let outcome = finish(
        &ctx,
        kernel_block::lift(&ctx, incident, &StepOutcome::done("")),
    );
    shared.record(
        &incident.id,
        EntryKind::Undo {
            step: kernel_block::NAME.into(),
            outcome,
        },
    );
}

/// A pod found protected only once read from the API: lift the kernel block, journal why.
async fn roll_back(shared: &Arc<Shared>, incident: &Incident, why: &str) {
    tracing::warn!("incident {}: {why}: rolling back", incident.id);
    shared.record(
        &incident.id,
        EntryKind::Step {
            step: "guardrails".into(),
            outcome: StepOutcome::Failed {
                error: format!("{why}: rolled back"),
            },
        },
    );
    lift_kernel_block(shared, incident, shared.config.dry_run);
    shared.record(&incident.id, EntryKind::Released);
    shared.guard().closed(&incident.subject);
}
