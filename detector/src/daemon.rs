//! `detector run`: the daemon, assembled from the configuration.
//!
//! ```text
//! sensors ─► pipeline (ring reader, sampler) ─► analysis thread ─► output (JSON lines, or
//!                                               │                    lines for people)
//!                                               enrich (pod, container, ancestry)
//!                                               score (alerts, verdicts)
//!                                               remember (recent events for evidence)
//! pod watcher (cluster mode) ─► shared pod index ─┘
//! ```
//!
//! The analysis stage is a thread of its own: enrichment and scoring are CPU work and writing
//! is blocking I/O. It wakes for every batch and at least every [`TICK`], to release events
//! held for a pod the API has not shown yet.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use time::OffsetDateTime;
use tokio::{
    runtime::Handle,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    attribution::{Enricher, node, pod_watch, pods::PodIndex},
    clock::Clock,
    config::Config,
    contain::{Containment, dispatcher::ContainError, verdict_reports::VerdictReports},
    event::Event,
    evidence::RecentEvents,
    export::{ExportError, Exporter},
    metrics::{self, Metrics, MetricsError, Readiness},
    output::{Format, Output, OutputError},
    pipeline::{Batch, Pipeline},
    respond::Responders,
    rules::{RuleSet, RulesError},
    score::{Engine, record::Record},
    sensors::{ProgramSet, SensorError, Sensors},
};

/// How often held events are reconsidered when no batch arrives.
pub const TICK: Duration = Duration::from_millis(100);

