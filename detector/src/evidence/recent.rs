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

/// Events of the last `window_ns` nanoseconds, per cgroup id, at most `per_cgroup` each and
/// at most `max_cgroups` cgroups (the one idle longest is dropped first).
#[derive(Debug, Clone)]
pub struct RecentEvents {
    window_ns: u64,
    per_cgroup: usize,
    max_cgroups: usize,
    rings: HashMap<u64, VecDeque<Event>>,
    dropped: u64,
}

impl RecentEvents {
    /// An empty ring.
    pub fn new(window_ns: u64, per_cgroup: usize, max_cgroups: usize) -> Self {
        Self {
            window_ns,
            per_cgroup: per_cgroup.max(1),
            max_cgroups: max_cgroups.max(1),
            rings: HashMap::new(),
            dropped: 0,
        }
    }

    /// The ring the configuration asks for, holding at most [`MAX_CGROUPS`] cgroups.
    pub fn from_config(config: &super::EvidenceConfig) -> Self {
        Self::new(
            config.recent_events_secs.saturating_mul(1_000_000_000),
            config.recent_events_per_cgroup,
            MAX_CGROUPS,
        )
    }

    /// A ring that keeps nothing: what the daemon runs with when no evidence is captured.
    pub fn off() -> Self {
        Self {
            window_ns: 0,
            per_cgroup: 1,
            max_cgroups: 0,
            rings: HashMap::new(),
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
                .min_by_key(|(_, ring)| ring.back().map_or(0, |e| e.ktime_ns))
                .map(|(id, _)| *id);
            if let Some(id) = idlest
                && let Some(ring) = self.rings.remove(&id)
            {
                self.dropped += ring.len() as u64;
            }
        }
        let ring = self.rings.entry(cgroup).or_default();
        if ring.len() >= self.per_cgroup {
            ring.pop_front();
            self.dropped += 1;
        }
        ring.push_back(event.clone());
        let now = event.ktime_ns;
        self.expire_ring(cgroup, now);
    }

    fn expire_ring(&mut self, cgroup: u64, now_ns: u64) {
        let horizon = now_ns.saturating_sub(self.window_ns);
        if let Some(ring) = self.rings.get_mut(&cgroup) {
            while ring.front().is_some_and(|e| e.ktime_ns < horizon) {
                ring.pop_front();
            }
            if ring.is_empty() {
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
            .flatten()
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
        self.rings.values().map(VecDeque::len).sum()
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
        let mut ring = RecentEvents::new(60 * S, 3, 2);
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
    fn an_off_ring_keeps_nothing() {
        let mut ring = RecentEvents::off();
        for t in 1..=5 {
            ring.push(&event(Some(7), t * S));
        }
        assert!(ring.is_empty());
        assert!(ring.for_cgroups(&[7], 5 * S).is_empty());
    }
}
