//! [`RecentEvents`]: the last minutes of events of every cgroup, kept in memory by the daemon
//! so that a capture can include what led up to the detection.
//!
//! Pure: time is the events' own kernel timestamp (`ktime_ns`, `CLOCK_BOOTTIME`) or one the
//! caller passes, never read from a clock here.

use std::collections::{HashMap, VecDeque};

use crate::event::Event;

/// Most cgroups [`RecentEvents::from_config`] keeps events for (a node runs at most a few
/// hundred pods).
pub const MAX_CGROUPS: usize = 4096;

/// Events of the last `window_ns` nanoseconds, per cgroup id, at most `per_cgroup` each, at
/// most `max_cgroups` cgroups (the one idle longest is dropped first) and at most `max_bytes`
/// in all ([`Event::approx_bytes`]): past the budget, the cgroup holding the most gives up its
/// oldest events first, so a busy pod cannot push a quiet pod's lead-up out.
#[derive(Debug, Clone)]
pub struct RecentEvents {
    window_ns: u64,
    per_cgroup: usize,
    max_cgroups: usize,
    max_bytes: usize,
    rings: HashMap<u64, Ring>,
    bytes: usize,
    dropped: u64,
}

/// One cgroup's events, oldest first, with their size.
#[derive(Debug, Clone, Default)]
struct Ring {
    events: VecDeque<(usize, Event)>,
    bytes: usize,
}

impl Ring {
    fn pop_front(&mut self) -> Option<usize> {
        let (size, _) = self.events.pop_front()?;
        self.bytes -= size;
        Some(size)
    }

    fn newest_ns(&self) -> u64 {
        self.events.back().map_or(0, |(_, e)| e.ktime_ns)
    }
}

impl RecentEvents {
    /// An empty ring.
    pub fn new(window_ns: u64, per_cgroup: usize, max_cgroups: usize, max_bytes: usize) -> Self {
        Self {
            window_ns,
            per_cgroup: per_cgroup.max(1),
            max_cgroups: max_cgroups.max(1),
            max_bytes,
            rings: HashMap::new(),
            bytes: 0,
            dropped: 0,
        }
    }

    /// The ring the configuration asks for, holding at most [`MAX_CGROUPS`] cgroups.
    pub fn from_config(config: &super::EvidenceConfig) -> Self {
        Self::new(
            config.recent_events_secs.saturating_mul(1_000_000_000),
            config.recent_events_per_cgroup,
            MAX_CGROUPS,
            usize::try_from(config.recent_events_bytes).unwrap_or(usize::MAX),
        )
    }

    /// A ring that keeps nothing: what the daemon runs with when no evidence is captured.
    pub fn off() -> Self {
        Self {
            window_ns: 0,
            per_cgroup: 1,
            max_cgroups: 0,
            max_bytes: 0,
            rings: HashMap::new(),
            bytes: 0,
            dropped: 0,
        }
    }

    /// Keeps an event of a cgroup; events without a cgroup (node-level) are not kept.
    pub fn push(&mut self, event: &Event) {
        let Some(cgroup) = event.cgroup_id else {
            return;
        };
        if self.max_cgroups == 0 {
            return;
        }
        if !self.rings.contains_key(&cgroup) && self.rings.len() >= self.max_cgroups {
            let idlest = self
                .rings
                .iter()
                .min_by_key(|(_, ring)| ring.newest_ns())
                .map(|(id, _)| *id);
            if let Some(id) = idlest {
                self.remove(id);
            }
        }
        let size = event.approx_bytes();
        let ring = self.rings.entry(cgroup).or_default();
        if ring.events.len() >= self.per_cgroup
            && let Some(freed) = ring.pop_front()
        {
            self.bytes -= freed;
            self.dropped += 1;
        }
        ring.events.push_back((size, event.clone()));
        ring.bytes += size;
        self.bytes += size;
        let now = event.ktime_ns;
        self.expire_ring(cgroup, now);
        if self.bytes > self.max_bytes {
            self.shed();
        }
    }

    /// Back under the byte budget, with room to spare (an eighth) so that the next pushes do
    /// not shed again at once: the cgroup holding the most gives up its oldest events.
    fn shed(&mut self) {
        let target = self.max_bytes - self.max_bytes / 8;
        while self.bytes > target {
            let Some((&id, biggest)) = self.rings.iter().max_by_key(|(_, ring)| ring.bytes) else {
                break;
            };
            // Down to the next biggest's size (or the target), so that one scan frees much.
            let next = self
                .rings
                .iter()
                .filter(|(other, _)| **other != id)
                .map(|(_, ring)| ring.bytes)
                .max()
                .unwrap_or(0);
            let keep = next.max(biggest.bytes.saturating_sub(self.bytes - target));
            let ring = self.rings.get_mut(&id).expect("the ring just found");
            // At least one event each round, so that rings of equal size shed in turn.
            let mut shed = 0;
            while (ring.bytes > keep || shed == 0)
                && let Some(freed) = ring.pop_front()
            {
                self.bytes -= freed;
                self.dropped += 1;
                shed += 1;
            }
            if ring.events.is_empty() {
                self.rings.remove(&id);
            }
        }
    }

    fn remove(&mut self, cgroup: u64) {
        if let Some(ring) = self.rings.remove(&cgroup) {
            self.bytes -= ring.bytes;
            self.dropped += ring.events.len() as u64;
        }
    }