/// Failure to run the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The rules could not be loaded.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// The sensors could not be brought up.
    #[error(transparent)]
    Sensors(#[from] SensorError),
    /// Events could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The containment dispatcher could not start (its journal, mostly).
    #[error(transparent)]
    Contain(#[from] ContainError),
    /// The exporter could not start (its disk queues, mostly).
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The metrics and health server could not start.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// No Kubernetes client in cluster mode.
    #[error(transparent)]
    Kube(#[from] pod_watch::PodWatchError),
    /// A signal handler could not be installed.
    #[error("cannot handle {signal}: {source}")]
    Signal {
        /// Which signal.
        signal: &'static str,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The analysis thread could not be started.
    #[error("cannot start the analysis thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The analysis thread panicked.
    #[error("the analysis thread panicked")]
    AnalysisPanicked,
}

/// The analysis stage: enrichment, scoring, the recent-event ring, the output and the
/// responders (export, containment, evidence).
pub struct Analysis {
    enricher: Enricher,
    engine: Engine,
    recent: RecentEvents,
    out: Output,
    responders: Responders,
    metrics: Metrics,
    records: Vec<Record>,
}

impl Analysis {
    /// Assembles the stage.
    pub fn new(
        enricher: Enricher,
        engine: Engine,
        recent: RecentEvents,
        out: Output,
        responders: Responders,
        metrics: Metrics,
    ) -> Self {
        Self {
            enricher,
            engine,
            recent,
            out,
            responders,
            metrics,
            records: Vec::new(),
        }
    }

    /// The responders, to shut down once the stage is done.
    pub fn into_responders(self) -> Responders {
        self.responders
    }

    /// Takes a batch from the pipeline.
    pub fn batch(&mut self, batch: Vec<Event>, now: Instant) -> Result<(), OutputError> {
        let events = self.enricher.process(batch, now);
        self.emit(&events)
    }

    /// Releases held events whose time is up, and decides again about the pods whose
    /// containment was deferred.
    pub fn tick(&mut self, now: Instant) -> Result<(), OutputError> {
        self.recent.expire(Clock::boot_now_ns());
        let events = self.enricher.tick(now);
        self.emit(&events)?;
        self.metrics
            .set_queue_depth("held_events", self.enricher.held());
        self.responders.sample(&self.metrics);
        self.metrics
            .observe_output_dropped(self.out.dropped_lines());
        let records = self
            .engine
            .redecide(OffsetDateTime::now_utc(), Clock::boot_now_ns());
        if records.is_empty() {
            return Ok(());
        }
        self.records = records;
        self.respond()?;
        self.out.write_notices()
    }

    /// Releases every held event, at shutdown.
    pub fn finish(&mut self) -> Result<(), OutputError> {
        let events = self.enricher.drain();
        self.emit(&events)
    }

    /// Events of the last minutes of these cgroups, for an evidence bundle.
    pub fn recent_events(&self, cgroups: &[u64]) -> Vec<Event> {
        self.recent.for_cgroups(cgroups, Clock::boot_now_ns())
    }

    /// Scores, writes and responds to events, then writes what containment and evidence
    /// reported since the last call (the pretty format shows those).
    fn emit(&mut self, events: &[Event]) -> Result<(), OutputError> {
        if !events.is_empty() {
            self.handle(events)?;
        }
        self.out.write_notices()
    }

    fn handle(&mut self, events: &[Event]) -> Result<(), OutputError> {
        let started = Instant::now();
        self.records.clear();
        for event in events {
            self.recent.push(event);
            self.records.extend(self.engine.process(event));
            self.responders.event(event);
        }
        self.out.write_events(events)?;
        self.metrics.record_events(events);
        self.metrics.set_pods_tracked(self.engine.tracked());
        if self.records.is_empty() {
            self.metrics.observe_analysis_batch(started.elapsed());
            return Ok(());
        }
        self.respond()?;
        self.metrics.observe_analysis_batch(started.elapsed());
        Ok(())
    }

    /// Writes the records of this round and hands them to the responders; a pod whose
    /// containment was refused for a reason that lapses is decided again once it has.
    fn respond(&mut self) -> Result<(), OutputError> {
        self.out.write_records(&self.records)?;
        self.metrics.record_records(&self.records);
        let now = Instant::now();
        let Self {
            enricher,
            engine,
            recent,
            responders,
            records,
            ..
        } = self;
        for record in records.iter() {
            let again = responders.record(
                record,
                |cgroup_id| enricher.cgroup_path(cgroup_id, now),
                |cgroups| recent.for_cgroups(cgroups, Clock::boot_now_ns()),
            );
            if let (Some((why, after)), Record::Verdict(verdict)) = (again, record) {
                let at = OffsetDateTime::now_utc() + after;
                let at_ns = i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX);
                engine.defer(&verdict.subject.key, at_ns, &why);
            }
        }
        Ok(())
    }
}

/// Runs the daemon until SIGINT or SIGTERM, or until the output fails.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let node = match node::detect(config.attribution.node_name.as_deref()) {
        Ok(node) => Some(node),
        Err(err) => {
            warn!(%err, "no node name: events carry none");
            None
        }
    };
    let metrics = Metrics::new();
    let readiness = Readiness::new();
    readiness.set_cluster_mode(config.attribution.kubernetes);
    // Served from the start, so that liveness answers while the programs load.
    let _server = metrics::serve(&config.metrics, metrics.clone(), readiness.clone()).await?;
    let rules = RuleSet::load(config.rules.dir.as_deref())?;
    let engine = Engine::new(rules, config.score.clone());
    let out = Output::open(&config.output)?;
    if out.format() == Format::Pretty {
        info!(
            events = config.output.events,
            "output for people: alerts, verdicts, containment and evidence, one line each{}",
            if config.output.events {
                ", and every event"
            } else {
                " (events with --events)"
            }
        );
    }
    let mut sensors = match &config.sensors.pin_dir {
        Some(dir) => Sensors::load_pinned(&config.sensors, ProgramSet::Sensors, dir)?,
        None => Sensors::load(&config.sensors, ProgramSet::Sensors)?,
    };
    metrics.set_quarantine_pinned(matches!(sensors.pin_status(), Ok(Some(_))));
    let variant = sensors.variant().as_str();
    let (running, missing): (Vec<_>, Vec<_>) = sensors
        .programs()
        .iter()
        .partition(|program| program.missing.is_none());
    metrics.set_programs_attached(&running.iter().map(|p| p.name).collect::<Vec<_>>());
    for program in &missing {
        metrics.set_program_attached(program.name, false);
    }
    metrics.set_program_variant(variant);
    readiness.set_programs(
        variant,
        missing
            .iter()
            .map(|p| format!("{} ({})", p.name, p.missing.as_deref().unwrap_or_default()))
            .collect(),
    );
    readiness.set_attached(true);
    let quarantine = sensors.take_quarantine()?;
    let kube = if config.attribution.kubernetes {
        Some(pod_watch::default_client().await?)
    } else {
        None
    };
    let reports = match &kube {
        Some(client) if config.contain.verdict_reports => Some(VerdictReports::start(
            client.clone(),
            config.contain.api.clone(),
            &Handle::current(),
        )),
        _ => None,
    };
    let containment = if config.contain.enabled {
        Some(
            Containment::start(
                config.contain.clone(),
                quarantine,
                kube,
                &config.contain.journal_dir,
            )?
            .with_metrics(metrics.clone()),
        )
    } else {
        None
    };
    let exporter = if config.export.sinks.is_empty() {
        None
    } else {
        Some(Exporter::start(&config.export, &config.export.state_dir)?)
    };
    let responders = Responders::new(
        exporter,
        containment,
        reports,
        config.evidence.on_contain.then(|| config.evidence.clone()),
        Handle::current(),
        sensors.cgroup2().to_owned(),
        out.notices(),
    );
    let pods = PodIndex::shared(config.attribution.pod_limits());
    let enricher = Enricher::for_node(&config.attribution, sensors.cgroup2(), pods.clone());
    if config.attribution.kubernetes {
        let attribution = config.attribution.clone();
        let synced = readiness.clone();
        tokio::spawn(async move {
            let on_synced = move || synced.set_pod_cache_synced(true);
            if let Err(err) = pod_watch::run(&attribution, pods, on_synced).await {
                error!(%err, "pod watch stopped: events carry cgroup-derived pod ids only");
            }
        });
        info!(node = ?node, "cluster mode: watching this node's pods");
    } else {
        info!(
            node = ?node,
            "no cluster configured: standalone mode, pod ids from cgroup paths, events to {}",
            config.output.path.display()
        );
    }
    let (pipeline, batches) = Pipeline::spawn_with_metrics(
        sensors,
        Duration::from_millis(config.sensors.sample_interval_ms),
        config.sensors.queue_bytes,
        Some(metrics.clone()),
    )?;
    let analysis = Analysis::new(
        enricher,
        engine,
        // The lead-up is kept only for the evidence it goes into.
        if config.evidence.on_contain {
            RecentEvents::from_config(&config.evidence)
        } else {
            RecentEvents::off()
        },
        out,
        responders,
        metrics,
    );
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel();
    let handle = Handle::current();
    let stopping = Arc::new(OnceLock::new());
    let thread = std::thread::Builder::new()
        .name("analysis".into())
        .spawn({
            let stopping = stopping.clone();
            move || {
                let result = analyse(analysis, batches, &handle, &stopping);
                let _ = ended_tx.send(());
                result
            }
        })
        .map_err(DaemonError::Thread)?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| DaemonError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| DaemonError::Signal {
        signal: "SIGINT",
        source,
    })?;
    info!("ready");
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: stopping"),
        _ = sigint.recv() => info!("SIGINT: stopping"),
        // The analysis thread only ends early when the output failed; its error is returned.
        _ = &mut ended => error!("cannot write events: stopping"),
    }
    let _ = stopping.set(Instant::now());
    pipeline.stop().await;
    let (responders, result) = thread.join().map_err(|_| DaemonError::AnalysisPanicked)?;
    responders.shutdown().await;
    result.map_err(Into::into)
}

