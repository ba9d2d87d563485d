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
    io::{self, BufWriter, IsTerminal as _, Write},
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
pub struct Output {
    path: PathBuf,
    out: BufWriter<Box<dyn Write + Send>>,
    mode: Mode,
}

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
            out: BufWriter::with_capacity(1 << 16, sink),
            mode,
        }
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
        let result = match &self.mode {
            Mode::Json => json_lines(&mut self.out, events),
            Mode::Pretty(terminal) if terminal.events => {
                let style = terminal.style();
                lines(
                    &mut self.out,
                    events.iter().map(|e| pretty::event(e, style)),
                )
            }
            Mode::Pretty(_) => Ok(()),
        };
        self.result(result)
    }

    /// Writes a batch of alerts and verdicts and flushes it.
    pub fn write_records(&mut self, records: &[Record]) -> Result<(), OutputError> {
        let result = match &self.mode {
            Mode::Json => json_lines(&mut self.out, records),
            Mode::Pretty(terminal) => {
                let style = terminal.style();
                lines(
                    &mut self.out,
                    records.iter().map(|r| pretty::record(r, style)),
                )
            }
        };
        self.result(result)
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
        let result = lines(
            &mut self.out,
            notices.iter().map(|n| pretty::notice(n, style)),
        );
        self.result(result)
    }

    fn result(&self, result: io::Result<()>) -> Result<(), OutputError> {
        result.map_err(|source| OutputError::Write {
            path: self.path.clone(),
            source,
        })
    }
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

fn json_lines<T: Serialize>(out: &mut impl Write, items: &[T]) -> io::Result<()> {
    for item in items {
        serde_json::to_writer(&mut *out, item)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn lines(out: &mut impl Write, lines: impl Iterator<Item = String>) -> io::Result<()> {
    for line in lines {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
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
