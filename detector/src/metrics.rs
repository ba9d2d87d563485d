//! Observability: Prometheus metrics and health endpoints.
//!
//! [`Metrics`] holds every figure the daemon exports; it is cheap to clone (one [`Arc`]) and each
//! recording method is a few atomic operations, so the pipeline, the analysis thread and the
//! containment stage each keep a clone. [`Readiness`] is the state behind `/readyz`. [`serve`]
//! starts the HTTP server:
//!
//! - `/metrics`: the OpenMetrics text exposition of every figure;
//! - `/healthz`: 200 while the process answers;
//! - `/readyz`: 200 once the kernel programs are attached and, in cluster mode, the pod cache
//!   has synced, naming the build of the programs loaded and any program the kernel refused
//!   (the daemon runs without it unless `sensors.require_all_programs` is set); 503 with the
//!   reason otherwise.
//!
//! Wiring it into the daemon:
//!
//! ```no_run
//! # async fn wire(config: detector::config::Config) -> Result<(), detector::metrics::MetricsError> {
//! use detector::metrics::{self, Metrics, Readiness};
//!
//! let metrics = Metrics::new();
//! let readiness = Readiness::new();
//! readiness.set_cluster_mode(config.attribution.kubernetes);
//! let server = metrics::serve(&config.metrics, metrics.clone(), readiness.clone()).await?;
//! // Once `Sensors::load` has attached the programs:
//! metrics.set_programs_attached(&["sys_exit", "sched_process_exec"]);
//! readiness.set_attached(true);
//! // When the pod watcher's first list has been applied:
//! readiness.set_pod_cache_synced(true);
//! // Per batch in the analysis thread: `metrics.record_events(&events)`,
//! // `metrics.record_records(&records)`, `metrics.observe_analysis_batch(started.elapsed())`;
//! // per sample in the sampler: `metrics.observe_kernel_stats(&counters.stats())`.
//! # drop(server);
//! # Ok(())
//! # }
//! ```
//!
//! Every metric is prefixed `detector_`. Label values come from small fixed sets (event kinds,
//! severities, decisions, containment steps, program names), never from pods or paths, so the
//! number of series stays bounded.

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use detector_common::{STAT_COUNT, Stat};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::info;

use crate::{
    config::Problem,
    event::{Body, Event},
    export::SinkStats,
    rules::spec::Severity,
    score::record::{Decision, Record},
};

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the Prometheus text format, for scrapers that do not ask for
/// OpenMetrics.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `metrics:` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz`.
    pub enabled: bool,
    /// Address and port to listen on.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // Every interface: Prometheus and the kubelet's probes reach the pod's own address.
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9090)),
        }
    }
}

impl MetricsConfig {
    /// Every problem in this section, located under `at` (the section's own key).
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.enabled && self.listen.port() == 0 {
            problems.push(Problem {
                at: format!("{at}.listen"),
                message: "port 0 picks a random port that probes and Prometheus cannot find".into(),
            });
        }
        problems
    }
}