/// The analysis loop: batches as they come, ticks in between, everything held released at
/// the end.
fn analyse(
    mut analysis: Analysis,
    batches: mpsc::Receiver<Batch>,
    handle: &Handle,
    stopping: &OnceLock<Instant>,
) -> (Responders, Result<(), OutputError>) {
    let result = analyse_until_closed(&mut analysis, batches, handle, stopping);
    (analysis.into_responders(), result)
}

/// glibc's allocator gives each thread that allocates an arena of its own (up to eight per CPU),
/// and each keeps what its thread freed: the daemon's threads hand events to one another, so
/// every arena grows to the peak it saw. With two arenas the benchmark's mixed activity in 20
/// pods ended at 48 MiB resident where it had ended at 78 (`cargo xtask bench`; one run each,
/// after different cases before it).
///
/// Blocks of 128 KiB and more (a batch's vector of events is up to a few MiB) are mapped on
/// their own and unmapped when freed: glibc otherwise raises that threshold to the largest
/// block freed, and a flood's batches then fragment the arenas for good. Free memory above
/// 1 MiB at the top of an arena goes back at once. With both, the write flood's peak fell from
/// 65 to 54 MiB resident (54 is the start's own, reading the kernel's BTF), and 20 s after it
/// from 49 to 33 MiB (one run each, back to back). Call before any thread starts.
pub fn limit_allocator_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes an allocator setting; no pointer is passed.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Blocks at least this big get a mapping of their own ([`limit_allocator_arenas`]).
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 128 << 10;
/// Free memory beyond this at the top of an arena goes back to the kernel.
#[cfg(target_env = "gnu")]
const TRIM_THRESHOLD: libc::c_int = 1 << 20;

