//! Scoring throughput with the default rules on a recorded mix: 20 nginx pods serving for two
//! hours (egress samples, page reads, log writes, exec probes, DNS and upstream connections,
//! log rotation) and one intrusion. Single-threaded: the engine runs on the writer thread.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use detector::{
    rules::RuleSet,
    score::{Engine, ScoreConfig},
};

fn score_mix(c: &mut Criterion) {
    let events = common::mix(20, 2);
    let rules = RuleSet::defaults().expect("the default rules compile");
    let mut group = c.benchmark_group("score");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(20);
    group.bench_function("default_rules_mix", |b| {
        b.iter(|| {
            let mut engine = Engine::new(rules.clone(), ScoreConfig::default());
            let mut records = 0usize;
            for event in &events {
                records += engine.process(black_box(event)).len();
            }
            black_box(records)
        });
    });
    group.finish();
}

criterion_group!(benches, score_mix);
criterion_main!(benches);