/// Failure to start the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listening socket could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("the metrics server failed: {0}")]
    Serve(#[source] std::io::Error),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OwnedKindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeverityLabel {
    severity: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    step: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabel {
    program: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VariantLabel {
    variant: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkOutcomeLabels {
    sink: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The record kinds the kernel and the decoder count losses of: their loss series exist (at 0)
/// from the start, so that an alert on them has something to watch before the first loss.
const LOSS_KINDS: [&str; 6] = ["exec", "exit", "file", "connect", "syscall", "egress"];

/// The queues whose depth is sampled: the ring-buffer drain's batches waiting for analysis,
/// the events held for their pod's identity, the verdicts waiting for the containment
/// dispatcher.
pub const QUEUES: [&str; 3] = ["batches", "held_events", "containment"];

/// Why containment refused a verdict, as the `reason` label says it.
pub const REFUSAL_REASONS: [&str; 8] = [
    "disabled",
    "warm_up",
    "own_pod",
    "protected_namespace",
    "protected_label",
    "budget_exhausted",
    "disarmed",
    "cluster_budget",
];

/// Every figure the daemon exports. Clones share the same figures.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    events: Family<KindLabel, Counter>,
    kernel_lost: Family<OwnedKindLabel, Counter>,
    decode_losses: Family<OwnedKindLabel, Counter>,
    suppressed_writes: Counter,
    kernel_read_errors: Counter,
    kernel_unresolved_paths: Counter,
    kernel_tail_call_failures: Counter,
    quarantine_drops: Counter,
    quarantine_denies: Counter,
    queue_depth: Family<QueueLabel, Gauge>,
    verdicts: Family<DecisionLabel, Counter>,
    alerts: Family<SeverityLabel, Counter>,
    containment_actions: Family<ActionLabels, Counter>,
    containment_kernel_block: Histogram,
    containment_api: Histogram,
    analysis_batch: Histogram,
    pods_tracked: Gauge,
    programs_attached: Family<ProgramLabel, Gauge>,
    program_variant: Family<VariantLabel, Gauge>,
    quarantine_pinned: Gauge,
    export_records: Family<SinkOutcomeLabels, Counter>,
    export_queue_bytes: Family<SinkLabel, Gauge>,
    export_waiting: Family<SinkLabel, Gauge>,
    containment_refused: Family<ReasonLabel, Counter>,
    containment_dropped: Counter,
    output_dropped_lines: Counter,
    /// Every program name marked so far, to mark the missing ones detached.
    programs_known: Mutex<BTreeSet<String>>,
    /// Cumulative figures sampled from their owners (the exporter's sinks, the containment
    /// queue) as last seen, to turn them into increments.
    sampled_seen: Mutex<HashMap<(String, &'static str), u64>>,
    /// The kernel's cumulative counters as last seen, to turn them into increments.
    kernel_stats_seen: Mutex<Vec<u64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of figures, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("detector");
        let events = Family::<KindLabel, Counter>::default();
        registry.register(
            "events",
            "Events delivered by the kernel sensors and the sampler, by kind",
            events.clone(),
        );
        let kernel_lost = Family::<OwnedKindLabel, Counter>::default();
        registry.register(
            "kernel_lost_events",
            "Records the kernel could not reserve ring-buffer space for, by kind",
            kernel_lost.clone(),
        );
        let decode_losses = Family::<OwnedKindLabel, Counter>::default();
        registry.register(
            "decode_losses",
            "Records user space could not decode, by kind",
            decode_losses.clone(),
        );
        let suppressed_writes = Counter::default();
        registry.register(
            "suppressed_writes",
            "Write-opens counted in the kernel as repeats instead of reported",
            suppressed_writes.clone(),
        );
        let kernel_read_errors = Counter::default();
        registry.register(
            "kernel_read_errors",
            "Kernel reads of user or kernel memory that failed",
            kernel_read_errors.clone(),
        );
        let kernel_unresolved_paths = Counter::default();
        registry.register(
            "kernel_unresolved_paths",
            "Opened files whose path the kernel could not resolve (too deep, too many mounts, unreadable); read-only opens among them were not checked for read-sensitive paths",
            kernel_unresolved_paths.clone(),
        );
        let kernel_tail_call_failures = Counter::default();
        registry.register(
            "kernel_tail_call_failures",
            "Unlink, chmod, rename or failed write-opens not looked at because the kernel program for them could not be reached (an empty program-array slot)",
            kernel_tail_call_failures.clone(),
        );
        let quarantine_drops = Counter::default();
        registry.register(
            "quarantine_dropped_packets",
            "Packets of quarantined cgroups dropped in the kernel (egress and ingress)",
            quarantine_drops.clone(),
        );
        let quarantine_denies = Counter::default();
        registry.register(
            "quarantine_denied_connects",
            "Connects of quarantined cgroups refused in the kernel",
            quarantine_denies.clone(),
        );
        let queue_depth = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "queue_depth",
            "Items waiting in an internal queue, by queue",
            queue_depth.clone(),
        );
        let verdicts = Family::<DecisionLabel, Counter>::default();
        registry.register(
            "verdicts",
            "Verdicts (a pod's decision went up), by decision",
            verdicts.clone(),
        );
        let alerts = Family::<SeverityLabel, Counter>::default();
        registry.register(
            "alerts",
            "Alerts (a rule matched an event), by the rule's severity",
            alerts.clone(),
        );
        let containment_actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "containment_actions",
            "Containment actions, by step and outcome",
            containment_actions.clone(),
        );
        // 100 µs to about 3.3 s: a kernel block should take milliseconds.
        let containment_kernel_block = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "containment_kernel_block_seconds",
            "Time from the event that tipped a pod into containment to its kernel block",
            containment_kernel_block.clone(),
        );
        // 1 ms to about 65 s: API calls, retries and evictions.
        let containment_api = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "containment_api_seconds",
            "Time from the event that tipped a pod into containment to the end of all API steps",
            containment_api.clone(),
        );
        // 10 µs to about 1.3 s.
        let analysis_batch = Histogram::new(exponential_buckets(0.00001, 2.0, 18));
        registry.register(
            "analysis_batch_seconds",
            "Time to enrich, score and write one batch of events",
            analysis_batch.clone(),
        );
        let pods_tracked = Gauge::default();
        registry.register(
            "pods_tracked",
            "Pods in the attribution index",
            pods_tracked.clone(),
        );
        let programs_attached = Family::<ProgramLabel, Gauge>::default();
        registry.register(
            "program_attached",
            "1 when the kernel program is attached, 0 when it is not",
            programs_attached.clone(),
        );
        let program_variant = Family::<VariantLabel, Gauge>::default();
        registry.register(
            "program_variant",
            "1 for the build of the kernel programs loaded: typed (Linux 6.2 and later) or probe-read",
            program_variant.clone(),
        );
        let quarantine_pinned = Gauge::default();
        registry.register(
            "quarantine_pinned",
            "1 when the network quarantine is pinned on bpffs (it holds while no daemon runs), 0 when it ends with the daemon (sensors.pin_dir unset, or the log says why it could not be pinned)",
            quarantine_pinned.clone(),
        );
        let export_records = Family::<SinkOutcomeLabels, Counter>::default();
        registry.register(
            "export_records",
            "Records of each SIEM sink by outcome: delivered (the receiver took them), retried (failed attempts retried), rejected (refused for good by the receiver), dropped (events shed by a full channel, queue or disk; verdicts, actions and evidence never are), lost (verdicts, actions or evidence a full disk still refused at shutdown), repaired (damaged queue state repaired at start)",
            export_records.clone(),
        );
        let export_queue_bytes = Family::<SinkLabel, Gauge>::default();
        registry.register(
            "export_queue_bytes",
            "Bytes waiting in each SIEM sink's disk queue",
            export_queue_bytes.clone(),
        );
        let export_waiting = Family::<SinkLabel, Gauge>::default();
        registry.register(
            "export_waiting_records",
            "Verdicts, actions and evidence a full disk refused, waiting in memory to be queued",
            export_waiting.clone(),
        );
        let containment_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "containment_refused",
            "Contain verdicts the guardrails refused, by reason",
            containment_refused.clone(),
        );
        let containment_dropped = Counter::default();
        registry.register(
            "containment_dropped",
            "Contain verdicts whose API steps were dropped because the dispatcher's queue was full",
            containment_dropped.clone(),
        );
        let output_dropped_lines = Counter::default();
        registry.register(
            "output_dropped_lines",
            "Lines of the daemon's own output (output.path) dropped because writing failed (a full disk); the daemon goes on",
            output_dropped_lines.clone(),
        );
        for kind in LOSS_KINDS {
            let _ = kernel_lost.get_or_create(&OwnedKindLabel { kind: kind.into() });
            let _ = decode_losses.get_or_create(&OwnedKindLabel { kind: kind.into() });
        }
        for queue in QUEUES {
            let _ = queue_depth.get_or_create(&QueueLabel { queue });
        }
        for reason in REFUSAL_REASONS {
            let _ = containment_refused.get_or_create(&ReasonLabel { reason });
        }
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The detector's version", build_info);
        Self {
            inner: Arc::new(Inner {
                registry,
                events,
                kernel_lost,
                decode_losses,
                suppressed_writes,
                kernel_read_errors,
                kernel_unresolved_paths,
                kernel_tail_call_failures,
                quarantine_drops,
                quarantine_denies,
                queue_depth,
                verdicts,
                alerts,
                containment_actions,
                containment_kernel_block,
                containment_api,
                analysis_batch,
                pods_tracked,
                programs_attached,
                program_variant,
                quarantine_pinned,
                export_records,
                export_queue_bytes,
                export_waiting,
                containment_refused,
                containment_dropped,
                output_dropped_lines,
                programs_known: Mutex::default(),
                sampled_seen: Mutex::default(),
                kernel_stats_seen: Mutex::new(vec![0; STAT_COUNT as usize]),
            }),
        }
    }

    /// Counts one event by kind. Loss events also add their count to the kernel losses
    /// (`source: ring_buffer`) or the decode losses (`source: decode`) of their kind.
    pub fn record_event(&self, event: &Event) {
        let m = &self.inner;
        m.events
            .get_or_create(&KindLabel {
                kind: event.body.kind(),
            })
            .inc();
        if let Body::Loss(loss) = &event.body {
            let family = if loss.source == "decode" {
                &m.decode_losses
            } else {
                &m.kernel_lost
            };
            family
                .get_or_create(&OwnedKindLabel {
                    kind: loss.lost_kind.clone(),
                })
                .inc_by(loss.count);
        }
    }

    /// Counts every event of a batch; see [`Metrics::record_event`].
    pub fn record_events(&self, events: &[Event]) {
        for event in events {
            self.record_event(event);
        }
    }

    /// Takes the kernel's cumulative counters (`Counters::stats`, indexed by [`Stat`]) and adds
    /// what grew since the previous call to suppressed writes, read errors and quarantine
    /// drops and denies. Ring-buffer losses are counted from loss events instead (see
    /// [`Metrics::record_event`]), so they are not counted twice.
    pub fn observe_kernel_stats(&self, stats: &[u64]) {
        let m = &self.inner;
        let mut seen = m
            .kernel_stats_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut grew = |stat: Stat| -> u64 {
            let i = stat as usize;
            let now = stats.get(i).copied().unwrap_or(0);
            // A counter that went down was reset (the programs were reloaded): count it anew.
            let delta = now.checked_sub(seen[i]).unwrap_or(now);
            seen[i] = now;
            delta
        };
        m.suppressed_writes.inc_by(grew(Stat::SuppressedWrites));
        m.kernel_read_errors.inc_by(grew(Stat::ReadErrors));
        m.kernel_unresolved_paths
            .inc_by(grew(Stat::UnresolvedPaths));
        m.kernel_tail_call_failures
            .inc_by(grew(Stat::TailCallFailures));
        m.quarantine_drops.inc_by(grew(Stat::QuarantineDrops));
        m.quarantine_denies.inc_by(grew(Stat::QuarantineDenies));
    }

    /// Sets the depth of an internal queue (e.g. `batches`, `held_events`, `containment`).
    pub fn set_queue_depth(&self, queue: &'static str, depth: usize) {
        self.inner
            .queue_depth
            .get_or_create(&QueueLabel { queue })
            .set(saturating_i64(depth));
    }

    /// Counts the alerts (by severity) and verdicts (by decision) among the engine's records.
    pub fn record_records(&self, records: &[Record]) {
        for record in records {
            match record {
                Record::Alert(alert) => self.record_alert(alert.rule.severity),
                Record::Verdict(verdict) => self.record_verdict(verdict.decision),
            }
        }
    }

    /// Counts one alert of a rule of this severity.
    pub fn record_alert(&self, severity: Severity) {
        let severity = match severity {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        };
        self.inner
            .alerts
            .get_or_create(&SeverityLabel { severity })
            .inc();
    }

    /// Counts one verdict with this decision.
    pub fn record_verdict(&self, decision: Decision) {
        let decision = match decision {
            Decision::Log => "log",
            Decision::Alert => "alert",
            Decision::Contain => "contain",
        };
        self.inner
            .verdicts
            .get_or_create(&DecisionLabel { decision })
            .inc();
    }

    /// Counts one containment action: `step` from the playbook's fixed set (e.g.
    /// `kernel_block`, `label`, `network_policy`, `cordon`, `evict`, `evidence`), `outcome` e.g.
    /// `ok`, `failed`, `dry_run`, `refused`.
    pub fn record_containment_action(&self, step: &str, outcome: &str) {
        self.inner
            .containment_actions
            .get_or_create(&ActionLabels {
                step: step.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records the time from the event that tipped a pod into containment to its kernel block.
    pub fn observe_containment_kernel_block(&self, elapsed: Duration) {
        self.inner
            .containment_kernel_block
            .observe(elapsed.as_secs_f64());
    }

    /// Records the time from the event that tipped a pod into containment to the end of all
    /// its API steps.
    pub fn observe_containment_api(&self, elapsed: Duration) {
        self.inner.containment_api.observe(elapsed.as_secs_f64());
    }

    /// Records how long the analysis stage took over one batch.
    pub fn observe_analysis_batch(&self, elapsed: Duration) {
        self.inner.analysis_batch.observe(elapsed.as_secs_f64());
    }

    /// Sets the number of pods in the attribution index.
    pub fn set_pods_tracked(&self, pods: usize) {
        self.inner.pods_tracked.set(saturating_i64(pods));
    }

    /// Marks one kernel program attached (1) or not (0).
    pub fn set_program_attached(&self, program: &str, attached: bool) {
        self.inner
            .programs_attached
            .get_or_create(&ProgramLabel {
                program: program.to_owned(),
            })
            .set(i64::from(attached));
    }

    /// Marks these programs attached (e.g. `Sensors::attached()`) and every program marked
    /// before but missing here as detached (0).
    pub fn set_programs_attached(&self, programs: &[&str]) {
        let mut known = self
            .inner
            .programs_known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for program in known.iter() {
            if !programs.contains(&program.as_str()) {
                self.set_program_attached(program, false);
            }
        }
        for program in programs {
            known.insert((*program).to_owned());
            self.set_program_attached(program, true);
        }
    }

    /// Marks the build of the kernel programs loaded (`typed` or `probe-read`).
    pub fn set_program_variant(&self, variant: &'static str) {
        self.inner
            .program_variant
            .get_or_create(&VariantLabel { variant })
            .set(1);
    }

    /// Whether the network quarantine is pinned (see [`crate::sensors::pin`]).
    pub fn set_quarantine_pinned(&self, pinned: bool) {
        self.inner.quarantine_pinned.set(i64::from(pinned));
    }

    /// Takes the exporter's per-sink counters (cumulative since start) and adds what grew
    /// since the previous call to `export_records_total`; sets each sink's queue bytes.
    pub fn observe_export(&self, sinks: &[SinkStats]) {
        let m = &self.inner;
        for sink in sinks {
            for (outcome, total) in [
                ("delivered", sink.delivered),
                ("retried", sink.retries),
                ("rejected", sink.rejected),
                (
                    "dropped",
                    sink.dropped_channel + sink.dropped_queue + sink.dropped_disk,
                ),
                ("lost", sink.lost),
                ("repaired", sink.repairs),
            ] {
                let grew = self.grew(&sink.name, outcome, total);
                m.export_records
                    .get_or_create(&SinkOutcomeLabels {
                        sink: sink.name.clone(),
                        outcome,
                    })
                    .inc_by(grew);
            }
            m.export_queue_bytes
                .get_or_create(&SinkLabel {
                    sink: sink.name.clone(),
                })
                .set(i64::try_from(sink.queued_bytes).unwrap_or(i64::MAX));
            m.export_waiting
                .get_or_create(&SinkLabel {
                    sink: sink.name.clone(),
                })
                .set(i64::try_from(sink.waiting).unwrap_or(i64::MAX));
        }
    }

    /// Takes the containment dispatcher's count of verdicts dropped on a full queue
    /// (cumulative) and its queue's depth.
    pub fn observe_containment_queue(&self, dropped: u64, depth: usize) {
        let grew = self.grew("containment", "dropped", dropped);
        self.inner.containment_dropped.inc_by(grew);
        self.set_queue_depth("containment", depth);
    }

    /// Takes the output's count of dropped lines (cumulative).
    pub fn observe_output_dropped(&self, dropped_lines: u64) {
        let grew = self.grew("output", "dropped", dropped_lines);
        self.inner.output_dropped_lines.inc_by(grew);
    }

    /// Counts a verdict the containment guardrails refused, by one of [`REFUSAL_REASONS`].
    pub fn record_containment_refused(&self, reason: &'static str) {
        self.inner
            .containment_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// What a cumulative figure grew by since it was last seen (all of it when it went down:
    /// its owner started over).
    fn grew(&self, owner: &str, figure: &'static str, total: u64) -> u64 {
        let mut seen = self
            .inner
            .sampled_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let last = seen.entry((owner.to_owned(), figure)).or_default();
        let grew = total.checked_sub(*last).unwrap_or(total);
        *last = total;
        grew
    }

    /// The OpenMetrics text exposition of every figure.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a `String` cannot fail.
        let _ = encode(&mut text, &self.inner.registry);
        text
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What `/readyz` answers. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Debug, Default)]
struct ReadinessInner {
    attached: AtomicBool,
    /// The build of the programs loaded, and the programs not running with their reasons.
    programs: Mutex<(Option<&'static str>, Vec<String>)>,
    pod_cache_synced: AtomicBool,
    cluster_mode: AtomicBool,
}

impl Readiness {
    /// Not ready: nothing attached yet, standalone mode.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the kernel programs are attached.
    pub fn set_attached(&self, attached: bool) {
        self.inner.attached.store(attached, Ordering::Relaxed);
    }

    /// The build of the kernel programs loaded, and each program not running as
    /// `name (reason)`: said by `/readyz`, ready or not.
    pub fn set_programs(&self, variant: &'static str, missing: Vec<String>) {
        *self
            .inner
            .programs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = (Some(variant), missing);
    }

    /// What `/readyz` says besides ready or not: the programs' build and what is missing.
    pub fn programs(&self) -> String {
        let programs = self
            .inner
            .programs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*programs {
            (None, _) => String::new(),
            (Some(variant), missing) if missing.is_empty() => {
                format!("{variant} programs, all running")
            }
            (Some(variant), missing) => {
                format!("{variant} programs; not running: {}", missing.join("; "))
            }
        }
    }

    /// Whether the pod watcher has listed this node's pods at least once.
    pub fn set_pod_cache_synced(&self, synced: bool) {
        self.inner.pod_cache_synced.store(synced, Ordering::Relaxed);
    }

    /// Whether the daemon watches pods through the API (then readiness waits for the sync).
    pub fn set_cluster_mode(&self, cluster: bool) {
        self.inner.cluster_mode.store(cluster, Ordering::Relaxed);
    }

    /// `Ok` when ready, else every reason it is not.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let mut reasons = Vec::new();
        if !self.inner.attached.load(Ordering::Relaxed) {
            reasons.push("kernel programs not attached");
        }
        if self.inner.cluster_mode.load(Ordering::Relaxed)
            && !self.inner.pod_cache_synced.load(Ordering::Relaxed)
        {
            reasons.push("pod cache not synced");
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// A running metrics server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<Result<(), MetricsError>>,
}

impl Server {
    /// The address actually bound (the port is known even when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's task; it runs until aborted or until the listener fails.
    pub fn into_handle(self) -> JoinHandle<Result<(), MetricsError>> {
        self.task
    }

    /// Stops the server.
    pub fn abort(&self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The HTTP routes, without a listener (for embedding or tests).
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(serve_health))
        .route("/readyz", get(serve_ready))
        .with_state(AppState { metrics, readiness })
}

/// Binds `config.listen` and serves `/metrics`, `/healthz` and `/readyz` on a task of the
/// current runtime. `Ok(None)` when the server is disabled. Must be called inside a Tokio
/// runtime.
pub async fn serve(
    config: &MetricsConfig,
    metrics: Metrics,
    readiness: Readiness,
) -> Result<Option<Server>, MetricsError> {
    if !config.enabled {
        return Ok(None);
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| MetricsError::Bind {
        addr: config.listen,
        source,
    })?;
    info!(%addr, "serving /metrics, /healthz and /readyz");
    let app = router(metrics, readiness);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .map_err(MetricsError::Serve)
    });
    Ok(Some(Server { addr, task }))
}

/// `/metrics` in the format the scraper asks for: OpenMetrics when its `Accept` names it (as
/// Prometheus does by default), else the Prometheus text format 0.0.4 (older Prometheus
/// versions, other scrapers, `curl`), as Prometheus's own client libraries negotiate.
async fn serve_metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let (kind, params) = media.split_once(';').unwrap_or((media, ""));
            kind.trim()
                .eq_ignore_ascii_case("application/openmetrics-text")
                && !params.replace(' ', "").contains("q=0,")
                && !params.replace(' ', "").ends_with("q=0")
        });
    let text = state.metrics.encode();
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
            prometheus_text(&text),
        )
            .into_response()
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition: a counter family is named
/// with its `_total` suffix in HELP and TYPE, types the older format lacks become `untyped`,
/// and there is no `# UNIT` or `# EOF` line.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|rest| ("HELP", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("TYPE", rest)));
        match meta {
            Some((what, rest)) => {
                let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                let value = match (what, value) {
                    ("TYPE", "counter" | "gauge" | "histogram" | "summary") => value,
                    ("TYPE", _) => "untyped",
                    _ => value,
                };
                out.push_str(&format!("# {what} {name}{suffix} {value}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

async fn serve_health() -> &'static str {
    "ok\n"
}

async fn serve_ready(State(state): State<AppState>) -> Response {
    let programs = state.readiness.programs();
    let programs = if programs.is_empty() {
        programs
    } else {
        format!(" ({programs})")
    };
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, format!("ready{programs}\n")).into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}{programs}\n", reasons.join("; ")),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_port_zero_is_not() {
        assert!(MetricsConfig::default().validate("metrics").is_empty());
        let config = MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().unwrap(),
        };
        let problems = config.validate("metrics");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].at, "metrics.listen");
        let disabled = MetricsConfig {
            enabled: false,
            ..config
        };
        assert!(disabled.validate("metrics").is_empty());
    }

    #[test]
    fn kernel_stats_become_increments() {
        let metrics = Metrics::new();
        let mut stats = vec![0; STAT_COUNT as usize];
        stats[Stat::SuppressedWrites as usize] = 5;
        stats[Stat::QuarantineDenies as usize] = 2;
        metrics.observe_kernel_stats(&stats);
        stats[Stat::SuppressedWrites as usize] = 7;
        metrics.observe_kernel_stats(&stats);
        let text = metrics.encode();
        assert!(
            text.contains("detector_suppressed_writes_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("detector_quarantine_denied_connects_total 2\n"),
            "{text}"
        );
        // A reset counter counts anew rather than going backwards.
        stats[Stat::SuppressedWrites as usize] = 1;
        metrics.observe_kernel_stats(&stats);
        assert!(
            metrics
                .encode()
                .contains("detector_suppressed_writes_total 8\n")
        );
    }

    #[test]
    fn syscall_events_and_their_losses_have_their_kind() {
        use crate::event::{Event, Loss, ProcessFields, Syscall, SyscallOperation};
        let event = |body| Event {
            time: time::OffsetDateTime::UNIX_EPOCH,
            ktime_ns: 1,
            process: ProcessFields::default(),
            cgroup_id: None,
            container: None,
            pod: None,
            ancestry: Vec::new(),
            lineage: None,
            body,
        };
        let metrics = Metrics::new();
        metrics.record_events(&[
            event(Body::Syscall(Syscall::new(
                SyscallOperation::Ptrace,
                "ptrace",
                0,
            ))),
            event(Body::Loss(Loss {
                source: "ring_buffer".into(),
                lost_kind: "syscall".into(),
                count: 3,
                total: 3,
                reason: None,
            })),
        ]);
        let text = metrics.encode();
        assert!(
            text.contains("detector_events_total{kind=\"syscall\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("detector_kernel_lost_events_total{kind=\"syscall\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn readiness_names_every_reason() {
        let ready = Readiness::new();
        assert_eq!(ready.check(), Err(vec!["kernel programs not attached"]));
        ready.set_attached(true);
        assert_eq!(ready.check(), Ok(()));
        ready.set_cluster_mode(true);
        assert_eq!(ready.check(), Err(vec!["pod cache not synced"]));
        ready.set_pod_cache_synced(true);
        assert_eq!(ready.check(), Ok(()));
        assert_eq!(ready.programs(), "");
        ready.set_programs("typed", Vec::new());
        assert_eq!(ready.programs(), "typed programs, all running");
        ready.set_programs(
            "probe-read",
            vec!["sys_exit (load: the verifier refused it)".to_owned()],
        );
        assert_eq!(
            ready.programs(),
            "probe-read programs; not running: sys_exit (load: the verifier refused it)"
        );
        // Degraded is still ready: the other programs run.
        assert_eq!(ready.check(), Ok(()));
    }

    #[test]
    fn programs_attached_replaces_the_set() {
        let metrics = Metrics::new();
        metrics.set_programs_attached(&["exec", "file"]);
        metrics.set_programs_attached(&["exec"]);
        let text = metrics.encode();
        assert!(
            text.contains("detector_program_attached{program=\"exec\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("detector_program_attached{program=\"file\"} 0"),
            "{text}"
        );
        metrics.set_program_variant("probe-read");
        let text = metrics.encode();
        assert!(
            text.contains("detector_program_variant{variant=\"probe-read\"} 1"),
            "{text}"
        );
    }
}
