//! Syslog: RFC 5424 messages over UDP (RFC 5426, one datagram each), TCP (RFC 6587
//! octet-counting: `<length> <message>`) or TLS (RFC 5425, same framing), with the record as
//! JSON or as CEF in the MSG part.
//!
//! The message: `<PRI>1 TIMESTAMP HOSTNAME detector PROCID MSGID [detector@32473 uid=".."] MSG`
//! with MSGID the record kind. TCP and TLS writes are retried on failure; UDP and plain syslog
//! have no acknowledgement, so a receiver dying with data in flight can lose it (the HTTP sinks
//! have none of this weakness).

use std::{net::IpAddr, sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpStream, UdpSocket},
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{Item, SinkError};
use crate::{
    event::Body,
    export::{
        config::{SyslogFormat, SyslogSink, SyslogTransport},
        record::{Record, Severity},
        schema::{Context, basename},
    },
};

/// The syslog severity (RFC 5424 table 2) of a record severity.
pub fn syslog_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Info => 6,
        Severity::Low => 5,
        Severity::Medium => 4,
        Severity::High => 3,
        Severity::Critical => 2,
    }
}

enum Connection {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A syslog receiver.
pub struct Syslog {
    address: String,
    transport: SyslogTransport,
    format: SyslogFormat,
    facility: u8,
    host: String,
    version: String,
    procid: u32,
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connection: Option<Connection>,
}

impl std::fmt::Debug for Syslog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syslog")
            .field("address", &self.address)
            .field("transport", &self.transport)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Syslog {
    /// A syslog sink for the configuration (reads the CA file for TLS).
    pub fn new(config: &SyslogSink, ctx: &Context, timeout: Duration) -> Result<Self, SinkError> {
        let tls = if config.transport == SyslogTransport::Tls {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(path) = &config.tls.ca_file {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| SinkError::Setup(format!("{}: {e}", path.display())))?
                {
                    let cert =
                        cert.map_err(|e| SinkError::Setup(format!("{}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| SinkError::Setup(format!("{}: {e}", path.display())))?;
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls_config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| SinkError::Setup(format!("TLS: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let host = config.tls.server_name.clone().unwrap_or_else(|| {
                config
                    .address
                    .rsplit_once(':')
                    .map_or(config.address.as_str(), |(h, _)| h)
                    .trim_matches(['[', ']'])
                    .to_owned()
            });
            let name = ServerName::try_from(host.clone())
                .map_err(|e| SinkError::Setup(format!("TLS server name {host:?}: {e}")))?;
            Some((TlsConnector::from(Arc::new(tls_config)), name))
        } else {
            None
        };
        Ok(Self {
            address: config.address.clone(),
            transport: config.transport,
            format: config.format,
            facility: config.facility,
            host: ctx.host.clone(),
            version: ctx.version.clone(),
            procid: std::process::id(),
            timeout,
            tls,
            connection: None,
        })
    }

    async fn connect(&self) -> Result<Connection, SinkError> {
        let what = || format!("syslog {}", self.address);
        let connect = async {
            match self.transport {
                SyslogTransport::Udp => {
                    let target = tokio::net::lookup_host(&self.address)
                        .await
                        .map_err(|e| SinkError::transport(what(), e))?
                        .next()
                        .ok_or_else(|| {
                            SinkError::Setup(format!("{} resolves to nothing", self.address))
                        })?;
                    let bind = if target.is_ipv6() {
                        "[::]:0"
                    } else {
                        "0.0.0.0:0"
                    };
                    let socket = UdpSocket::bind(bind)
                        .await
                        .map_err(|e| SinkError::transport(what(), e))?;
                    socket
                        .connect(target)
                        .await
                        .map_err(|e| SinkError::transport(what(), e))?;
                    Ok(Connection::Udp(socket))
                }
                SyslogTransport::Tcp => TcpStream::connect(&self.address)
                    .await
                    .map(Connection::Tcp)
                    .map_err(|e| SinkError::transport(what(), e)),
                SyslogTransport::Tls => {
                    let tcp = TcpStream::connect(&self.address)
                        .await
                        .map_err(|e| SinkError::transport(what(), e))?;
                    let Some((connector, name)) = &self.tls else {
                        return Err(SinkError::Setup("TLS is not set up".into()));
                    };
                    let stream = connector.connect(name.clone(), tcp).await.map_err(|e| {
                        SinkError::transport(format!("{}: TLS handshake", what()), e)
                    })?;
                    Ok(Connection::Tls(Box::new(stream)))
                }
            }
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|e| SinkError::transport(what(), e))?
    }

    /// The RFC 5424 message of one record.
    pub fn message(&self, item: &Item) -> String {
        let record = &item.envelope.record;
        let pri = u16::from(self.facility) * 8 + u16::from(syslog_severity(record.severity()));
        let time = record.time();
        // RFC 5424 allows at most six fractional digits.
        let time = time
            .replace_nanosecond(time.nanosecond() / 1000 * 1000)
            .unwrap_or(time);
        let timestamp = time.format(&Rfc3339).unwrap_or_else(|_| "-".into());
        let kind = serde_json::to_value(record.kind()).unwrap_or_default();
        let kind = kind.as_str().unwrap_or("-");
        let msg = match self.format {
            SyslogFormat::Json => item.doc.to_string(),
            SyslogFormat::Cef => cef(item, &self.host, &self.version),
        };
        format!(
            "<{pri}>1 {timestamp} {host} detector {procid} {kind} [detector@32473 uid=\"{uid}\" severity=\"{severity}\"] {msg}",
            host = header_field(&self.host),
            procid = self.procid,
            uid = sd_escape(&item.envelope.uid),
            severity = record.severity().caption(),
        )
    }

    /// Sends the batch (one write for TCP and TLS).
    pub async fn deliver(&mut self, batch: &[Item]) -> Result<(), SinkError> {
        if self.connection.is_none() {
            self.connection = Some(self.connect().await?);
        }
        let what = format!("syslog {}", self.address);
        let (messages, frames) = if self.transport == SyslogTransport::Udp {
            (
                batch.iter().map(|item| self.message(item)).collect(),
                Vec::new(),
            )
        } else {
            (Vec::new(), self.frames(batch))
        };
        let result = match self.connection.as_mut() {
            Some(Connection::Udp(socket)) => {
                let mut result = Ok(());
                for message in &messages {
                    if let Err(e) = socket.send(message.as_bytes()).await {
                        result = Err(SinkError::transport(what.clone(), e));
                        break;
                    }
                }
                result
            }
            Some(Connection::Tcp(stream)) => write_all(stream, &frames, self.timeout, &what).await,
            Some(Connection::Tls(stream)) => {
                write_all(stream.as_mut(), &frames, self.timeout, &what).await
            }
            None => Ok(()),
        };
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// Closes the connection cleanly (TLS `close_notify`, TCP FIN).
    pub async fn close(&mut self) {
        let shutdown = async {
            match self.connection.take() {
                Some(Connection::Tcp(mut stream)) => {
                    let _ = stream.shutdown().await;
                }
                Some(Connection::Tls(mut stream)) => {
                    let _ = stream.shutdown().await;
                }
                Some(Connection::Udp(_)) | None => {}
            }
        };
        let _ = tokio::time::timeout(self.timeout, shutdown).await;
    }

    fn frames(&self, batch: &[Item]) -> Vec<u8> {
        let mut out = Vec::with_capacity(batch.len() * 600);
        for item in batch {
            let message = self.message(item);
            out.extend_from_slice(format!("{} ", message.len()).as_bytes());
            out.extend_from_slice(message.as_bytes());
        }
        out
    }
}

async fn write_all<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    bytes: &[u8],
    timeout: Duration,
    what: &str,
) -> Result<(), SinkError> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SinkError::transport(what, e)),
        Err(e) => Err(SinkError::transport(what, e)),
    }
}

/// A header field: printable ASCII without spaces, `-` when empty.
fn header_field(text: &str) -> String {
    let field: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if field.is_empty() { "-".into() } else { field }
}

/// A structured-data parameter value: `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn sd_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A CEF header field: `\` and `|` escaped; a line break, which the header cannot carry, as a
/// space.
fn cef_header(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
}

/// A CEF extension value: `\`, `=` and line breaks escaped.
fn cef_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// The record as an ArcSight CEF line.
///
/// `dst` holds only IPv4 addresses (the standard types `src` and `dst` as IPv4 addresses); an
/// IPv6 peer goes in `c6a3`, one of the standard's custom IPv6 fields, labelled `Destination
/// IPv6 Address` (devices that speak CEF use `c6a1` for their own address and `c6a2` for the
/// source's). An IPv4-mapped address is the IPv4 address it maps.
pub fn cef(item: &Item, host: &str, version: &str) -> String {
    let record = &item.envelope.record;
    let severity = match record.severity() {
        Severity::Info => 1,
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    };
    let kind = serde_json::to_value(record.kind()).unwrap_or_default();
    let kind = kind.as_str().unwrap_or("record").to_owned();
    let mut ext: Vec<(&str, String)> = vec![
        (
            "rt",
            (record.time().unix_timestamp_nanos() / 1_000_000).to_string(),
        ),
        ("dvchost", host.to_owned()),
        ("externalId", item.envelope.uid.clone()),
    ];
    let name = match record {
        Record::Event(event) => {
            if let Some(pid) = event.process.pid {
                ext.push(("spid", pid.to_string()));
            }
            if let Some(comm) = &event.process.comm {
                ext.push(("sproc", comm.clone()));
            }
            if let Some(uid) = event.process.uid {
                ext.push(("suid", uid.to_string()));
            }
            if let Some(c) = &event.container {
                ext.push(("cs1Label", "containerId".into()));
                ext.push(("cs1", c.id.clone()));
            }
            if let Some(pod) = &event.pod {
                ext.push(("cs2Label", "pod".into()));
                ext.push((
                    "cs2",
                    format!(
                        "{}/{}",
                        pod.namespace.as_deref().unwrap_or("-"),
                        pod.name.as_deref().unwrap_or(&pod.uid)
                    ),
                ));
            }
            match &event.body {
                Body::Exec(exec) => {
                    ext.push(("filePath", exec.filename.clone()));
                    ext.push(("fname", basename(&exec.filename).to_owned()));
                    ext.push(("msg", exec.argv.join(" ")));
                    "Process launched".to_owned()
                }
                Body::Exit(exit) => {
                    ext.push(("cn1Label", "exitCode".into()));
                    ext.push((
                        "cn1",
                        exit.exit_status.unwrap_or(exit.exit_code).to_string(),
                    ));
                    "Process exited".to_owned()
                }
                Body::File(file) => {
                    ext.push(("filePath", file.path.clone()));
                    ext.push(("fname", basename(&file.path).to_owned()));
                    let op = serde_json::to_value(file.op).unwrap_or_default();
                    ext.push(("act", op.as_str().unwrap_or_default().to_owned()));
                    "File activity".to_owned()
                }
                Body::Connect(connect) => {
                    match connect.daddr.to_canonical() {
                        IpAddr::V4(v4) => ext.push(("dst", v4.to_string())),
                        IpAddr::V6(v6) => {
                            ext.push(("c6a3Label", "Destination IPv6 Address".into()));
                            ext.push(("c6a3", v6.to_string()));
                        }
                    }
                    ext.push(("dpt", connect.dport.to_string()));
                    ext.push(("proto", connect.protocol.to_uppercase()));
                    "Outbound connection".to_owned()
                }
                Body::Syscall(call) => {
                    ext.push(("act", call.op.as_str().to_owned()));
                    ext.push(("cs3Label", "syscall".into()));
                    ext.push(("cs3", call.syscall.clone()));
                    ext.push(("cs4Label", "tags".into()));
                    ext.push(("cs4", call.tags.join(" ")));
                    if let Some(path) = &call.path {
                        ext.push(("filePath", path.clone()));
                    }
                    let outcome = if call.result < 0 {
                        "failure"
                    } else {
                        "success"
                    };
                    ext.push(("outcome", outcome.to_owned()));
                    "System call".to_owned()
                }
                Body::Egress(egress) => {
                    ext.push(("out", egress.bytes.to_string()));
                    "Egress volume".to_owned()
                }
                Body::Loss(loss) => {
                    ext.push(("cnt", loss.count.to_string()));
                    ext.push(("reason", loss.source.clone()));
                    "Records lost".to_owned()
                }
            }
        }
        Record::Verdict(f) | Record::Action(f) | Record::Evidence(f) => {
            ext.push(("msg", f.summary.clone()));
            if let Value::Object(_) = f.data {
                ext.push(("cs6Label", "data".into()));
                ext.push(("cs6", f.data.to_string()));
            }
            f.name.clone()
        }
    };
    let extension: Vec<String> = ext
        .iter()
        .map(|(k, v)| format!("{k}={}", cef_value(v)))
        .collect();
    format!(
        "CEF:0|detector|detector|{}|{}|{}|{severity}|{}",
        cef_header(version),
        cef_header(&kind),
        cef_header(&name),
        extension.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{
        config::TlsConfig,
        schema::{Schema, fixtures},
    };

    fn sink(format: SyslogFormat) -> Syslog {
        Syslog::new(
            &SyslogSink {
                address: "127.0.0.1:514".into(),
                transport: SyslogTransport::Tcp,
                format,
                facility: 16,
                tls: TlsConfig::default(),
            },
            &Context::new("node-1"),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    fn item(i: usize) -> Item {
        let envelope = fixtures::all().swap_remove(i);
        Item {
            doc: Schema::Ocsf.render(&envelope, &Context::new("node-1")),
            envelope,
        }
    }

    #[test]
    fn rfc5424_header_and_octet_counting() {
        let sink = sink(SyslogFormat::Json);
        let message = sink.message(&item(0));
        let prefix = format!(
            "<134>1 2023-11-14T22:13:20.123456Z node-1 detector {} exec [detector@32473 uid=\"test-0\" severity=\"Informational\"] {{",
            std::process::id()
        );
        assert!(message.starts_with(&prefix), "{message}");
        let frames = sink.frames(&[item(0), item(7)]);
        let text = String::from_utf8(frames).unwrap();
        let (len, rest) = text.split_once(' ').unwrap();
        let len: usize = len.parse().unwrap();
        assert!(
            rest[len..]
                .split_once(' ')
                .unwrap()
                .1
                .starts_with("<131>1 ")
        );
    }

    #[test]
    fn cef_escapes_and_maps() {
        let line = cef(&item(4), "node-1", "0.1.0");
        assert!(
            line.starts_with("CEF:0|detector|detector|0.1.0|connect|Outbound connection|1|"),
            "{line}"
        );
        assert!(line.contains("dst=10.0.0.9 dpt=443"), "{line}");
        let verdict = cef(&item(7), "node-1", "0.1.0");
        assert!(verdict.contains("|shell_in_container|8|"), "{verdict}");
        assert!(
            verdict.contains("cs6={\"pod\":{\"name\":\"web-7d9f\"},\"score\":80}"),
            "{verdict}"
        );
        // The mount fixture: the operation, the call, its tags and path, whether it worked.
        let mount = cef(&item(20), "node-1", "0.1.0");
        assert!(
            mount.starts_with("CEF:0|detector|detector|0.1.0|syscall|System call|3|"),
            "{mount}"
        );
        for part in [
            "act=mount",
            "cs3Label=syscall cs3=mount",
            "cs4Label=tags cs4=bind rec fstype:none",
            "filePath=/host",
            "outcome=success",
        ] {
            assert!(mount.contains(part), "{part} missing from {mount}");
        }
        assert_eq!(cef_value("a=b\\c\nd"), "a\\=b\\\\c\\nd");
        assert_eq!(cef_header("a|b\\c\nd"), "a\\|b\\\\c d");
    }
}