    fn expire_ring(&mut self, cgroup: u64, now_ns: u64) {
        let horizon = now_ns.saturating_sub(self.window_ns);
        if let Some(ring) = self.rings.get_mut(&cgroup) {
            while ring
                .events
                .front()
                .is_some_and(|(_, e)| e.ktime_ns < horizon)
            {
                if let Some(freed) = ring.pop_front() {
                    self.bytes -= freed;
                }
            }
            if ring.events.is_empty() {
                self.rings.remove(&cgroup);
            }
        }
    }

    /// Forgets everything older than the window before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        let ids: Vec<u64> = self.rings.keys().copied().collect();
        for id in ids {
            self.expire_ring(id, now_ns);
        }
    }

    /// The events of these cgroups within the window before `now_ns`, oldest first.
    pub fn for_cgroups(&self, cgroups: &[u64], now_ns: u64) -> Vec<Event> {
        let horizon = now_ns.saturating_sub(self.window_ns);
        let mut out: Vec<Event> = cgroups
            .iter()
            .filter_map(|id| self.rings.get(id))
            .flat_map(|ring| ring.events.iter().map(|(_, e)| e))
            .filter(|e| e.ktime_ns >= horizon)
            .cloned()
            .collect();
        out.sort_by_key(|e| e.ktime_ns);
        out
    }

    /// Events pushed out by the bounds (not by age) so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Number of events held.
    pub fn len(&self) -> usize {
        self.rings.values().map(|ring| ring.events.len()).sum()
    }

    /// Bytes held ([`Event::approx_bytes`] of each event).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::event::{Body, Exit, ProcessFields};

    fn event(cgroup: Option<u64>, ktime_ns: u64) -> Event {
        Event {
            time: OffsetDateTime::UNIX_EPOCH,
            ktime_ns,
            process: ProcessFields::default(),
            cgroup_id: cgroup,
            container: None,
            pod: None,
            ancestry: Vec::new(),
            lineage: None,
            body: Body::Exit(Exit {
                exit_code: 0,
                exit_status: Some(0),
                signal: None,
            }),
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn keeps_the_window_per_cgroup_within_bounds() {
        let mut ring = RecentEvents::new(60 * S, 3, 2, usize::MAX);
        ring.push(&event(None, S));
        assert!(ring.is_empty());
        for t in 1..=5 {
            ring.push(&event(Some(7), t * S));
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.dropped(), 2);
        ring.push(&event(Some(8), 10 * S));
        let got = ring.for_cgroups(&[7, 8], 10 * S);
        assert_eq!(
            got.iter().map(|e| e.ktime_ns / S).collect::<Vec<_>>(),
            [3, 4, 5, 10]
        );
        // A third cgroup evicts the one idle longest (7).
        ring.push(&event(Some(9), 11 * S));
        assert!(ring.for_cgroups(&[7], 11 * S).is_empty());
        assert_eq!(ring.for_cgroups(&[8, 9], 11 * S).len(), 2);
        // Age: only the last minute is returned, and expire forgets the rest.
        assert!(ring.for_cgroups(&[8], 71 * S).is_empty());
        ring.expire(71 * S);
        assert_eq!(ring.len(), 1);
    }

    #[test]
    fn past_the_byte_budget_the_biggest_cgroup_gives_up_its_oldest_events() {
        let size = event(Some(1), 0).approx_bytes();
        // Room for 100 events.
        let mut ring = RecentEvents::new(600 * S, 1000, 10, 100 * size);
        for t in 1..=10 {
            ring.push(&event(Some(2), t));
        }
        for t in 11..=200 {
            ring.push(&event(Some(1), t));
        }
        assert!(ring.bytes() <= 100 * size, "{} bytes", ring.bytes());
        assert_eq!(ring.bytes(), ring.len() * size);
        // The quiet cgroup keeps its lead-up; the busy one its newest events.
        assert_eq!(ring.for_cgroups(&[2], 200).len(), 10);
        let busy = ring.for_cgroups(&[1], 200);
        assert_eq!(busy.last().map(|e| e.ktime_ns), Some(200));
        assert!(busy.len() >= 70, "{} kept", busy.len());
        assert_eq!(ring.dropped() as usize, 200 - ring.len());
        // Expiry gives the bytes back.
        ring.expire(10_000 * S);
        assert_eq!((ring.len(), ring.bytes()), (0, 0));
    }

    #[test]
    fn cgroups_of_equal_size_shed_in_turn() {
        let size = event(Some(1), 0).approx_bytes();
        let mut ring = RecentEvents::new(600 * S, 1000, 10, 64 * size);
        for t in 0..1000 {
            ring.push(&event(Some(1 + t % 4), t));
        }
        assert!(ring.bytes() <= 64 * size, "{} bytes", ring.bytes());
        for cgroup in 1..=4 {
            let kept = ring.for_cgroups(&[cgroup], 1000).len();
            assert!((10..=20).contains(&kept), "cgroup {cgroup}: {kept}");
        }
    }

    #[test]
    fn an_event_counts_what_its_strings_and_labels_hold() {
        let bare = event(Some(1), 0);
        let mut labelled = bare.clone();
        labelled.pod = Some(crate::event::Pod {
            uid: "u".repeat(36),
            labels: [("app".to_owned(), "x".repeat(100))].into(),
            ..crate::event::Pod::default()
        });
        assert!(labelled.approx_bytes() >= bare.approx_bytes() + 36 + 103);
    }

    #[test]
    fn an_off_ring_keeps_nothing() {
        let mut ring = RecentEvents::off();
        for t in 1..=5 {
            ring.push(&event(Some(7), t * S));
        }
        assert!(ring.is_empty());
        assert!(ring.for_cgroups(&[7], 5 * S).is_empty());
    }
}
