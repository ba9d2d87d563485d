//! Loopback receivers for the export tests and benchmark: a small HTTP/1.1 server recording
//! every request (gzip bodies decoded), which can be stopped and restarted on its port, and
//! records of every kind.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use detector::{
    event::{Body, Event, Exec, ProcessFields},
    export::record::{Finding, Record, Severity},
};
use time::OffsetDateTime;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `POST`...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: BTreeMap<String, String>,
    /// Body, gunzipped when it came with `content-encoding: gzip`.
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
}

/// Decides the answer to a request: status and body.
pub type Responder = Arc<dyn Fn(&Request) -> (u16, String) + Send + Sync>;

/// Answers 200 with `{}`.
pub fn ok() -> Responder {
    Arc::new(|_| (200, "{}".into()))
}

/// A loopback HTTP server.
pub struct HttpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    responder: Responder,
    task: Option<JoinHandle<()>>,
}

impl HttpReceiver {
    /// Starts on a free loopback port.
    pub async fn start(responder: Responder) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut receiver = Self {
            addr,
            requests: Arc::default(),
            responder,
            task: None,
        };
        receiver.serve(listener);
        receiver
    }

    /// A receiver that is not listening yet on a port that was free a moment ago.
    pub async fn reserve(responder: Responder) -> Self {
        let mut receiver = Self::start(responder).await;
        receiver.stop();
        receiver
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let requests = Arc::clone(&self.requests);
        let responder = Arc::clone(&self.responder);
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        connections.spawn(connection(stream, Arc::clone(&requests), Arc::clone(&responder)));
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        }));
    }

    /// Kills the server: the listener and every connection close at once.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) if tries < 50 => {
                    tries += 1;
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("cannot listen again on {}: {err}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Bodies of the requests answered 2xx, split into lines.
    pub fn accepted_lines(&self) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| {
                String::from_utf8_lossy(&r.body)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn connection(
    mut stream: TcpStream,
    requests: Arc<Mutex<Vec<Request>>>,
    responder: Responder,
) {
    let mut buffer = Vec::new();
    loop {
        let header_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_owned();
        let path = first.next().unwrap_or_default().to_owned();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        while buffer.len() < header_end + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let raw: Vec<u8> = buffer
            .drain(..header_end + length)
            .skip(header_end)
            .collect();
        let body = if headers.get("content-encoding").is_some_and(|e| e == "gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            raw
        };
        let mut request = Request {
            method,
            path,
            headers,
            body,
            status: 0,
        };
        let (status, answer) = responder(&request);
        request.status = status;
        requests.lock().unwrap().push(request);
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// An exec event whose `ktime_ns` is `id`, the test's record id.
pub fn event(id: u64) -> Record {
    Record::Event(Event {
        time: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_000_000_000 + i128::from(id))
            .unwrap(),
        ktime_ns: id,
        process: ProcessFields {
            pid: Some(1000),
            tid: Some(1000),
            ppid: Some(1),
            uid: Some(0),
            gid: Some(0),
            ns_pid: None,
            comm: Some("sh".into()),
        },
        cgroup_id: Some(1),
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

/// A verdict whose data carries `id`.
pub fn verdict(id: u64) -> Record {
    Record::Verdict(Finding {
        time: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        severity: Severity::High,
        name: "shell_in_container".into(),
        summary: format!("verdict {id}"),
        data: serde_json::json!({ "id": id }),
    })
}

/// A verdict whose data carries `id` and `padding` bytes more: bigger than what a full disk
/// may still have room for (the tail of a page, less than one event).
pub fn padded_verdict(id: u64, padding: usize) -> Record {
    let Record::Verdict(mut finding) = verdict(id) else {
        unreachable!("verdict() makes a verdict")
    };
    finding.data["padding"] = serde_json::Value::String("x".repeat(padding));
    Record::Verdict(finding)
}

/// Waits until `done` holds, failing after `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
