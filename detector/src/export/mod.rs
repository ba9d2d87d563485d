//! SIEM export: the only module that talks to a SIEM.
//!
//! [`Exporter::start`] spawns, per configured sink, a writer task and a delivery task joined by
//! a disk queue:
//!
//! ```text
//! ExporterHandle::send ─► bounded channel ─► writer ─► DiskQueue (segments + ack) ─► delivery ─► sink
//!   (filter, uid, JSON)     (per sink)         (push)     (bounded in bytes)          (render, batch,
//!                                                                                     retry, ack)
//! ```
//!
//! Delivery is at-least-once: a batch is acknowledged in the queue only once the receiver took
//! it, failures are retried with exponential backoff and jitter, and the queue survives
//! restarts. Every record carries a `uid` so receivers can drop duplicates (the Elasticsearch
//! sink does so by itself through `_id`). Nothing is dropped silently: a full channel or a full
//! queue counts each event it drops ([`SinkStats`]), and verdicts, actions and evidence are never
//! dropped.

pub mod config;
pub mod queue;
pub mod record;
pub mod schema;
pub mod sink;

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{error, warn};

use self::{
    config::{ExportConfig, SinkConfig},
    queue::{DiskQueue, QueueError},
    record::{Envelope, Record, RecordKind, Severity},
    schema::{Context, Schema},
    sink::{Item, Sink, SinkError},
};

/// Failure to start the exporter.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A sink's disk queue could not be opened.
    #[error("sink {sink}: {source}")]
    Queue {
        /// The sink.
        sink: String,
        /// What went wrong.
        #[source]
        source: QueueError,
    },
    /// A sink could not be set up (secret, CA file, address).
    #[error("sink {sink}: {source}")]
    Sink {
        /// The sink.
        sink: String,
        /// What went wrong.
        #[source]
        source: SinkError,
    },
    /// Not called from within a tokio runtime.
    #[error("the exporter needs a tokio runtime")]
    NoRuntime,
}

/// A record as queued: serialized once for every sink.
#[derive(Debug)]
struct Queued {
    protected: bool,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    dropped_channel: AtomicU64,
    /// Events the disk refused (full): dropped.
    dropped_disk: AtomicU64,
    /// Protected records the disk refused, waiting in memory until it takes them.
    waiting: AtomicU64,
    /// Protected records lost: the disk still refused them at shutdown, or the memory they
    /// waited in was full.
    lost: AtomicU64,
    delivered: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    unreadable: AtomicU64,
}

/// Counters of one sink since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// The sink's name.
    pub name: String,
    /// Records handed to the sink's channel.
    pub accepted: u64,
    /// Records written to the disk queue since start (durable from then on).
    pub queued: u64,
    /// Events dropped because the sink's channel was full.
    pub dropped_channel: u64,
    /// Events dropped because the disk refused them (full).
    pub dropped_disk: u64,
    /// Verdicts, actions and evidence the disk refused, waiting in memory to be queued.
    pub waiting: u64,
    /// Verdicts, actions and evidence lost (still refused by the disk at shutdown).
    pub lost: u64,
    /// Damaged queue state repaired at start (an unreadable or impossible `ack`, a torn
    /// segment).
    pub repairs: u64,
    /// Events dropped by the full queue (`drop_oldest`).
    pub dropped_queue: u64,
    /// Records the receiver took.
    pub delivered: u64,
    /// Records the receiver refused for good.
    pub rejected: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Bytes waiting in the disk queue.
    pub queued_bytes: u64,
}

struct SinkHandle {
    name: String,
    min_severity: Severity,
    kinds: Vec<RecordKind>,
    tx: mpsc::Sender<Arc<Queued>>,
    counters: Arc<Counters>,
    queue: Arc<Mutex<DiskQueue>>,
    writer: JoinHandle<()>,
    delivery: JoinHandle<()>,
}

