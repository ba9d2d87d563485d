//! Containment latency: N incidents on N pods through the real dispatcher and `kube::Client`
//! over HTTP to the project's test API server, measured from the deciding event's kernel
//! timestamp (taken just before the verdict is handed over) to the kernel block in place and
//! to every API step done, as the journal records them (`CLOCK_BOOTTIME`).
//!
//! As root the block goes into the real kernel quarantine map (the sensors are loaded for it,
//! and cgroup ids no cgroup can have are used); otherwise a stand-in records it, and the output
//! says so.
//!
//! ```text
//! cargo bench -p tests --bench containment [-- --incidents N --interval-ms MS --report PATH
//!     --no-cluster-budget]
//! ```
//!
//! Each incident takes a unit of the cluster budget's Lease before its API steps (one GET and
//! one PUT, a node's takes one at a time); `--no-cluster-budget` measures without it. The
//! report goes to `target/bench/containment.json` in the workspace unless `--report` says.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use detector::{
    clock::Clock,
    config::SensorsConfig,
    contain::{ContainConfig, Containment, NetworkBlock, dispatcher::OwnPod, journal},
    sensors::{ProgramSet, Sensors},
};
use serde_json::json;
use tests::{
    apiserver::ApiServer,
    contain::{RecordingBlock, contain_verdict},
};

/// Cgroup ids are inode numbers of cgroupfs directories: far below this.
const FIRST_FAKE_CGROUP: u64 = 1 << 62;

struct Args {
    incidents: u64,
    interval: Duration,
    report: PathBuf,
    cluster_budget: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        incidents: 200,
        interval: Duration::from_millis(10),
        report: tests::target_dir().join("bench/containment.json"),
        cluster_budget: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--incidents" => args.incidents = value()?.parse()?,
            "--interval-ms" => args.interval = Duration::from_millis(value()?.parse()?),
            "--report" => args.report = value()?.into(),
            "--no-cluster-budget" => args.cluster_budget = false,
            // What `cargo bench` passes to every bench target.
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; known: --incidents --interval-ms --report \
                 --no-cluster-budget"
            ),
        }
    }
    Ok(args)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e6
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server = rt.block_on(ApiServer::start())?;
    let client = {
        let _guard = rt.enter();
        detector::attribution::pod_watch::client_from(kube::Config::new(server.url().parse()?))?
    };
    for i in 0..args.incidents {
        let (pod, node) = (format!("p{i}"), format!("node-{i}"));
        server.put(
            "api/v1",
            "nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}, "spec": {}}),
        );
        server.put(
            "api/v1",
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "shop", "uid": format!("{pod}-uid"),
                    "labels": {"app": pod}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
                "status": {"phase": "Running"}}),
        );
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // The sensors own the quarantine map; they stay loaded while the dispatcher uses it.
    let mut sensors = if root {
        Some(Sensors::load(
            &SensorsConfig::default(),
            ProgramSet::Sensors,
        )?)
    } else {
        None
    };
    let block: Box<dyn NetworkBlock> = match sensors.as_mut() {
        Some(sensors) => Box::new(sensors.take_quarantine()?),
        None => Box::new(RecordingBlock::default()),
    };
    let dir = tempfile::tempdir()?;
    let mut config = ContainConfig {
        warmup_s: 0,
        journal_dir: dir.path().to_owned(),
        node_name: Some("node-0".into()),
        ..ContainConfig::default()
    };
    config.budget.max = u32::try_from(args.incidents)? + 1;
    config.cluster_budget.max = config.budget.max;
    config.cluster_budget.enabled = args.cluster_budget;
    let handle = {
        let _guard = rt.enter();
        Containment::start_with(
            config,
            block,
            Some(client),
            dir.path(),
            OwnPod {
                namespace: Some("detector".into()),
                name: Some("detector-bench".into()),
                uid: Some("detector-bench-uid".into()),
            },
        )?
    };
    eprintln!(
        "{} incidents, one every {:?}, cluster budget {}, kernel block in {}",
        args.incidents,
        args.interval,
        if args.cluster_budget { "on" } else { "off" },
        if root {
            "the real quarantine map"
        } else {
            "a stand-in (not root)"
        }
    );
    for i in 0..args.incidents {
        let v = contain_verdict("shop", &format!("p{i}"));
        handle.on_verdict(&v, Clock::boot_now_ns(), vec![FIRST_FAKE_CGROUP + i]);
        std::thread::sleep(args.interval);
    }
    handle.flush();
    drop(handle);
    let (entries, _) = journal::read_from(&dir.path().join(journal::JOURNAL_FILE), 0)?;
    let records = journal::replay(&entries);
    let mut block = Vec::new();
    let mut api = Vec::new();
    let mut failed = 0;
    for record in records.values() {
        failed += usize::from(!record.steps.iter().all(|(_, o)| o.ok()));
        if let (Some(b), Some(c)) = (record.kernel_block_ns, record.completed_ns) {
            block.push(b.saturating_sub(record.event_ktime_ns));
            api.push(c.saturating_sub(record.event_ktime_ns));
        }
    }
    if block.is_empty() {
        bail!("no incident completed: {records:#?}");
    }
    block.sort_unstable();
    api.sort_unstable();
    let row = |name: &str, v: &[u64]| {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} |",
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.99),
            *v.last().unwrap() as f64 / 1e6
        );
    };
    println!(
        "\n## containment latency from the deciding event, {} incidents ({} with a failed step), ms",
        block.len(),
        failed
    );
    println!("| to | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    row("kernel block in place", &block);
    row("every API step done", &api);
    let report = json!({
        "incidents": block.len(),
        "failed": failed,
        "real_kernel_map": root,
        "cluster_budget": args.cluster_budget,
        "kernel_block_ms": {"p50": percentile(&block, 0.5), "p99": percentile(&block, 0.99)},
        "api_steps_ms": {"p50": percentile(&api, 0.5), "p99": percentile(&api, 0.99)},
    });
    if let Some(parent) = args.report.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.report, serde_json::to_string_pretty(&report)?)?;
    println!("report: {}", args.report.display());
    Ok(())
}
