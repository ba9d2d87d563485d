//! The daemon's own output, to standard output or appended to a file: JSON lines (every event,
//! alert and verdict, one object a line) or, for people, the lines of [`pretty`] (alerts,
//! verdicts, containment steps and evidence bundles; events only when asked).
//!
//! Containment journal entries and evidence bundles are produced off the analysis thread; in
//! the pretty format they reach the output through [`Notices`], a bounded queue the analysis
//! thread drains after each batch and tick, so their producers never wait on the terminal.

use std::{
    ffi::OsStr,
    fs::OpenOptions,
    io::{self, IsTerminal as _, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
};

use serde::Serialize;
use time::{OffsetDateTime, UtcOffset};
use tracing::warn;

use crate::{
    config::{OutputConfig, OutputFormat},
    contain::journal::Entry,
    event::Event,
    score::{
        Subject,
        record::{Record, Verdict},
    },
};

pub mod pretty;

use self::pretty::Style;

/// Notices waiting for the analysis thread at most; more are dropped and counted (the journal
/// and the bundle directory keep them).
const NOTICE_CAPACITY: usize = 1024;

/// Failure to write events.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output file could not be opened.
    #[error("cannot open output {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Writing failed.
    #[error("cannot write events to {path}: {source}")]
    Write {
        /// The file, or `-`.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// The format in use, `auto` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON lines.
    Json,
    /// Lines for people.
    Pretty,
}

impl Format {
    /// What `format` means for an output at `path`: `auto` is `pretty` only for standard output
    /// (`-`) on a terminal.
    pub fn resolve(format: OutputFormat, path: &Path, stdout_is_terminal: bool) -> Self {
        match format {
            OutputFormat::Json => Self::Json,
            OutputFormat::Pretty => Self::Pretty,
            OutputFormat::Auto if is_stdout(path) && stdout_is_terminal => Self::Pretty,
            OutputFormat::Auto => Self::Json,
        }
    }
}

/// Whether to colour: only a terminal, and not when `NO_COLOR` is set to anything but the
/// empty string (<https://no-color.org>).
pub fn use_color(to_terminal: bool, no_color: Option<&OsStr>) -> bool {
    to_terminal && no_color.is_none_or(OsStr::is_empty)
}

fn is_stdout(path: &Path) -> bool {
    path == Path::new("-")
}

/// Something to show that does not come from the analysis thread; only the pretty format shows
/// these (JSON lines carry events, alerts and verdicts, as the SIEM export carries the rest).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A containment journal entry, with its incident's subject when known.
    Action {
        /// The entry.
        entry: Box<Entry>,
        /// The pod it concerns.
        subject: Option<Subject>,
    },
    /// An evidence bundle was written.
    Evidence(Box<EvidenceNotice>),
}

/// An evidence bundle written for a `contain` verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct EvidenceNotice {
    /// When the capture ended.
    pub time: OffsetDateTime,
    /// The incident id the bundle is named after.
    pub incident: String,
    /// The verdict that asked for it.
    pub verdict: Verdict,
    /// The bundle directory.
    pub dir: PathBuf,
    /// Every artifact was captured whole.
    pub complete: bool,
    /// Artifacts in the bundle.
    pub artifacts: usize,
}

/// Hands notices to the output without waiting: cloned into the containment sink and the
/// evidence tasks.
#[derive(Debug, Clone)]
pub struct Notices {
    tx: SyncSender<Notice>,
    dropped: Arc<AtomicU64>,
}