impl SinkHandle {
    fn wants(&self, kind: RecordKind, severity: Severity) -> bool {
        severity >= self.min_severity && (self.kinds.is_empty() || self.kinds.contains(&kind))
    }
}

/// Starts the export tasks.
#[derive(Debug)]
pub struct Exporter;

impl Exporter {
    /// Opens each sink's queue under `state_dir/<sink name>` and spawns its tasks on the
    /// current tokio runtime. Records queued by a previous run are delivered first.
    pub fn start(config: &ExportConfig, state_dir: &Path) -> Result<ExporterHandle, ExportError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
        let host = config.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into())
        });
        let ctx = Arc::new(Context::new(host));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut sinks = Vec::new();
        for (index, sink_config) in config.sinks.iter().enumerate() {
            let queue = DiskQueue::open(
                &state_dir.join(&sink_config.name),
                sink_config.queue.options(),
            )
            .map_err(|source| ExportError::Queue {
                sink: sink_config.name.clone(),
                source,
            })?;
            let sink = Sink::new(sink_config, &ctx).map_err(|source| ExportError::Sink {
                sink: sink_config.name.clone(),
                source,
            })?;
            let queue = Arc::new(Mutex::new(queue));
            let counters = Arc::new(Counters::default());
            let wake = Arc::new(Notify::new());
            let space = Arc::new(Notify::new());
            let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
            let writer = runtime.spawn(write_loop(
                rx,
                Arc::clone(&queue),
                Arc::clone(&wake),
                Arc::clone(&space),
                Arc::clone(&counters),
            ));
            let delivery = runtime.spawn(
                Delivery {
                    config: sink_config.clone(),
                    sink,
                    ctx: Arc::clone(&ctx),
                    queue: Arc::clone(&queue),
                    wake,
                    space,
                    counters: Arc::clone(&counters),
                    stop: stop_rx.clone(),
                    drain_timeout: Duration::from_millis(config.drain_timeout_ms),
                    rng: seed(index),
                }
                .run(),
            );
            sinks.push(SinkHandle {
                name: sink_config.name.clone(),
                min_severity: sink_config.min_severity,
                kinds: sink_config.kinds.clone(),
                tx,
                counters,
                queue,
                writer,
                delivery,
            });
        }
        let start = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        Ok(ExporterHandle {
            sinks,
            uid_prefix: format!("{start:x}"),
            seq: AtomicU64::new(0),
            stop: stop_tx,
            runtime,
        })
    }
}

