//! The event pipeline: tasks joined by a bounded channel of event batches.
//!
//! - The ring reader wakes on the ring buffer's fd, drains every record, decodes it and sends
//!   batches on. It never blocks the kernel side: when the consumer is slow, records wait in the
//!   ring buffer, and what does not fit there is counted by the kernel as lost and reported as
//!   a `loss` event. Records that cannot be decoded become `loss` events too.
//! - The sampler reads the in-kernel counters every interval: egress bytes per cgroup become
//!   `egress` events, increases of the loss counters become `loss` events. It owns the
//!   [`Sensors`], so the programs stay attached exactly as long as the pipeline runs.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use detector_common::{EventKind, RING_DRAIN_INTERVAL_MS, STAT_COUNT, Stat, TrafficCounters};
use tokio::{
    io::unix::AsyncFd,
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tracing::{info, warn};

use crate::{
    clock::Clock,
    decode::decode,
    event::{Body, Egress, Event, Loss, ProcessFields},
    metrics::Metrics,
    paths::PathClasses,
    sensors::{Counters, SensorError, Sensors},
};

/// Events per batch at most.
const BATCH_MAX: usize = 4096;
/// Batches in flight between the pipeline and its consumer (and at most
/// `sensors.queue_bytes` of events: see [`Batch`]).
const CHANNEL_BATCHES: usize = 64;

/// Decoded events on their way to the consumer. The queue between the pipeline and its
/// consumer holds at most `sensors.queue_bytes` of them ([`Event::approx_bytes`]): the reader
/// waits for room, records wait in the ring buffer meanwhile, and what does not fit there is
/// counted by the kernel as lost. Taking the events out ([`Batch::into_events`], or iterating)
/// gives the room back.
#[derive(Debug)]
pub struct Batch {
    events: Vec<Event>,
    _room: Option<OwnedSemaphorePermit>,
}

impl Batch {
    /// The events, the queue's room given back.
    pub fn into_events(self) -> Vec<Event> {
        self.events
    }
}

impl std::ops::Deref for Batch {
    type Target = [Event];

    fn deref(&self) -> &[Event] {
        &self.events
    }
}

impl IntoIterator for Batch {
    type Item = Event;
    type IntoIter = std::vec::IntoIter<Event>;

    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

/// The queue's room in bytes, taken by each batch sent and given back as it is taken out.
#[derive(Debug, Clone)]
struct Room {
    bytes: Arc<Semaphore>,
    max: u32,
}

impl Room {
    fn new(max_bytes: u64) -> Self {
        let max = u32::try_from(max_bytes)
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Self {
            bytes: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// Waits for room for `events` (a batch bigger than the whole queue waits for all of it).
    async fn batch(&self, events: Vec<Event>) -> Batch {
        // What the batch holds, its vector's spare room too.
        let bytes: usize = events.iter().map(Event::approx_bytes).sum::<usize>()
            + (events.capacity() - events.len()) * size_of::<Event>();
        let wanted = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max.max(1));
        let room = self.bytes.clone().acquire_many_owned(wanted).await.ok();
        Batch {
            events,
            _room: room,
        }
    }
}
/// Samples without egress after which a cgroup's counters are dropped.
const EGRESS_IDLE_SAMPLES: u32 = 60;

/// A running pipeline.
pub struct Pipeline {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the pipeline counted, reported when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Records lost in the kernel, per kind.
    pub lost: BTreeMap<&'static str, u64>,
    /// Write-opens suppressed as repeats.
    pub suppressed_writes: u64,
}

impl Pipeline {
    /// Starts the tasks; events arrive in batches on the returned receiver, which closes once
    /// the pipeline has stopped and every batch was delivered.
    /// The queue holds the default `sensors.queue_bytes`.
    pub fn spawn(
        sensors: Sensors,
        sample_interval: Duration,
    ) -> Result<(Self, mpsc::Receiver<Batch>), SensorError> {
        let queue_bytes = crate::config::SensorsConfig::default().queue_bytes;
        Self::spawn_with_metrics(sensors, sample_interval, queue_bytes, None)
    }

    /// [`Pipeline::spawn`] with a queue of `queue_bytes`, also handing every sample of the
    /// kernel counters to `metrics`.
    pub fn spawn_with_metrics(
        mut sensors: Sensors,
        sample_interval: Duration,
        queue_bytes: u64,
        metrics: Option<Metrics>,
    ) -> Result<(Self, mpsc::Receiver<Batch>), SensorError> {
        let ring = sensors.take_events()?;
        let counters = sensors.take_counters()?;
        // SAFETY: the ring buffer owns its map fd, which stays open and refers to the same map
        // for as long as the `AsyncFd` holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|err| SensorError::RingPoll(err.into_parts().1))?;
        let clock = Clock::measure();
        let classes = sensors.path_classes().clone();
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let (stop, stopped) = watch::channel(false);
        let room = Room::new(queue_bytes);
        let reader = tokio::spawn(read_ring(
            ring,
            clock,
            classes,
            (tx.clone(), room.clone()),
            stopped.clone(),
        ));
        let sampler = tokio::spawn(sample(
            sensors,
            counters,
            clock,
            sample_interval,
            (tx, room),
            stopped,
            metrics,
        ));
        Ok((
            Self {
                stop,
                tasks: vec![reader, sampler],
            },
            rx,
        ))
    }

    /// Stops the tasks after a last drain and a last sample, and detaches the programs.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(err) = task.await {
                warn!(%err, "pipeline task failed");
            }
        }
    }
}