impl Notices {
    /// Queues a notice; when the queue is full it is dropped and counted.
    pub fn send(&self, notice: Notice) {
        match self.tx.try_send(notice) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The pretty format's state.
struct Terminal {
    color: bool,
    events: bool,
    notices: Receiver<Notice>,
    sender: Notices,
    dropped_reported: u64,
}

enum Mode {
    Json,
    Pretty(Box<Terminal>),
}

/// Writes events, records and notices in the configured format.
///
/// A write that fails (a full disk, a quota) does not stop the daemon: the batch's lines are
/// dropped and counted ([`Output::dropped_lines`]), the first failure is logged and then one
/// line a minute while it lasts, and the next batch tries again; the line the failure tore is
/// ended before anything else is written. Only a closed standard output (`detector run |
/// head`) ends the output, as it ends any command-line tool.
pub struct Output {
    path: PathBuf,
    out: Box<dyn Write + Send>,
    /// The batch being written, kept for its capacity.
    batch: Vec<u8>,
    /// A failed write left a line unfinished.
    torn: bool,
    mode: Mode,
    /// Lines dropped by failed writes since start.
    dropped_lines: u64,
    /// The failure in progress, if writes are failing.
    failing: Option<Failing>,
}

/// Writes failing since `since`.
struct Failing {
    since: std::time::Instant,
    /// Lines dropped since it began.
    dropped: u64,
    /// When it was last logged.
    logged: std::time::Instant,
}

/// How often a lasting write failure is logged again.
const FAILING_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Output {
    /// Opens the configured output (`-`: standard output; a file is appended to) and decides
    /// `auto`, and the colours, from where it goes and `NO_COLOR`.
    pub fn open(config: &OutputConfig) -> Result<Self, OutputError> {
        let path = &config.path;
        let to_terminal = is_stdout(path) && io::stdout().is_terminal();
        let format = Format::resolve(config.format, path, to_terminal);
        let color = use_color(to_terminal, std::env::var_os("NO_COLOR").as_deref());
        let sink: Box<dyn Write + Send> = if is_stdout(path) {
            Box::new(io::stdout())
        } else {
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| OutputError::Open {
                        path: path.to_owned(),
                        source,
                    })?,
            )
        };
        Ok(Self::new(path, sink, format, color, config.events))
    }

    /// An output to `sink` (named `path` in errors) in a decided format.
    pub fn new(
        path: &Path,
        sink: Box<dyn Write + Send>,
        format: Format,
        color: bool,
        events: bool,
    ) -> Self {
        let mode = match format {
            Format::Json => Mode::Json,
            Format::Pretty => {
                let (tx, notices) = mpsc::sync_channel(NOTICE_CAPACITY);
                Mode::Pretty(Box::new(Terminal {
                    color,
                    events,
                    notices,
                    sender: Notices {
                        tx,
                        dropped: Arc::default(),
                    },
                    dropped_reported: 0,
                }))
            }
        };
        Self {
            path: path.to_owned(),
            out: sink,
            batch: Vec::with_capacity(1 << 16),
            torn: false,
            mode,
            dropped_lines: 0,
            failing: None,
        }
    }

