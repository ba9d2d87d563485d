//! Per-pod scoring: rule matches and egress spikes add weight to a pod's score, which decays
//! exponentially; crossing `alert` or `contain` (or a `contain_immediately` rule) yields a
//! [`Verdict`] listing the rules and events behind it.
//!
//! [`Engine`] is sans-IO: it is fed events and returns records, and its only clock is the
//! events' own time, so a replay of recorded events scores exactly as the live stream did.
//! Memory is bounded: pods idle for `idle_evict_s` and the least recently seen beyond
//! `max_pods` are forgotten, and every per-pod collection has a cap.

pub mod config;
pub mod egress;
pub mod pods;
pub mod record;
pub mod replay;

use std::sync::Arc;

use time::OffsetDateTime;

use self::pods::{Contributor, Key, PodState, Pods};
pub use self::{
    config::{EgressConfig, ScoreConfig},
    record::{Alert, Contribution, Decision, MitreTag, Record, Subject, Verdict},
};
use crate::{
    event::{Body, Event, FileOperation},
    rules::{Facts, RuleMeta, RuleSet, Severity},
};

/// How often (in events) idle pods are looked for.
const EVICT_EVERY: u64 = 4096;

/// Counters of what the engine did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Events processed.
    pub events: u64,
    /// Rule matches (egress spikes included).
    pub matches: u64,
    /// Verdicts produced.
    pub verdicts: u64,
    /// Pods forgotten.
    pub evicted: u64,
    /// Written paths not remembered because a pod's set was full.
    pub written_dropped: u64,
}

/// The scoring engine: rules, settings and per-pod state.
#[derive(Debug)]
pub struct Engine {
    rules: RuleSet,
    config: ScoreConfig,
    egress_rule: Arc<RuleMeta>,
    pods: Pods,
    stats: EngineStats,
    matched: Vec<Arc<RuleMeta>>,
    /// Pods whose contain verdict was refused for a reason that lapses: subject key, when it
    /// lapses (wall-clock ns), the reason.
    deferred: Vec<(String, i64, String)>,
}

impl Engine {
    /// An engine with these rules and settings (validate the settings first).
    pub fn new(rules: RuleSet, config: ScoreConfig) -> Self {
        let egress_rule = Arc::new(RuleMeta {
            id: "egress-spike".into(),
            description: "Egress rate far above the pod's learned baseline".into(),
            tactic: "Exfiltration".into(),
            technique: "T1041".into(),
            severity: Severity::High,
            weight: config.egress.weight,
            contain_immediately: false,
        });
        Self {
            rules,
            config,
            egress_rule,
            pods: Pods::default(),
            stats: EngineStats::default(),
            matched: Vec::new(),
            deferred: Vec::new(),
        }
    }

    /// Containment refused the contain verdict of `subject_key` for a reason that lapses at
    /// `until_ns` (wall clock): the pod is decided again then ([`Engine::redecide`]), and a
    /// match before then that keeps it above the threshold reports `contain` again as well.
    pub fn defer(&mut self, subject_key: &str, until_ns: i64, why: &str) {
        let Some(state) = self.pods.by_subject_mut(subject_key) else {
            return;
        };
        // The episode goes on, but its `contain` was not acted on: not reported as made.
        state.level = state.level.min(Decision::Alert);
        self.deferred.retain(|(key, ..)| key != subject_key);
        self.deferred
            .push((subject_key.to_owned(), until_ns, why.to_owned()));
    }

    /// Decides again about the pods whose deferral lapsed by `now` (`now_ktime_ns` on the
    /// kernel's clock): a `contain` verdict for each whose decayed score is still at or above
    /// the threshold, or whose episode has a contain-immediately rule, and that no match
    /// reported since.
    pub fn redecide(&mut self, now: OffsetDateTime, now_ktime_ns: u64) -> Vec<Record> {
        let now_ns = i64::try_from(now.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(_, until, _)| *until <= now_ns);
        self.deferred = waiting;
        let mut records = Vec::new();
        for (key, _, why) in due {
            let config = &self.config;
            let Some(state) = self.pods.by_subject_mut(&key) else {
                continue;
            };
            if state.level >= Decision::Contain {
                continue;
            }
            state.decay(now_ns, config.half_life_s);
            let immediate = state
                .contributors
                .iter()
                .find(|c| c.rule.contain_immediately)
                .map(|c| c.rule.id.clone());
            if immediate.is_none() && state.score < config.contain {
                continue;
            }
            let reason = match immediate {
                Some(rule) => {
                    format!("decided again once {why} lapsed: rule {rule} contains immediately")
                }
                None => format!(
                    "decided again once {why} lapsed: score {:.1} is still at or above the contain threshold {:.1}",
                    state.score, config.contain
                ),
            };
            state.level = Decision::Contain;
            self.stats.verdicts += 1;
            let mut verdict = verdict_at(state, config, now, now_ktime_ns, Decision::Contain);
            verdict.reason = reason;
            records.push(Record::Verdict(Box::new(verdict)));
        }
        records
    }

