//! `detector-demo`: the whole detect-and-contain story on one machine, with no cluster.
//!
//! As root it starts a private dockerd, imports a busybox image, starts the project's test
//! Kubernetes API server (with a kubeconfig for it), puts a Node, a Deployment, a ReplicaSet and
//! a pod `shop/web-...` into it, starts `detector run` in cluster mode against the test server,
//! then runs the pod's container (a real start while the daemon watches) under a kubepods-style
//! cgroup parent (`--network none`), fills in the pod's container id, plays an attack inside the
//! container with `docker exec`, then prints
//! the timeline: the pod's events, alerts, the verdict, each containment step with its latency
//! from the deciding event, the API server's resulting state, the evidence bundle and its
//! verification, and lines of `/metrics`.
//!
//! Exits non-zero when an expected stage did not happen. Everything it creates (containers,
//! images, cgroups, dockerd, daemon, temporary files) is removed at the end, failure or not.

use std::{
    ffi::OsStr,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use tests::{apiserver::ApiServer, daemon::Daemon, docker::Dockerd};

const NAMESPACE: &str = "shop";
const NODE: &str = "demo-node-1";
const IMAGE: &str = "detector-demo/web:1";
const SHADOW: &[u8] = b"root:$6$demo$2yQ4kq0X1v3m9e8cJ7sLwW0yFzq1:19700:0:99999:7:::\n";

/// The attacker's script, run in the container with `docker exec` (not the detector). Debian's
/// static busybox `wget` crashes (SIGSEGV) before it connects; `nc` makes the connect attempt.
/// Loopback only: the container has no network (`--network none`).
const ATTACK: &str = "cat /etc/shadow > /dev/null; \
echo payload > /dev/shm/.stage; \
echo '/tmp/.hook.so' > /etc/ld.so.preload; \
/bin/busybox wget -q -T 2 -O /dev/null http://127.0.0.1:8080/ 2>/dev/null; \
/bin/busybox nc -w 1 127.0.0.1 8080 < /dev/null 2>/dev/null; \
echo 'echo owned' | sh; \
printf '#!/bin/sh\\necho dropped\\n' > /tmp/dropper.sh; /bin/busybox chmod +x /tmp/dropper.sh; /tmp/dropper.sh; \
true";

fn main() {
    let started = Instant::now();
    let result = demo();
    match result {
        Ok(()) => {
            println!(
                "\ndemo passed in {:.1} s; everything it created is removed",
                started.elapsed().as_secs_f64()
            );
        }
        Err(err) => {
            eprintln!(
                "\ndemo FAILED after {:.1} s: {err:#}",
                started.elapsed().as_secs_f64()
            );
            std::process::exit(1);
        }
    }
}

/// A directory removed on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.0 GET on loopback; status code and body.
fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A fresh UUID-shaped pod uid (version 4 layout), from the clock and the pid.
fn pod_uid() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = nanos ^ (u128::from(std::process::id()) << 64);
    let hex = format!(
        "{:032x}",
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    );
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// What the event is about, in a few words.
fn event_what(e: &Value) -> String {
    match str_of(&e["kind"]) {
        "exec" => {
            let argv: Vec<&str> = e["argv"]
                .as_array()
                .map(|a| a.iter().map(str_of).collect())
                .unwrap_or_default();
            format!("{}  argv={:?}", str_of(&e["filename"]), argv)
        }
        "file" => format!(
            "{} {}{}",
            str_of(&e["op"]),
            str_of(&e["path"]),
            if e["write"] == true { " (write)" } else { "" }
        ),
        "connect" | "network" => format!(
            "{}:{}{}",
            e["daddr"].as_str().unwrap_or("?"),
            e["dport"],
            if e["blocked"] == true { " BLOCKED" } else { "" }
        ),
        "egress" => format!("{} bytes, {} packets", e["bytes"], e["packets"]),
        "exit" => match e["signal"].as_u64() {
            Some(signal) => format!("killed by signal {signal}"),
            None => format!("exit_status={}", e["exit_status"]),
        },
        _ => String::new(),
    }
}

/// Milliseconds between two `CLOCK_BOOTTIME` stamps.
fn ms_after(later: u64, earlier: u64) -> String {
    if later >= earlier {
        format!("+{:.2} ms", (later - earlier) as f64 / 1e6)
    } else {
        format!("-{:.2} ms", (earlier - later) as f64 / 1e6)
    }
}

fn demo() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "run it as root: it loads eBPF programs and starts dockerd"
    );
    let detector = std::env::current_exe()?
        .parent()
        .context("no directory of the demo binary")?
        .join("detector");
    ensure!(
        detector.exists(),
        "{} is missing: cargo build -p detector -p tests --bins",
        detector.display()
    );
    let work = WorkDir(std::env::temp_dir().join(format!("detector-demo-{}", std::process::id())));
    fs::create_dir_all(&work.0)?;
    let dir = work.0.clone();
    let t0 = Instant::now();
    let stage = |what: &str| println!("[{:6.2} s] {what}", t0.elapsed().as_secs_f64());

    // 1. A private dockerd and a busybox image.
    let Some(mut dockerd) = Dockerd::start("demo") else {
        bail!("cannot start dockerd (see above)");
    };
    stage(&format!("dockerd up at {}", dockerd.socket().display()));
    dockerd.import_busybox(IMAGE, &[("/etc/shadow", SHADOW)])?;
    stage(&format!("image {IMAGE} imported (busybox)"));

    // 2. The test API server, a kubeconfig for it, the node and the workload.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let api = runtime.block_on(ApiServer::start())?;
    let kubeconfig = dir.join("kubeconfig");
    fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: demo\n  cluster:\n    server: {}\ncontexts:\n- name: demo\n  context:\n    cluster: demo\n    user: demo\n    namespace: {NAMESPACE}\ncurrent-context: demo\nusers:\n- name: demo\n  user: {{}}\n",
            api.url()
        ),
    )?;
    api.put(
        "api/v1",
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
            "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    api.put(
        "api/v1",
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    );
    let deployment = api.put(
        "apis/apps/v1",
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NAMESPACE, "labels": {"app": "web"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": IMAGE}]}}}}),
    );
    let hash = "7d4b9c6f5d";
    let rs_name = format!("web-{hash}");
    let rs = api.put(
        "apis/apps/v1",
        "replicasets",
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs_name, "namespace": NAMESPACE,
                "labels": {"app": "web", "pod-template-hash": hash},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                    "uid": deployment["metadata"]["uid"], "controller": true}]},
            "spec": {"replicas": 1,
                "selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}},
                "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": hash}},
                    "spec": {"containers": [{"name": "web", "image": IMAGE}]}}}}),
    );
    let uid = pod_uid();
    let pod_name = format!("{rs_name}-x7k2p");
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": NAMESPACE, "uid": uid,
            "labels": {"app": "web", "pod-template-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                "uid": rs["metadata"]["uid"], "controller": true}]},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": IMAGE}]},
        "status": {"phase": "Pending", "qosClass": "BestEffort"}});
    api.put("api/v1", "pods", pod.clone());
    stage(&format!(
        "test API server at {}: node {NODE}, deployment web -> replicaset {rs_name} -> pod {NAMESPACE}/{pod_name} (uid {uid})",
        api.url()
    ));

    // 3. The daemon, in cluster mode against the test server.
    let output = dir.join("events.jsonl");
    let journal_dir = dir.join("incidents");
    let evidence_dir = dir.join("evidence");
    let metrics_port = free_port()?;
    let config = dir.join("config.yaml");
    fs::write(
        &config,
        format!(
            "attribution:\n  kubernetes: true\n  node_name: {NODE}\ncontain:\n  warmup_s: 0\n  node_name: {NODE}\n  journal_dir: {}\nevidence:\n  out_dir: {}\n  docker_socket: {}\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\n",
            journal_dir.display(),
            evidence_dir.display(),
            dockerd.socket().display()
        ),
    )?;
    let mut daemon = Daemon::start(
        &detector,
        &config,
        &output,
        &[
            ("KUBECONFIG", kubeconfig.as_os_str()),
            ("NODE_NAME", OsStr::new(NODE)),
        ],
    )?;
    let synced = wait_for(Duration::from_secs(30), || {
        http_get(metrics_port, "/readyz")
            .ok()
            .filter(|(code, _)| *code == 200)
    });
    ensure!(
        synced.is_some(),
        "the daemon's /readyz never said ready (pod cache not synced?)"
    );
    stage(&format!(
        "detector running (pid {}), cluster mode, pod cache synced, metrics on 127.0.0.1:{metrics_port}",
        daemon.pid()
    ));

    // 4. The pod's container, started while the daemon runs (as a kubelet starts pods on a
    //    node the detector already watches), under a kubepods-style cgroup parent, with no
    //    network. The runtime's own set-up in its cgroup is attributed to the runtime.
    let parent = dockerd.cgroup_parent(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        uid.replace('-', "_")
    ));
    let id = dockerd.cli(&[
        "run",
        "-d",
        "--network",
        "none",
        "--cgroup-parent",
        &parent,
        "--name",
        "web",
        IMAGE,
        "sh",
        "-c",
        "exec sleep 600",
    ])?;
    pod["status"] = json!({"phase": "Running", "qosClass": "BestEffort",
        "containerStatuses": [{"name": "web", "containerID": format!("docker://{id}"),
            "image": IMAGE, "imageID": "", "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {}}}]});
    api.put("api/v1", "pods", pod);
    stage(&format!(
        "container {} running under /{parent}, pod status updated with docker://{}",
        &id[..12],
        &id[..12]
    ));

    // 5. The attack, inside the container.
    stage("attacker: docker exec web sh -c '<attack>'");
    for line in ATTACK.split("; ") {
        println!("           $ {line}");
    }
    let out = dockerd
        .command()
        .args(["exec", "web", "sh", "-c", ATTACK])
        .output()?;
    println!(
        "           > {}",
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .replace('\n', " | ")
    );

    // 6. Wait for the response: verdict, completed playbook, evidence bundle.
    let verdict = wait_for(Duration::from_secs(20), || {
        read_lines(&output)
            .into_iter()
            .find(|l| l["kind"] == "verdict" && l["decision"] == "contain")
    });
    let journal_path = journal_dir.join("journal.jsonl");
    let completed = wait_for(Duration::from_secs(30), || {
        let entries = read_lines(&journal_path);
        entries
            .iter()
            .any(|e| e["entry"] == "completed")
            .then_some(entries)
    });
    let bundle = wait_for(Duration::from_secs(60), || {
        fs::read_dir(&evidence_dir).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.join("manifest.json.sha256").exists())
        })
    });
    stage("response observed; the attacker tries the network again:");
    let retry = dockerd
        .command()
        .args([
            "exec",
            "web",
            "/bin/busybox",
            "nc",
            "-w",
            "2",
            "127.0.0.1",
            "8080",
        ])
        .stdin(Stdio::null())
        .output()?;
    println!(
        "           $ nc 127.0.0.1 8080 -> {}",
        String::from_utf8_lossy(&retry.stderr)
            .trim()
            .replace('\n', " | ")
    );
    // The kernel counters reach /metrics with the sampler (sample_interval_ms, 1 s).
    std::thread::sleep(Duration::from_millis(1200));
    let metrics = http_get(metrics_port, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let (_, log) = daemon.stop();
    let lines = read_lines(&output);

    // 7. The timeline.
    let mut problems = Vec::new();
    println!("\n== events of pod {NAMESPACE}/{pod_name}");
    let base = lines
        .first()
        .and_then(|l| l["ktime_ns"].as_u64())
        .unwrap_or(0);
    let verdict_ns = verdict.as_ref().and_then(|v| v["ktime_ns"].as_u64());
    let origin = verdict_ns.unwrap_or(base);
    let pod_events: Vec<&Value> = lines
        .iter()
        .filter(|l| l["pod"]["uid"] == uid.as_str())
        .collect();
    for e in pod_events.iter().take(60) {
        println!(
            "  {:>12}  {:<8} {:<10} {}",
            ms_after(e["ktime_ns"].as_u64().unwrap_or(0), origin),
            str_of(&e["kind"]),
            str_of(&e["comm"]),
            event_what(e)
        );
    }
    if pod_events.len() > 60 {
        println!("  ... {} more", pod_events.len() - 60);
    }
    if let Some(e) = pod_events.first() {
        println!(
            "  (attributed: pod {}/{} owner {} {}, container {} runtime {})",
            str_of(&e["pod"]["namespace"]),
            str_of(&e["pod"]["name"]),
            str_of(&e["pod"]["owner"]["kind"]),
            str_of(&e["pod"]["owner"]["name"]),
            e["container"]["id"]
                .as_str()
                .map_or("-", |c| &c[..12.min(c.len())]),
            str_of(&e["container"]["runtime"])
        );
    }
    println!("\n== alerts");
    for a in lines.iter().filter(|l| l["kind"] == "alert") {
        println!(
            "  {:>12}  {:<26} {:<6} {:<20} score {:>5.1}  {}",
            ms_after(a["ktime_ns"].as_u64().unwrap_or(0), origin),
            str_of(&a["rule"]["id"]),
            str_of(&a["rule"]["technique"]),
            str_of(&a["rule"]["tactic"]),
            a["score"].as_f64().unwrap_or(0.0),
            str_of(&a["decision"])
        );
    }
    println!("\n== verdict");
    match &verdict {
        Some(v) => println!(
            "  {}  decision {} score {:.1} on {}/{}: {}",
            str_of(&v["ts"]),
            str_of(&v["decision"]),
            v["score"].as_f64().unwrap_or(0.0),
            str_of(&v["subject"]["namespace"]),
            str_of(&v["subject"]["pod"]),
            str_of(&v["reason"])
        ),
        None => {
            println!("  none");
            problems.push("no contain verdict".to_owned());
        }
    }
    println!("\n== containment (journal; latency from the deciding event's ktime_ns)");
    let entries = completed.unwrap_or_else(|| read_lines(&journal_path));
    let mut kernel_block_done = false;
    for e in &entries {
        let at = match (e["boot_ns"].as_u64(), verdict_ns) {
            (Some(b), Some(v)) => ms_after(b, v),
            _ => "?".into(),
        };
        let what = match str_of(&e["entry"]) {
            "step" => {
                let outcome = &e["outcome"];
                let status = str_of(&outcome["status"]);
                if e["step"] == "kernel_block" && status == "done" {
                    kernel_block_done = true;
                }
                let detail = outcome["detail"]
                    .as_str()
                    .or(outcome["why"].as_str())
                    .or(outcome["error"].as_str())
                    .unwrap_or("");
                format!("step {:<20} {:<14} {detail}", str_of(&e["step"]), status)
            }
            "opened" => format!(
                "opened incident {} on node {}",
                str_of(&e["incident"]),
                str_of(&e["node"])
            ),
            other => other.to_owned(),
        };
        println!("  {at:>12}  {what}");
    }
    if !kernel_block_done {
        problems.push("kernel block step not done".to_owned());
    }
    if entries.iter().all(|e| e["entry"] != "completed") {
        problems.push("playbook not completed".to_owned());
    }

    println!("\n== API server state");
    let pod_now = api.object("api/v1", "pods", NAMESPACE, &pod_name);
    let labels = pod_now
        .as_ref()
        .map(|p| p["metadata"]["labels"].clone())
        .unwrap_or(Value::Null);
    println!("  pod {NAMESPACE}/{pod_name} labels: {labels}");
    if let Some(p) = &pod_now {
        let annotations: Vec<String> = p["metadata"]["annotations"]
            .as_object()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| format!("{k}={}", str_of(v)))
                    .collect()
            })
            .unwrap_or_default();
        println!("  pod annotations: {}", annotations.join(", "));
    }
    if labels["quarantine"] != "true" {
        problems.push("pod not labeled quarantine=true".to_owned());
    }
    let policies: Vec<String> = api
        .snapshot()
        .iter()
        .filter(|(k, _)| k.plural == "networkpolicies")
        .map(|(k, v)| {
            format!(
                "{}/{} (podSelector {})",
                k.namespace, k.name, v["spec"]["podSelector"]
            )
        })
        .collect();
    println!(
        "  NetworkPolicy: {}",
        if policies.is_empty() {
            "none".to_owned()
        } else {
            policies.join(", ")
        }
    );
    let node = api
        .object("api/v1", "nodes", "", NODE)
        .unwrap_or(Value::Null);
    println!(
        "  node {NODE}: unschedulable={} labels={}",
        node["spec"]["unschedulable"], node["metadata"]["labels"]
    );
    if node["spec"]["unschedulable"] != true {
        problems.push("node not cordoned".to_owned());
    }

    println!("\n== evidence");
    match &bundle {
        Some(bundle) => {
            let verify = Command::new(&detector)
                .args(["evidence", "verify"])
                .arg(bundle)
                .output()?;
            println!("  bundle {}", bundle.display());
            let manifest: Value = fs::read(bundle.join("manifest.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            if let Some(files) = manifest["files"].as_array() {
                println!("  {} files, complete={}", files.len(), manifest["complete"]);
            }
            for l in String::from_utf8_lossy(&verify.stdout).lines().take(5) {
                println!("  verify: {l}");
            }
            println!(
                "  detector evidence verify: {}",
                if verify.status.success() {
                    "OK"
                } else {
                    "FAILED"
                }
            );
            if !verify.status.success() {
                problems.push("evidence bundle does not verify".to_owned());
            }
        }
        None => {
            println!("  no bundle in {}", evidence_dir.display());
            problems.push("no evidence bundle".to_owned());
        }
    }

    println!("\n== /metrics");
    for l in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("detector_verdicts_total")
                || l.starts_with("detector_containment_kernel_block_seconds_count")
                || l.starts_with("detector_containment_api_seconds_count")
                || l.starts_with("detector_quarantine_denied_connects_total"))
    }) {
        println!("  {l}");
    }

    if !problems.is_empty() {
        eprintln!("\ndaemon log (last 40 lines):");
        for l in log.iter().rev().take(40).rev() {
            eprintln!("  {l}");
        }
        bail!("{}", problems.join("; "));
    }
    drop(api);
    drop(runtime);
    drop(dockerd);
    Ok(())
}