    /// Lines dropped because writing them failed, since start.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines
    }

    /// The format in use.
    pub fn format(&self) -> Format {
        match self.mode {
            Mode::Json => Format::Json,
            Mode::Pretty(_) => Format::Pretty,
        }
    }

    /// Where containment entries and evidence bundles are to be sent, when this output shows
    /// them (the pretty format).
    pub fn notices(&self) -> Option<Notices> {
        match &self.mode {
            Mode::Json => None,
            Mode::Pretty(terminal) => Some(terminal.sender.clone()),
        }
    }

    /// Writes a batch of events and flushes it, so a reader of the file sees whole lines. The
    /// pretty format shows them only when asked to.
    pub fn write_events(&mut self, events: &[Event]) -> Result<(), OutputError> {
        self.batch.clear();
        match &self.mode {
            Mode::Json => json_lines(&mut self.batch, events),
            Mode::Pretty(terminal) if terminal.events => {
                let style = terminal.style();
                lines(
                    &mut self.batch,
                    events.iter().map(|e| pretty::event(e, style)),
                );
            }
            Mode::Pretty(_) => {}
        }
        self.commit()
    }

    /// Writes a batch of alerts and verdicts and flushes it.
    pub fn write_records(&mut self, records: &[Record]) -> Result<(), OutputError> {
        self.batch.clear();
        match &self.mode {
            Mode::Json => json_lines(&mut self.batch, records),
            Mode::Pretty(terminal) => {
                let style = terminal.style();
                lines(
                    &mut self.batch,
                    records.iter().map(|r| pretty::record(r, style)),
                );
            }
        }
        self.commit()
    }

    /// Writes the notices queued since the last call (the pretty format's containment steps
    /// and evidence bundles).
    pub fn write_notices(&mut self) -> Result<(), OutputError> {
        let Mode::Pretty(terminal) = &mut self.mode else {
            return Ok(());
        };
        let dropped = terminal.sender.dropped.load(Ordering::Relaxed);
        if dropped > terminal.dropped_reported {
            warn!(
                dropped = dropped - terminal.dropped_reported,
                "containment and evidence lines not shown (queue full); the journal and the bundles have them"
            );
            terminal.dropped_reported = dropped;
        }
        let notices: Vec<Notice> = terminal.notices.try_iter().collect();
        if notices.is_empty() {
            return Ok(());
        }
        let style = terminal.style();
        self.batch.clear();
        lines(
            &mut self.batch,
            notices.iter().map(|n| pretty::notice(n, style)),
        );
        self.commit()
    }

    /// Writes the batch and flushes: a closed standard output ends the output; any other
    /// failure drops the lines that did not make it, counts them and says so (see
    /// [`Output`]). A line the failure tore is ended before the next batch.
    fn commit(&mut self) -> Result<(), OutputError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let total = newlines(&self.batch);
        let (done, result) = if self.torn {
            match write_fully(&mut self.out, b"\n") {
                (1, Ok(())) => {
                    self.torn = false;
                    write_fully(&mut self.out, &self.batch)
                }
                (_, result) => (0, result),
            }
        } else {
            write_fully(&mut self.out, &self.batch)
        };
        let now = std::time::Instant::now();
        let source = match result {
            Ok(()) => {
                if let Some(failing) = self.failing.take() {
                    tracing::info!(
                        path = %self.path.display(),
                        dropped = failing.dropped,
                        after = ?now.duration_since(failing.since),
                        "output: writing again; lines were dropped while it failed"
                    );
                }
                return Ok(());
            }
            Err(source) if source.kind() == io::ErrorKind::BrokenPipe && is_stdout(&self.path) => {
                return Err(OutputError::Write {
                    path: self.path.clone(),
                    source,
                });
            }
            Err(source) => source,
        };
        if done > 0 && self.batch[done - 1] != b'\n' {
            self.torn = true;
        }
        let dropped = total - newlines(&self.batch[..done]);
        self.dropped_lines += dropped;
        match &mut self.failing {
            None => {
                tracing::error!(
                    path = %self.path.display(),
                    error = %source,
                    "output: cannot write; lines are dropped (and counted in \
                     detector_output_dropped_lines_total) until writing works again, the daemon \
                     goes on"
                );
                self.failing = Some(Failing {
                    since: now,
                    dropped,
                    logged: now,
                });
            }
            Some(failing) => {
                failing.dropped += dropped;
                if now.duration_since(failing.logged) >= FAILING_LOG_EVERY {
                    failing.logged = now;
                    tracing::error!(
                        path = %self.path.display(),
                        error = %source,
                        dropped = failing.dropped,
                        "output: still cannot write"
                    );
                }
            }
        }
        Ok(())
    }
}