/// Where the pipeline's tasks send their batches: the channel and the room in it.
type Out = (mpsc::Sender<Batch>, Room);

/// Sends `events` once the queue has room for them; false when the consumer is gone.
async fn send((tx, room): &Out, events: Vec<Event>) -> bool {
    tx.send(room.batch(events).await).await.is_ok()
}

async fn read_ring(
    mut ring: AsyncFd<RingBuf<MapData>>,
    clock: Clock,
    classes: PathClasses,
    tx: Out,
    mut stopped: watch::Receiver<bool>,
) {
    let mut decode_losses: HashMap<String, u64> = HashMap::new();
    // The kernel wakes the reader only once a sixteenth of the ring waits (see
    // `GLOBAL_WAKEUP_BYTES`); below that, records are drained on this tick.
    let mut tick = tokio::time::interval(Duration::from_millis(RING_DRAIN_INTERVAL_MS));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => {
                if !drain(ring.get_mut(), &clock, &classes, &tx, &mut decode_losses).await {
                    return;
                }
            }
            guard = ring.readable_mut() => {
                let Ok(mut guard) = guard else { break };
                if !drain(guard.get_inner_mut(), &clock, &classes, &tx, &mut decode_losses).await {
                    return;
                }
                guard.clear_ready();
            }
        }
    }
    // Records submitted before the stop are still delivered, for `STOP_DRAIN`; what is left
    // then (a backlog the analysis could not take in time) is counted, not decoded.
    let deadline = Instant::now() + STOP_DRAIN;
    let ring = ring.get_mut();
    let mut left = 0u64;
    loop {
        let batch = take_batch(ring, &clock, &classes, &mut decode_losses);
        if batch.is_empty() {
            break;
        }
        let n = batch.len() as u64;
        match tokio::time::timeout_at(deadline, send(&tx, batch)).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                left += n;
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    while ring.next().is_some() {
        left += 1;
    }
    if left > 0 {
        warn!(
            records = left,
            "stopping: records left in the ring buffer after {STOP_DRAIN:?} are not analysed"
        );
        let loss = shutdown_loss(&clock, "ring", left, "left in the ring buffer at shutdown");
        let _ = tx.0.try_send(Batch {
            events: vec![loss],
            _room: None,
        });
    }
}

/// How long the pipeline's last drain at a stop may take: part of the daemon's bound on
/// stopping whatever the backlog.
const STOP_DRAIN: Duration = Duration::from_millis(500);

/// A `loss` event for `count` records or events of `kind` a stop did not analyse.
pub fn shutdown_loss(clock: &Clock, kind: &str, count: u64, reason: &str) -> Event {
    node_event(
        clock,
        None,
        Body::Loss(Loss {
            source: "shutdown".to_owned(),
            lost_kind: kind.to_owned(),
            count,
            total: count,
            reason: Some(reason.to_owned()),
        }),
    )
}

