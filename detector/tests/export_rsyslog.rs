//! The syslog sink against a real rsyslogd, over TCP (octet-counted frames) and TLS (gtls),
//! each run by hand on a loopback port with a private configuration writing to a file.
//!
//! rsyslog is installed by `cargo xtask test`; elsewhere a missing rsyslogd skips these tests
//! (with the reason printed), except under `CI=true` where it fails them.

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use detector::{
    event::{Body, Event, Exec, ProcessFields},
    export::{
        Exporter,
        config::{
            Destination, ExportConfig, QueueConfig, RetryConfig, SinkConfig, SyslogFormat,
            SyslogSink, SyslogTransport, TlsConfig,
        },
        queue::Fsync,
        record::{Finding, Record, Severity},
        schema::Schema,
    },
};
use time::OffsetDateTime;

/// rsyslogd, killed and reaped when dropped.
struct Rsyslogd {
    child: Child,
    out: PathBuf,
}

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rsyslogd_path() -> Option<PathBuf> {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// None (after printing why) when rsyslogd is missing outside CI.
fn rsyslogd_or_skip(test: &str) -> Option<PathBuf> {
    let path = rsyslogd_path();
    if path.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "rsyslogd is missing: `cargo xtask test` installs it"
        );
        println!("{test}: skipped: rsyslogd is not installed (cargo xtask test installs it)");
    }
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts rsyslogd with imtcp on a loopback port, writing MSGID, structured data and MSG of
/// each message to `out.log`; `tls` holds (CA, certificate, key) files for gtls.
fn start(
    binary: &Path,
    dir: &Path,
    port: u16,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
) -> Rsyslogd {
    let out = dir.join("out.log");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let (global_tls, module_tls) = match &tls {
        Some((ca, cert, key)) => (
            format!(
                " defaultNetstreamDriver=\"gtls\" defaultNetstreamDriverCAFile=\"{}\" defaultNetstreamDriverCertFile=\"{}\" defaultNetstreamDriverKeyFile=\"{}\"",
                ca.display(),
                cert.display(),
                key.display()
            ),
            " streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\"",
        ),
        None => (String::new(), ""),
    };
    let config = format!(
        r#"global(workDirectory="{work}"{global_tls})
module(load="imtcp"{module_tls})
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="fields" type="string" string="%msgid% %structured-data% %msg%\n")
if $msgid != "-" then action(type="omfile" file="{out}" template="fields")
"#,
        work = work.display(),
        out = out.display(),
    );
    let config_path = dir.join("rsyslog.conf");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(binary)
        .arg("-n")
        .arg("-f")
        .arg(&config_path)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let daemon = Rsyslogd { child, out };
    // Ready when the port takes connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return daemon;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("rsyslogd did not listen on {port}");
}

fn record(id: u64) -> Record {
    if id % 10 == 9 {
        return Record::Verdict(Finding {
            time: OffsetDateTime::now_utc(),
            severity: Severity::Critical,
            name: "shell_in_container".into(),
            summary: format!("verdict {id}: a \"shell\" | ran = bad"),
            data: serde_json::json!({ "id": id }),
        });
    }
    Record::Event(Event {
        time: OffsetDateTime::now_utc(),
        ktime_ns: id,
        process: ProcessFields {
            pid: Some(4242),
            tid: Some(4242),
            ppid: Some(1),
            uid: Some(0),
            gid: Some(0),
            ns_pid: None,
            comm: Some("sh".into()),
        },
        cgroup_id: None,
        container: None,
        pod: None,
        ancestry: Vec::new(),
        lineage: None,
        body: Body::Exec(Exec {
            filename: "/bin/sh".into(),
            argv: vec!["sh".into(), "-c".into(), format!("echo {id}")],
            argv_truncated: false,
            filename_truncated: false,
            tty: false,
            parent_cgroup_id: None,
            fileless: false,
            stdin_socket: false,
            stdout_socket: false,
            deleted: false,
        }),
    })
}