/// Writes `bytes` as far as the writer takes them, then flushes: how many bytes it took, and
/// the error that stopped it.
fn write_fully(out: &mut dyn Write, bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < bytes.len() {
        match out.write(&bytes[done..]) {
            Ok(0) => return (done, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return (done, Err(err)),
        }
    }
    (done, out.flush())
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

impl Terminal {
    /// The style for the lines written now: the local offset is read again for each batch, so
    /// a change of daylight saving time shows from the next one.
    fn style(&self) -> Style {
        Style {
            color: self.color,
            offset: local_offset(OffsetDateTime::now_utc()),
        }
    }
}

/// One JSON object a line (a value that cannot be serialized is left out: none of the
/// daemon's can fail).
fn json_lines<T: Serialize>(out: &mut Vec<u8>, items: &[T]) {
    for item in items {
        let start = out.len();
        if serde_json::to_writer(&mut *out, item).is_ok() {
            out.push(b'\n');
        } else {
            out.truncate(start);
        }
    }
}

fn lines(out: &mut Vec<u8>, lines: impl Iterator<Item = String>) {
    for line in lines {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

/// The local time zone's offset from UTC at `at` (UTC when it cannot be told). The `time`
/// crate refuses this in a multi-threaded process, since `localtime_r` reads the environment
/// (`TZ`), which another thread could be changing: the daemon never changes its environment.
fn local_offset(at: OffsetDateTime) -> UtcOffset {
    // A time `time_t` cannot hold (32-bit targets) fails the call below.
    let seconds = libc::time_t::try_from(at.unix_timestamp()).unwrap_or(libc::time_t::MAX);
    // SAFETY: an all-zero `tm` is a valid value of a plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe, and the
    // daemon does not modify its environment while it runs.
    if unsafe { libc::localtime_r(&seconds, &mut tm) }.is_null() {
        return UtcOffset::UTC;
    }
    i32::try_from(tm.tm_gmtoff)
        .ok()
        .and_then(|seconds| UtcOffset::from_whole_seconds(seconds).ok())
        .unwrap_or(UtcOffset::UTC)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{config::Config, export::schema::fixtures};

    /// A sink the test can read after the output wrote to it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn events() -> Vec<Event> {
        fixtures::all()
            .into_iter()
            .filter_map(|e| match e.record {
                crate::export::record::Record::Event(event) => Some(event),
                _ => None,
            })
            .collect()
    }

    /// A disk of `room` bytes: writes past it fail with `ENOSPC` (what fits of the last one is
    /// written, as on a real disk) until the test frees it.
    #[derive(Clone)]
    struct SmallDisk {
        written: Shared,
        room: Arc<Mutex<usize>>,
    }

    impl Write for SmallDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(*room);
            *room -= n;
            self.written.write(&buf[..n])
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_drops_and_counts_lines_and_writing_resumes_with_whole_lines() {
        let disk = SmallDisk {
            written: Shared::default(),
            room: Arc::new(Mutex::new(0)),
        };
        let events = events();
        let n = events.len() as u64;
        let one_batch = {
            let mut probe = Vec::new();
            json_lines(&mut probe, &events);
            probe.len()
        };
        // Room for one batch and half of the next.
        *disk.room.lock().unwrap() = one_batch + one_batch / 2;
        let mut out = Output::new(
            Path::new("/var/log/detector.jsonl"),
            Box::new(disk.clone()),
            Format::Json,
            false,
            false,
        );
        // Neither the half-written batch nor the one that finds the disk full is fatal.
        for _ in 0..3 {
            out.write_events(&events).unwrap();
        }
        let dropped = out.dropped_lines();
        assert!(dropped > n && dropped < 2 * n, "{dropped} of {n} a batch");
        // Room again: the torn line is ended, then the batch is written whole.
        *disk.room.lock().unwrap() = usize::MAX;
        out.write_events(&events).unwrap();
        assert_eq!(out.dropped_lines(), dropped);
        let text = disk.written.text();
        let (whole, torn): (Vec<&str>, Vec<&str>) = text
            .lines()
            .partition(|l| serde_json::from_str::<serde_json::Value>(l).is_ok());
        // Every line is written whole or counted as dropped; the one torn line is a fragment
        // of a dropped one.
        assert_eq!(whole.len() as u64 + dropped, 4 * n, "{text}");
        assert_eq!(torn.len(), 1, "{torn:?}");
        assert!(text.ends_with("\n"));
        let last: Vec<&str> = text.lines().rev().take(events.len()).collect();
        assert!(
            last.iter()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
            "the last batch is whole: {text}"
        );
    }

    #[test]
    fn a_closed_standard_output_ends_the_output() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
        }
        let mut out = Output::new(Path::new("-"), Box::new(Closed), Format::Json, false, false);
        assert!(out.write_events(&events()).is_err());
    }

    #[test]
    fn auto_is_pretty_only_for_standard_output_on_a_terminal() {
        let stdout = Path::new("-");
        let file = Path::new("/var/log/detector.jsonl");
        assert_eq!(
            Format::resolve(OutputFormat::Auto, stdout, true),
            Format::Pretty
        );
        assert_eq!(
            Format::resolve(OutputFormat::Auto, stdout, false),
            Format::Json
        );
        assert_eq!(
            Format::resolve(OutputFormat::Auto, file, true),
            Format::Json
        );
        assert_eq!(
            Format::resolve(OutputFormat::Pretty, file, false),
            Format::Pretty
        );
        assert_eq!(
            Format::resolve(OutputFormat::Json, stdout, true),
            Format::Json
        );
    }

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(use_color(true, None));
        assert!(use_color(true, Some(OsStr::new(""))));
        assert!(!use_color(true, Some(OsStr::new("1"))));
        assert!(!use_color(false, None));
    }

    #[test]
    fn the_format_is_configured_in_the_file_or_the_environment() {
        assert_eq!(Config::default().output.format, OutputFormat::Auto);
        let config = Config::parse_with_env(
            "output:\n  format: pretty\n  events: true\n",
            Path::new("c.yaml"),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(config.output.format, OutputFormat::Pretty);
        assert!(config.output.events);
        let config = Config::parse_with_env(
            "output:\n  format: pretty\n",
            Path::new("c.yaml"),
            vec![("DETECTOR_OUTPUT__FORMAT".to_owned(), "json".to_owned())],
        )
        .unwrap();
        assert_eq!(config.output.format, OutputFormat::Json);
    }

    #[test]
    fn an_unknown_format_is_an_error_with_its_location() {
        let err = Config::parse("output:\n  format: prety\n", Path::new("c.yaml")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("c.yaml"), "{text}");
        assert!(text.contains("output.format"), "{text}");
        assert!(text.contains("prety") && text.contains("line 2"), "{text}");
        let err = Config::parse_with_env(
            "{}",
            Path::new("c.yaml"),
            vec![("DETECTOR_OUTPUT__FORMAT".to_owned(), "prety".to_owned())],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("DETECTOR_OUTPUT__FORMAT: output.format"),
            "{text}"
        );
    }

    #[test]
    fn json_lines_carry_every_event_and_record_and_no_notice() {
        let sink = Shared::default();
        let mut out = Output::new(
            Path::new("-"),
            Box::new(sink.clone()),
            Format::Json,
            false,
            false,
        );
        assert!(out.notices().is_none());
        let events = events();
        out.write_events(&events).unwrap();
        out.write_notices().unwrap();
        let text = sink.text();
        assert_eq!(text.lines().count(), events.len());
        for (line, event) in text.lines().zip(&events) {
            assert_eq!(line, serde_json::to_string(event).unwrap());
        }
    }

    #[test]
    fn pretty_shows_events_only_when_asked_and_notices_when_drained() {
        let events = events();
        for shown in [false, true] {
            let sink = Shared::default();
            let mut out = Output::new(
                Path::new("x"),
                Box::new(sink.clone()),
                Format::Pretty,
                false,
                shown,
            );
            out.write_events(&events).unwrap();
            let expected = if shown { events.len() } else { 0 };
            assert_eq!(sink.text().lines().count(), expected, "{}", sink.text());
            assert!(!sink.text().contains('{'), "{}", sink.text());
            let notices = out.notices().unwrap();
            notices.send(Notice::Action {
                entry: Box::new(Entry::new(
                    "inc-1",
                    crate::contain::journal::EntryKind::Completed,
                )),
                subject: None,
            });
            out.write_notices().unwrap();
            let text = sink.text();
            assert_eq!(text.lines().count(), expected + 1, "{text}");
            assert!(
                text.lines().last().unwrap().contains("incident inc-1"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_full_notice_queue_drops_and_counts() {
        let out = Output::new(
            Path::new("x"),
            Box::new(io::sink()),
            Format::Pretty,
            false,
            false,
        );
        let notices = out.notices().unwrap();
        let entry = Entry::new("inc-1", crate::contain::journal::EntryKind::Completed);
        for _ in 0..NOTICE_CAPACITY + 3 {
            notices.send(Notice::Action {
                entry: Box::new(entry.clone()),
                subject: None,
            });
        }
        assert_eq!(notices.dropped.load(Ordering::Relaxed), 3);
    }
}