/// The running exporter: hand it records with [`send`](Self::send).
pub struct ExporterHandle {
    sinks: Vec<SinkHandle>,
    uid_prefix: String,
    seq: AtomicU64,
    stop: watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for ExporterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterHandle")
            .field(
                "sinks",
                &self.sinks.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ExporterHandle {
    fn envelope(&self, record: Record) -> (Arc<Queued>, RecordKind, Severity) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let kind = record.kind();
        let severity = record.severity();
        let protected = record.is_protected();
        let envelope = Envelope {
            uid: format!("{}-{seq}", self.uid_prefix),
            record,
        };
        // Records are plain data: serializing them cannot fail.
        let bytes = serde_json::to_vec(&envelope).unwrap_or_default();
        (Arc::new(Queued { protected, bytes }), kind, severity)
    }

    /// Hands a record to every sink that wants it, without waiting. An event finding a sink's
    /// channel full is dropped for that sink and counted; a verdict, action or evidence record
    /// waits for room in a task of its own instead.
    pub fn send(&self, record: Record) {
        let (queued, kind, severity) = self.envelope(record);
        for sink in self.sinks.iter().filter(|s| s.wants(kind, severity)) {
            match sink.tx.try_send(Arc::clone(&queued)) {
                Ok(()) => {
                    sink.counters.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(queued)) if queued.protected => {
                    sink.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    let tx = sink.tx.clone();
                    self.runtime.spawn(async move {
                        let _ = tx.send(queued).await;
                    });
                }
                Err(_) => {
                    sink.counters
                        .dropped_channel
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Hands a record to every sink that wants it, waiting for room in each channel (with
    /// `when_full: block`, back-pressure reaches the caller).
    pub async fn send_wait(&self, record: Record) {
        let (queued, kind, severity) = self.envelope(record);
        for sink in self.sinks.iter().filter(|s| s.wants(kind, severity)) {
            if sink.tx.send(Arc::clone(&queued)).await.is_ok() {
                sink.counters.accepted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counters of every sink.
    pub fn stats(&self) -> Vec<SinkStats> {
        self.sinks
            .iter()
            .map(|s| {
                let (queued, dropped_queue, queued_bytes, repairs) = s
                    .queue
                    .lock()
                    .map(|q| {
                        (
                            q.stats().pushed,
                            q.stats().dropped,
                            q.bytes(),
                            q.stats().repairs,
                        )
                    })
                    .unwrap_or_default();
                let c = &s.counters;
                SinkStats {
                    name: s.name.clone(),
                    accepted: c.accepted.load(Ordering::Relaxed),
                    queued,
                    dropped_channel: c.dropped_channel.load(Ordering::Relaxed),
                    dropped_disk: c.dropped_disk.load(Ordering::Relaxed),
                    waiting: c.waiting.load(Ordering::Relaxed),
                    lost: c.lost.load(Ordering::Relaxed),
                    repairs,
                    dropped_queue,
                    delivered: c.delivered.load(Ordering::Relaxed),
                    rejected: c.rejected.load(Ordering::Relaxed),
                    retries: c.retries.load(Ordering::Relaxed),
                    queued_bytes,
                }
            })
            .collect()
    }

    /// Stops: queues what the channels hold, delivers for up to `drain_timeout_ms`, and leaves
    /// the rest on disk for the next start.
    pub async fn shutdown(self) {
        let mut deliveries = Vec::new();
        for sink in self.sinks {
            drop(sink.tx);
            if sink.writer.await.is_err() {
                error!("sink {}: the queue writer panicked", sink.name);
            }
            deliveries.push((sink.name, sink.delivery, sink.queue));
        }
        let _ = self.stop.send(true);
        for (name, delivery, queue) in deliveries {
            if delivery.await.is_err() {
                error!("sink {name}: the delivery task panicked");
            }
            if let Ok(mut queue) = queue.lock() {
                if let Err(err) = queue.sync() {
                    error!("sink {name}: {err}");
                }
                if !queue.is_empty() {
                    warn!(
                        "sink {name}: {} bytes left queued for the next start",
                        queue.bytes()
                    );
                }
            }
        }
    }
}

fn seed(index: usize) -> u64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    // Any non-zero value will do; the low bits of the clock differ between sinks and runs.
    (nanos as u64) ^ ((index as u64 + 1) << 32) | 1
}

/// How often records the disk refused are offered to it again.
const DISK_RETRY: Duration = Duration::from_millis(500);
/// Most bytes of protected records waiting in memory for a disk that refused them.
const WAITING_MAX_BYTES: usize = 64 << 20;
/// How often a lasting disk failure is logged again.
const DISK_LOG_EVERY: Duration = Duration::from_secs(60);

/// Moves records from the channel to the disk queue. When the disk refuses them (full), events
/// are dropped and counted, and verdicts, actions and evidence wait in memory (bounded) to be
/// offered again; one line is logged when it starts, one a minute while it lasts, one when it
/// ends.
async fn write_loop(
    mut rx: mpsc::Receiver<Arc<Queued>>,
    queue: Arc<Mutex<DiskQueue>>,
    wake: Arc<Notify>,
    space: Arc<Notify>,
    counters: Arc<Counters>,
) {
    let mut buffer = Vec::with_capacity(1024);
    let mut waiting: std::collections::VecDeque<Arc<Queued>> = std::collections::VecDeque::new();
    let mut failing: Option<DiskFailure> = None;
    loop {
        let open = if waiting.is_empty() {
            rx.recv_many(&mut buffer, 1024).await > 0
        } else {
            match tokio::time::timeout(DISK_RETRY, rx.recv_many(&mut buffer, 1024)).await {
                Ok(n) => n > 0,
                Err(_elapsed) => true,
            }
        };
        if !open {
            break;
        }
        let records: Vec<Arc<Queued>> = waiting.drain(..).chain(buffer.drain(..)).collect();
        write_records(
            &records,
            &queue,
            &wake,
            &space,
            &counters,
            &mut waiting,
            &mut failing,
        )
        .await;
    }
    // Closed: what still waits gets a last few chances, then is reported lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(DISK_RETRY / 5).await;
        let records: Vec<Arc<Queued>> = waiting.drain(..).collect();
        write_records(
            &records,
            &queue,
            &wake,
            &space,
            &counters,
            &mut waiting,
            &mut failing,
        )
        .await;
    }
    if !waiting.is_empty() {
        counters
            .lost
            .fetch_add(waiting.len() as u64, Ordering::Relaxed);
        error!(
            "the disk still refuses the queue at shutdown: {} verdict, action or evidence \
             records lost",
            waiting.len()
        );
    }
}

/// A disk failure in progress.
struct DiskFailure {
    since: Instant,
    logged: Instant,
    dropped: u64,
}

/// Pushes `records` to the queue (waiting for room under `block`); on a disk failure, see
/// [`write_loop`].
async fn write_records(
    records: &[Arc<Queued>],
    queue: &Mutex<DiskQueue>,
    wake: &Notify,
    space: &Notify,
    counters: &Counters,
    waiting: &mut std::collections::VecDeque<Arc<Queued>>,
    failing: &mut Option<DiskFailure>,
) {
    let mut offset = 0;
    while offset < records.len() {
        let slice: Vec<(bool, &[u8])> = records[offset..]
            .iter()
            .map(|q| (q.protected, q.bytes.as_slice()))
            .collect();
        let pushed = match queue.lock() {
            Ok(mut queue) => queue.push(&slice),
            Err(_) => return,
        };
        match pushed {
            Ok(taken) => {
                offset += taken;
                if let Some(failure) = failing.take() {
                    tracing::info!(
                        "the disk queue takes records again after {:?}; {} events were dropped \
                         meanwhile",
                        failure.since.elapsed(),
                        failure.dropped
                    );
                }
            }
            Err(err) => {
                // Nothing of what was offered is kept for sure: events are dropped, the rest
                // waits (at-least-once: one that did reach the disk is sent twice).
                let mut dropped = 0;
                for record in &records[offset..] {
                    if record.protected {
                        waiting.push_back(Arc::clone(record));
                    } else {
                        dropped += 1;
                    }
                }
                counters.dropped_disk.fetch_add(dropped, Ordering::Relaxed);
                let mut bytes: usize = waiting.iter().map(|q| q.bytes.len()).sum();
                while bytes > WAITING_MAX_BYTES {
                    let Some(oldest) = waiting.pop_front() else {
                        break;
                    };
                    bytes -= oldest.bytes.len();
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                    error!(
                        "{err}: a verdict, action or evidence record lost (memory for those waiting is full)"
                    );
                }
                counters
                    .waiting
                    .store(waiting.len() as u64, Ordering::Relaxed);
                let now = Instant::now();
                match failing {
                    None => {
                        error!(
                            "{err}: events are dropped (counted) and verdicts, actions and \
                             evidence wait in memory until the disk takes them again"
                        );
                        *failing = Some(DiskFailure {
                            since: now,
                            logged: now,
                            dropped,
                        });
                    }
                    Some(failure) => {
                        failure.dropped += dropped;
                        if now.duration_since(failure.logged) >= DISK_LOG_EVERY {
                            failure.logged = now;
                            error!(
                                "{err}: still failing; {} events dropped, {} records waiting",
                                failure.dropped,
                                waiting.len()
                            );
                        }
                    }
                }
                return;
            }
        }
        wake.notify_one();
        if offset < records.len() {
            // `block`: wait until a delivery frees space.
            space.notified().await;
        }
    }
    counters
        .waiting
        .store(waiting.len() as u64, Ordering::Relaxed);
}

struct Delivery {
    config: SinkConfig,
    sink: Sink,
    ctx: Arc<Context>,
    queue: Arc<Mutex<DiskQueue>>,
    wake: Arc<Notify>,
    space: Arc<Notify>,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    drain_timeout: Duration,
    rng: u64,
}

impl Delivery {
    /// Exponential backoff with equal jitter: half the step fixed, half random.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let retry = &self.config.retry;
        let step = retry
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(retry.max_backoff_ms);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = step / 2;
        Duration::from_millis(half + self.rng % (step - half + 1))
    }

    fn items(&self, payloads: &[Vec<u8>], schema: Schema) -> Vec<Item> {
        payloads
            .iter()
            .filter_map(|bytes| match serde_json::from_slice::<Envelope>(bytes) {
                Ok(envelope) => Some(Item {
                    doc: schema.render(&envelope, &self.ctx),
                    envelope,
                }),
                Err(err) => {
                    error!("sink {}: unreadable queued record: {err}", self.config.name);
                    self.counters.unreadable.fetch_add(1, Ordering::Relaxed);
                    None
                }
            })
            .collect()
    }

    async fn run(mut self) {
        self.deliver_until_stopped().await;
        self.sink.close().await;
    }

    async fn deliver_until_stopped(&mut self) {
        let name = self.config.name.clone();
        let mut deadline: Option<Instant> = None;
        loop {
            if deadline.is_none() && *self.stop.borrow_and_update() {
                deadline = Some(Instant::now() + self.drain_timeout);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            let batch = self.queue.lock().map_err(|_| ()).and_then(|mut q| {
                q.peek(self.config.batch.max_records, self.config.batch.max_bytes)
                    .map_err(|err| error!("sink {name}: {err}"))
            });
            let Ok(batch) = batch else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            if batch.is_empty() {
                if deadline.is_some() {
                    return;
                }
                tokio::select! {
                    () = self.wake.notified() => {}
                    _ = self.stop.changed() => {}
                }
                continue;
            }
            let items = self.items(&batch.records, self.config.schema);
            let mut attempt = 0u32;
            loop {
                let result = if items.is_empty() {
                    Ok(0)
                } else {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, self.sink.deliver(&items))
                            .await
                            .unwrap_or_else(|e| Err(SinkError::transport("shutdown", e))),
                        None => self.sink.deliver(&items).await,
                    }
                };
                match result {
                    Ok(rejected) => {
                        let c = &self.counters;
                        c.delivered.fetch_add(
                            (items.len() - rejected.min(items.len())) as u64,
                            Ordering::Relaxed,
                        );
                        c.rejected.fetch_add(rejected as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(err) if err.is_permanent() => {
                        warn!("sink {name}: {err}; {} records not sent", items.len());
                        self.counters
                            .rejected
                            .fetch_add(items.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(err) => {
                        self.counters.retries.fetch_add(1, Ordering::Relaxed);
                        if attempt.is_multiple_of(10) {
                            warn!("sink {name}: {err}; retrying (attempt {})", attempt + 1);
                        }
                        let mut wait = self.backoff(attempt);
                        attempt += 1;
                        if let Some(d) = deadline {
                            let left = d.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return;
                            }
                            wait = wait.min(left);
                        }
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            _ = self.stop.changed(), if deadline.is_none() => {
                                deadline = Some(Instant::now() + self.drain_timeout);
                            }
                        }
                    }
                }
            }
            let acked = self
                .queue
                .lock()
                .map_err(|_| ())
                .and_then(|mut q| q.ack(&batch).map_err(|err| error!("sink {name}: {err}")));
            if acked.is_ok() {
                self.space.notify_one();
            }
        }
    }
}