/// Drains the ring buffer; false when the consumer is gone.
async fn drain(
    ring: &mut RingBuf<MapData>,
    clock: &Clock,
    classes: &PathClasses,
    tx: &Out,
    decode_losses: &mut HashMap<String, u64>,
) -> bool {
    loop {
        let batch = take_batch(ring, clock, classes, decode_losses);
        if batch.is_empty() {
            return true;
        }
        let full = batch.len() == BATCH_MAX;
        if !send(tx, batch).await {
            return false;
        }
        if !full {
            return true;
        }
    }
}

/// Up to [`BATCH_MAX`] records of the ring buffer, decoded.
fn take_batch(
    ring: &mut RingBuf<MapData>,
    clock: &Clock,
    classes: &PathClasses,
    decode_losses: &mut HashMap<String, u64>,
) -> Vec<Event> {
    let mut batch = Vec::with_capacity(64);
    while batch.len() < BATCH_MAX {
        let Some(record) = ring.next() else { break };
        match decode(&record, clock) {
            Ok(mut event) => {
                // A path the kernel left to user space: dropped when, normalized, it is
                // not sensitive after all.
                if let Body::File(file) = &mut event.body
                    && !classes.reclassify(file)
                {
                    continue;
                }
                batch.push(event);
            }
            Err(err) => {
                let kind = err.record_kind();
                let total = decode_losses.entry(kind.clone()).or_default();
                *total += 1;
                warn!(%err, "undecodable record");
                batch.push(node_event(
                    clock,
                    None,
                    Body::Loss(Loss {
                        source: "decode".to_owned(),
                        lost_kind: kind,
                        count: 1,
                        total: *total,
                        reason: Some(err.to_string()),
                    }),
                ));
            }
        }
    }
    batch
}

fn node_event(clock: &Clock, cgroup_id: Option<u64>, body: Body) -> Event {
    let ktime_ns = Clock::boot_now_ns();
    Event {
        time: clock.wall_time(ktime_ns),
        ktime_ns,
        process: ProcessFields::default(),
        cgroup_id,
        container: None,
        pod: None,
        ancestry: Vec::new(),
        lineage: None,
        body,
    }
}

/// The ring-buffer loss counter of every record kind, and the kind's name in loss events.
const LOST_KINDS: [(Stat, &str); 6] = [
    (Stat::LostExec, "exec"),
    (Stat::LostExit, "exit"),
    (Stat::LostFile, "file"),
    (Stat::LostRename, "rename"),
    (Stat::LostConnect, "connect"),
    (Stat::LostSyscall, "syscall"),
];
const _: () = assert!((Stat::lost(EventKind::Syscall) as u32) < STAT_COUNT);

/// Egress counters of a cgroup at the previous sample.
#[derive(Default)]
struct EgressSeen {
    counters: TrafficCounters,
    idle_samples: u32,
}

struct Sampler {
    counters: Counters,
    clock: Clock,
    last_stats: Vec<u64>,
    last_egress: HashMap<u64, EgressSeen>,
    last_sample: Instant,
}

impl Sampler {
    fn sample(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let now = Instant::now();
        let interval_ms = now.duration_since(self.last_sample).as_millis() as u64;
        self.last_sample = now;

        let stats = self.counters.stats();
        for (stat, kind) in LOST_KINDS {
            let total = stats.get(stat as usize).copied().unwrap_or(0);
            let before = self.last_stats.get(stat as usize).copied().unwrap_or(0);
            if total > before {
                events.push(node_event(
                    &self.clock,
                    None,
                    Body::Loss(Loss {
                        source: "ring_buffer".to_owned(),
                        lost_kind: kind.to_owned(),
                        count: total - before,
                        total,
                        reason: None,
                    }),
                ));
            }
        }
        self.last_stats = stats;

        let egress = self.counters.egress();
        let mut idle = Vec::new();
        for (cgroup_id, counters) in &egress {
            let seen = self.last_egress.entry(*cgroup_id).or_default();
            if counters.bytes > seen.counters.bytes {
                events.push(node_event(
                    &self.clock,
                    Some(*cgroup_id),
                    Body::Egress(Egress {
                        bytes: counters.bytes - seen.counters.bytes,
                        packets: counters.packets.saturating_sub(seen.counters.packets),
                        interval_ms,
                        total_bytes: counters.bytes,
                    }),
                ));
                seen.counters = *counters;
                seen.idle_samples = 0;
            } else {
                if seen.idle_samples == 0 && seen.counters.bytes > 0 {
                    // The first quiet interval after traffic is a sample too: a burst followed
                    // by silence closes its window now, rather than at the cgroup's next send.
                    events.push(node_event(
                        &self.clock,
                        Some(*cgroup_id),
                        Body::Egress(Egress {
                            bytes: 0,
                            packets: 0,
                            interval_ms,
                            total_bytes: counters.bytes,
                        }),
                    ));
                }
                seen.idle_samples += 1;
                if seen.idle_samples > EGRESS_IDLE_SAMPLES {
                    idle.push(*cgroup_id);
                }
            }
        }
        for cgroup_id in idle {
            self.counters.forget_egress(cgroup_id);
            self.last_egress.remove(&cgroup_id);
        }
        events
    }