fn config(
    port: u16,
    transport: SyslogTransport,
    format: SyslogFormat,
    ca: Option<PathBuf>,
) -> ExportConfig {
    ExportConfig {
        hostname: Some("node-1".into()),
        drain_timeout_ms: 5000,
        channel_capacity: 10_000,
        state_dir: std::path::PathBuf::new(),
        sinks: vec![SinkConfig {
            name: "rsyslog".into(),
            schema: Schema::Ocsf,
            min_severity: Severity::Info,
            kinds: Vec::new(),
            queue: QueueConfig {
                fsync: Fsync::Never,
                ..QueueConfig::default()
            },
            retry: RetryConfig {
                initial_backoff_ms: 50,
                max_backoff_ms: 500,
                timeout_ms: 5000,
            },
            batch: Default::default(),
            to: Destination::Syslog(SyslogSink {
                address: format!("localhost:{port}"),
                transport,
                format,
                facility: 16,
                tls: TlsConfig {
                    ca_file: ca,
                    server_name: None,
                },
            }),
        }],
    }
}

/// Lines rsyslog wrote, once `count` of them are there.
async fn lines(out: &Path, count: usize) -> Vec<String> {
    for _ in 0..300 {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= count {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "rsyslog wrote {:?}",
        std::fs::read_to_string(out).unwrap_or_default()
    );
}

/// Sends 200 records and checks what rsyslog parsed out of each: MSGID, the uid in the
/// structured data, the body.
async fn roundtrip(binary: &Path, transport: SyslogTransport, format: SyslogFormat) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (tls, ca) = if transport == SyslogTransport::Tls {
        let files = certificates(dir.path());
        let ca = files.0.clone();
        (Some(files), Some(ca))
    } else {
        (None, None)
    };
    let daemon = start(binary, dir.path(), port, tls);
    let state = dir.path().join("state");
    let exporter = Exporter::start(&config(port, transport, format, ca), &state).unwrap();
    for id in 0..200 {
        exporter.send(record(id));
    }
    let lines = lines(&daemon.out, 200).await;
    exporter.shutdown().await;
    let mut uids = BTreeSet::new();
    for line in &lines {
        let (msgid, rest) = line.split_once(' ').unwrap();
        assert!(msgid == "exec" || msgid == "verdict", "{line}");
        let uid = rest
            .strip_prefix("[detector@32473 uid=\"")
            .and_then(|r| r.split_once('"'))
            .map(|(uid, _)| uid.to_owned())
            .unwrap_or_else(|| panic!("no uid in {line}"));
        uids.insert(uid);
        let msg = rest.split_once("] ").unwrap().1;
        match format {
            SyslogFormat::Json => {
                let doc: serde_json::Value = serde_json::from_str(msg).unwrap();
                let class = if msgid == "exec" { 1007 } else { 2004 };
                assert_eq!(doc["class_uid"], class, "{line}");
            }
            SyslogFormat::Cef => {
                assert!(msg.starts_with("CEF:0|detector|detector|"), "{line}");
                if msgid == "verdict" {
                    assert!(msg.contains("|shell_in_container|10|"), "{line}");
                    assert!(msg.contains("a \"shell\" | ran \\= bad"), "{line}");
                }
            }
        }
    }
    assert_eq!(uids.len(), 200, "every record once");
}

/// A CA and a certificate for `localhost` signed by it: (CA, certificate, key) files.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "detector test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn rsyslog_receives_octet_counted_json_over_tcp() {
    if let Some(binary) = rsyslogd_or_skip("rsyslog_receives_octet_counted_json_over_tcp") {
        roundtrip(&binary, SyslogTransport::Tcp, SyslogFormat::Json).await;
    }
}

#[tokio::test]
async fn rsyslog_receives_cef_over_tls() {
    if let Some(binary) = rsyslogd_or_skip("rsyslog_receives_cef_over_tls") {
        roundtrip(&binary, SyslogTransport::Tls, SyslogFormat::Cef).await;
    }
}