    /// What the engine did so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Pods currently tracked.
    pub fn tracked(&self) -> usize {
        self.pods.len()
    }

    /// The current (decayed) score of the pod an event belongs to, at that event's time.
    pub fn score_of(&self, event: &Event) -> f64 {
        let now = time_ns(event);
        Key::of(event)
            .and_then(|k| self.pods.get(k))
            .map_or(0.0, |s| {
                let mut s = s.clone();
                s.decay(now, self.config.half_life_s);
                s.score
            })
    }

    /// Scores one event; returns an alert per matched rule and a verdict when a pod's decision
    /// goes up. Allocates nothing for an event that matches nothing and writes nothing new.
    pub fn process(&mut self, event: &Event) -> Vec<Record> {
        let now = time_ns(event);
        self.stats.events += 1;
        if self.stats.events.is_multiple_of(EVICT_EVERY) || self.pods.len() > self.config.max_pods {
            self.evict(now);
        }
        let key = Key::of(event);
        let drift = self.observe(key, event, now);
        let mut records = Vec::new();
        let facts = Facts { event, drift };
        // The scratch list keeps its capacity, so matching allocates nothing once warm.
        let mut matched = std::mem::take(&mut self.matched);
        matched.extend(self.rules.matching(&facts).map(|r| Arc::clone(r.meta())));
        if let Some(key) = key {
            for rule in matched.drain(..) {
                self.add(key, event, now, rule, None, &mut records);
            }
        }
        matched.clear();
        self.matched = matched;
        let spike = key.and_then(|key| self.egress_spike(key, event, now));
        if let (Some(key), Some(spike)) = (key, spike) {
            let detail = format!(
                "egress {:.0} B/s against a baseline of {:.0} B/s",
                spike.rate, spike.baseline
            );
            let rule = Arc::clone(&self.egress_rule);
            self.add(key, event, now, rule, Some(detail), &mut records);
        }
        records
    }

    fn evict(&mut self, now: i64) {
        let idle_ns = i64::try_from(self.config.idle_evict_s.saturating_mul(1_000_000_000))
            .unwrap_or(i64::MAX);
        let evicted = self
            .pods
            .evict(now.saturating_sub(idle_ns), self.config.max_pods);
        self.stats.evicted += evicted as u64;
    }

    /// Updates drift state; returns whether the event executes a file written in its pod.
    fn observe(&mut self, key: Option<Key<'_>>, event: &Event, now: i64) -> bool {
        let Some(key) = key else { return false };
        match &event.body {
            Body::Exec(exec) => self
                .pods
                .get(key)
                .is_some_and(|s| s.written.contains(exec.filename.as_str())),
            Body::File(file) => {
                let written = match file.op {
                    FileOperation::Open if file.write => Some(file.path.as_str()),
                    // A new name for a file (`ln /bin/sh /tmp/x`, `ln -s`) is what `cp`
                    // would have written: executed by it, it is drift too.
                    FileOperation::Rename | FileOperation::Link | FileOperation::Symlink => {
                        file.target.as_deref()
                    }
                    FileOperation::Chmod => Some(file.path.as_str()),
                    _ => None,
                };
                if let Some(path) = written.filter(|p| p.starts_with('/')) {
                    self.remember_written(key, event, now, path);
                }
                false
            }
            _ => false,
        }
    }

    fn remember_written(&mut self, key: Key<'_>, event: &Event, now: i64, path: &str) {
        let max = self.config.max_written_paths;
        let state = self.pods.get_or_create(key, event, now);
        if state.written.contains(path) {
            return;
        }
        if state.written.len() < max {
            state.written.insert(path.into());
        } else {
            self.stats.written_dropped += 1;
        }
    }