    fn totals(&self) -> Totals {
        Totals {
            lost: LOST_KINDS
                .iter()
                .map(|(stat, kind)| {
                    (
                        *kind,
                        self.last_stats.get(*stat as usize).copied().unwrap_or(0),
                    )
                })
                .collect(),
            suppressed_writes: self
                .last_stats
                .get(Stat::SuppressedWrites as usize)
                .copied()
                .unwrap_or(0),
        }
    }
}

async fn sample(
    mut sensors: Sensors,
    counters: Counters,
    clock: Clock,
    interval: Duration,
    tx: Out,
    mut stopped: watch::Receiver<bool>,
    metrics: Option<Metrics>,
) {
    let mut sampler = Sampler {
        counters,
        clock,
        last_stats: vec![0; STAT_COUNT as usize],
        last_egress: HashMap::new(),
        last_sample: Instant::now(),
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = ticker.tick() => {
                if let Err(err) = sensors.refresh_watch_roots() {
                    warn!(%err, "cannot refresh container cgroup roots");
                }
                let events = sampler.sample();
                if let Some(metrics) = &metrics {
                    metrics.observe_kernel_stats(&sampler.last_stats);
                    metrics.set_queue_depth("batches", tx.0.max_capacity() - tx.0.capacity());
                }
                if !events.is_empty() && !send(&tx, events).await {
                    break;
                }
            }
        }
    }
    let events = sampler.sample();
    if !events.is_empty() {
        send(&tx, events).await;
    }
    let totals = sampler.totals();
    drop(sensors);
    info!(lost = ?totals.lost, suppressed_writes = totals.suppressed_writes, "eBPF programs detached");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_kind_has_its_loss_counter_reported() {
        let kinds: Vec<EventKind> = (0..64)
            .filter_map(|v| EventKind::try_from(v).ok())
            .collect();
        for kind in &kinds {
            let stat = Stat::lost(*kind);
            assert!(LOST_KINDS.iter().any(|(s, _)| *s == stat), "{kind:?}");
        }
        assert_eq!(kinds.len(), LOST_KINDS.len());
    }

    #[tokio::test]
    async fn the_queue_holds_its_bytes_and_taking_events_out_makes_room() {
        let clock = Clock::with_offset(0);
        let events = |n: usize| -> Vec<Event> {
            (0..n)
                .map(|_| {
                    node_event(
                        &clock,
                        Some(7),
                        Body::Exit(crate::event::Exit {
                            exit_code: 0,
                            exit_status: Some(0),
                            signal: None,
                        }),
                    )
                })
                .collect()
        };
        let size = events(1)[0].approx_bytes();
        let room = Room::new(100 * size as u64);
        let first = room.batch(events(60)).await;
        let second = room.batch(events(40)).await;
        // Full: the next batch waits until one is taken out.
        let waiting = tokio::time::timeout(Duration::from_millis(100), room.batch(events(10)));
        assert!(waiting.await.is_err(), "a batch got past a full queue");
        assert_eq!(first.into_events().len(), 60);
        let third = tokio::time::timeout(Duration::from_secs(1), room.batch(events(10)))
            .await
            .expect("room once a batch was taken out");
        assert_eq!((second.len(), third.len()), (40, 10));
        // A batch bigger than the whole queue waits for all of it, not forever.
        drop((second, third));
        let huge = tokio::time::timeout(Duration::from_secs(1), room.batch(events(500))).await;
        assert_eq!(huge.expect("a huge batch goes through alone").len(), 500);
    }
}
