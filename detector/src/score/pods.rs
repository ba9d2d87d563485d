//! Per-pod state (score, contributions, written paths, egress baseline) and its bounded store.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{
    egress::EgressBaseline,
    record::{Decision, Subject},
};
use crate::{event::Event, rules::RuleMeta};

/// Whom an event's activity is scored against: pod uid, else container id, else cgroup id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// A pod.
    Pod(&'a str),
    /// A container outside any known pod.
    Container(&'a str),
    /// A cgroup that is neither.
    Cgroup(u64),
}

impl<'a> Key<'a> {
    /// The key of an event, if it can be attributed at all.
    pub fn of(event: &'a Event) -> Option<Self> {
        if let Some(pod) = &event.pod {
            Some(Self::Pod(&pod.uid))
        } else if let Some(container) = &event.container {
            Some(Self::Container(&container.id))
        } else {
            event.cgroup_id.map(Self::Cgroup)
        }
    }
}

/// One rule's part in a pod's score, kept for verdicts.
#[derive(Debug, Clone)]
pub struct Contributor {
    /// The rule.
    pub rule: Arc<RuleMeta>,
    /// Matches in this episode.
    pub matches: u32,
    /// The first events (bounded).
    pub events: Vec<Event>,
}

/// What the engine remembers about one pod.
#[derive(Debug, Clone)]
pub struct PodState {
    /// Whom it is about.
    pub subject: Subject,
    /// Score at `scored_ns`.
    pub score: f64,
    /// When `score` was last brought up to date.
    pub scored_ns: i64,
    /// Highest decision reported in this episode.
    pub level: Decision,
    /// Rules that matched in this episode.
    pub contributors: Vec<Contributor>,
    /// Rules that matched but did not fit in `contributors`.
    pub omitted_rules: u32,
    /// Absolute paths written with write intent, for drift.
    pub written: HashSet<Box<str>>,
    /// Egress baseline.
    pub egress: EgressBaseline,
    /// Last event seen, for eviction.
    pub seen_ns: i64,
}

impl PodState {
    fn new(subject: Subject, now_ns: i64) -> Self {
        Self {
            subject,
            score: 0.0,
            scored_ns: now_ns,
            level: Decision::Log,
            contributors: Vec::new(),
            omitted_rules: 0,
            written: HashSet::new(),
            egress: EgressBaseline::default(),
            seen_ns: now_ns,
        }
    }

    /// Brings the score down to `now_ns` with the given half-life.
    pub fn decay(&mut self, now_ns: i64, half_life_s: f64) {
        let elapsed_s = now_ns.saturating_sub(self.scored_ns).max(0) as f64 * 1e-9;
        if elapsed_s > 0.0 {
            self.score *= (-elapsed_s / half_life_s).exp2();
            self.scored_ns = now_ns;
        }
    }
}

fn subject(key: Key<'_>, event: &Event) -> Subject {
    let pod = event.pod.as_ref();
    let container = event.container.as_ref();
    Subject {
        key: match key {
            Key::Pod(uid) => format!("pod:{uid}"),
            Key::Container(id) => format!("container:{id}"),
            Key::Cgroup(id) => format!("cgroup:{id}"),
        },
        namespace: pod.and_then(|p| p.namespace.clone()),
        pod: pod.and_then(|p| p.name.clone()),
        pod_uid: pod.map(|p| p.uid.clone()),
        container_id: container.map(|c| c.id.clone()),
        image: container.and_then(|c| c.image.clone()),
        cgroup_id: event.cgroup_id,
    }
}

/// Pod states by key, bounded in number.
#[derive(Debug, Default)]
pub struct Pods {
    by_pod: HashMap<Box<str>, PodState>,
    by_container: HashMap<Box<str>, PodState>,
    by_cgroup: HashMap<u64, PodState>,
}

impl Pods {
    /// Number of tracked keys.
    pub fn len(&self) -> usize {
        self.by_pod.len() + self.by_container.len() + self.by_cgroup.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state of a key, if tracked.
    pub fn get(&self, key: Key<'_>) -> Option<&PodState> {
        match key {
            Key::Pod(uid) => self.by_pod.get(uid),
            Key::Container(id) => self.by_container.get(id),
            Key::Cgroup(id) => self.by_cgroup.get(&id),
        }
    }

    /// The state of a subject by its key (`pod:<uid>`, `container:<id>`, `cgroup:<id>`), if
    /// tracked.
    pub fn by_subject_mut(&mut self, subject_key: &str) -> Option<&mut PodState> {
        let (kind, id) = subject_key.split_once(':')?;
        match kind {
            "pod" => self.by_pod.get_mut(id),
            "container" => self.by_container.get_mut(id),
            "cgroup" => self.by_cgroup.get_mut(&id.parse::<u64>().ok()?),
            _ => None,
        }
    }

    /// The state of a key, created from `event` when new (allocating only then); marks it seen
    /// at `now_ns`.
    pub fn get_or_create(&mut self, key: Key<'_>, event: &Event, now_ns: i64) -> &mut PodState {
        let new = || PodState::new(subject(key, event), now_ns);
        let state = match key {
            Key::Pod(uid) => slot(&mut self.by_pod, uid, || uid.into(), new),
            Key::Container(id) => slot(&mut self.by_container, id, || id.into(), new),
            Key::Cgroup(id) => self.by_cgroup.entry(id).or_insert_with(new),
        };
        touch(state, now_ns)
    }

    /// Forgets keys idle since before `idle_before_ns`, then the least recently seen until at
    /// most `max` remain; returns how many were forgotten.
    pub fn evict(&mut self, idle_before_ns: i64, max: usize) -> usize {
        let before = self.len();
        self.by_pod.retain(|_, s| s.seen_ns >= idle_before_ns);
        self.by_container.retain(|_, s| s.seen_ns >= idle_before_ns);
        self.by_cgroup.retain(|_, s| s.seen_ns >= idle_before_ns);
        if self.len() > max {
            let mut seen: Vec<i64> = self
                .by_pod
                .values()
                .chain(self.by_container.values())
                .chain(self.by_cgroup.values())
                .map(|s| s.seen_ns)
                .collect();
            // Evict down to 90% so that a full store is not scanned on every event.
            let keep = max - max / 10;
            let excess = seen.len() - keep;
            let (_, &mut cutoff, _) = seen.select_nth_unstable(excess - 1);
            // Older than the cutoff go; of those seen exactly at it, only as many as needed.
            let older = seen.iter().filter(|&&t| t < cutoff).count();
            let mut ties = excess - older;
            let mut keep_state = |s: &PodState| {
                if s.seen_ns == cutoff && ties > 0 {
                    ties -= 1;
                    return false;
                }
                s.seen_ns >= cutoff
            };
            self.by_pod.retain(|_, s| keep_state(s));
            self.by_container.retain(|_, s| keep_state(s));
            self.by_cgroup.retain(|_, s| keep_state(s));
        }
        before - self.len()
    }
}

/// The entry of a string key, allocating the owned key only when it is new.
fn slot<'m>(
    map: &'m mut HashMap<Box<str>, PodState>,
    key: &str,
    owned: impl FnOnce() -> Box<str>,
    new: impl FnOnce() -> PodState,
) -> &'m mut PodState {
    if !map.contains_key(key) {
        map.insert(owned(), new());
    }
    map.get_mut(key)
        .expect("the key is present: inserted above")
}

fn touch(state: &mut PodState, now_ns: i64) -> &mut PodState {
    state.seen_ns = state.seen_ns.max(now_ns);
    state
}