    fn egress_spike(&mut self, key: Key<'_>, event: &Event, now: i64) -> Option<egress::Spike> {
        let Body::Egress(egress) = &event.body else {
            return None;
        };
        if !self.config.egress.enabled {
            return None;
        }
        let state = self.pods.get_or_create(key, event, now);
        state
            .egress
            .observe(&self.config.egress, now, egress.bytes, egress.interval_ms)
    }

    /// Adds a match to a pod's score and reports it.
    fn add(
        &mut self,
        key: Key<'_>,
        event: &Event,
        now: i64,
        rule: Arc<RuleMeta>,
        detail: Option<String>,
        records: &mut Vec<Record>,
    ) {
        self.stats.matches += 1;
        let config = &self.config;
        let state = self.pods.get_or_create(key, event, now);
        state.decay(now, config.half_life_s);
        if state.score < config.alert {
            state.level = Decision::Log;
        }
        if state.score < config.alert * 0.01 {
            state.contributors.clear();
            state.omitted_rules = 0;
        }
        state.score += rule.weight;
        contribute(state, config, &rule, event);
        let decision = decide(state.score, &rule, config, state.level);
        records.push(Record::Alert(Box::new(Alert {
            time: event.time,
            ktime_ns: event.ktime_ns,
            subject: state.subject.clone(),
            rule: RuleMeta::clone(&rule),
            score: state.score,
            decision,
            detail,
            event: event.clone(),
        })));
        if decision > state.level {
            state.level = decision;
            self.stats.verdicts += 1;
            records.push(Record::Verdict(Box::new(verdict(
                state, config, &rule, event, decision,
            ))));
        }
    }
}

/// Wall-clock nanoseconds of an event, the engine's only clock.
fn time_ns(event: &Event) -> i64 {
    i64::try_from(event.time.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn decide(score: f64, rule: &RuleMeta, config: &ScoreConfig, level: Decision) -> Decision {
    let by_score = if rule.contain_immediately || score >= config.contain {
        Decision::Contain
    } else if score >= config.alert {
        Decision::Alert
    } else {
        Decision::Log
    };
    by_score.max(level)
}

fn contribute(state: &mut PodState, config: &ScoreConfig, rule: &Arc<RuleMeta>, event: &Event) {
    if let Some(c) = state
        .contributors
        .iter_mut()
        .find(|c| Arc::ptr_eq(&c.rule, rule))
    {
        c.matches += 1;
        if c.events.len() < config.max_events_per_rule {
            c.events.push(event.clone());
        }
    } else if state.contributors.len() < config.max_rules_per_verdict {
        state.contributors.push(Contributor {
            rule: Arc::clone(rule),
            matches: 1,
            events: if config.max_events_per_rule > 0 {
                vec![event.clone()]
            } else {
                Vec::new()
            },
        });
    } else {
        state.omitted_rules += 1;
    }
}

fn verdict(
    state: &PodState,
    config: &ScoreConfig,
    rule: &RuleMeta,
    event: &Event,
    decision: Decision,
) -> Verdict {
    let mut verdict = verdict_at(state, config, event.time, event.ktime_ns, decision);
    if rule.contain_immediately {
        verdict.reason = format!("rule {} contains immediately", rule.id);
    }
    verdict
}

/// A verdict of `state` made at `time`, its reason the threshold the score reached.
fn verdict_at(
    state: &PodState,
    config: &ScoreConfig,
    time: OffsetDateTime,
    ktime_ns: u64,
    decision: Decision,
) -> Verdict {
    let threshold = match decision {
        Decision::Contain => ("contain", config.contain),
        _ => ("alert", config.alert),
    };
    let reason = format!(
        "score {:.1} reached {} threshold {:.1}",
        state.score, threshold.0, threshold.1
    );
    let mut mitre: Vec<MitreTag> = Vec::new();
    for c in &state.contributors {
        let tag = MitreTag {
            tactic: c.rule.tactic.clone(),
            technique: c.rule.technique.clone(),
        };
        if !mitre.contains(&tag) {
            mitre.push(tag);
        }
    }
    Verdict {
        time,
        ktime_ns,
        subject: state.subject.clone(),
        score: state.score,
        decision,
        reason,
        mitre,
        rules: state
            .contributors
            .iter()
            .map(|c| Contribution {
                rule: RuleMeta::clone(&c.rule),
                matches: c.matches,
                events: c.events.clone(),
            })
            .collect(),
        omitted_rules: state.omitted_rules,
    }
}

#[cfg(test)]
mod tests;