/// Hands the allocator's free memory back to the kernel (glibc keeps freed memory below the top
/// of each arena until asked): after a flood, the resident set follows what is in use.
fn give_back_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often [`give_back_free_memory`] runs on the analysis thread.
const GIVE_BACK_EVERY: Duration = Duration::from_secs(10);

/// How long after a stop was asked for the analysis goes on with the events still queued; the
/// rest are counted in a `loss` event, so that a backlog never holds the stop up.
const STOP_ANALYSIS: Duration = Duration::from_secs(1);

fn analyse_until_closed(
    analysis: &mut Analysis,
    mut batches: mpsc::Receiver<Batch>,
    handle: &Handle,
    stopping: &OnceLock<Instant>,
) -> Result<(), OutputError> {
    let mut last_tick = Instant::now();
    let mut last_give_back = Instant::now();
    let mut skipped = 0u64;
    loop {
        // The timer must be made inside the runtime's context, hence the async block.
        let next = handle.block_on(async { tokio::time::timeout(TICK, batches.recv()).await });
        match next {
            Ok(Some(batch))
                if stopping
                    .get()
                    .is_some_and(|at| at.elapsed() >= STOP_ANALYSIS) =>
            {
                skipped += batch.len() as u64;
            }
            Ok(Some(batch)) => analysis.batch(batch.into_events(), Instant::now())?,
            Ok(None) => break,
            Err(_elapsed) => {}
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            analysis.tick(last_tick)?;
        }
        if last_give_back.elapsed() >= GIVE_BACK_EVERY {
            last_give_back = Instant::now();
            give_back_free_memory();
        }
    }
    if skipped > 0 {
        warn!(
            events = skipped,
            "stopping: events still queued {STOP_ANALYSIS:?} after the stop are not analysed"
        );
        let loss = crate::pipeline::shutdown_loss(
            &crate::clock::Clock::measure(),
            "events",
            skipped,
            "queued for analysis at shutdown",
        );
        analysis.batch(vec![loss], Instant::now())?;
    }
    analysis.finish()
}
