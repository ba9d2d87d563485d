//! The incident journal: one append-only JSON-lines file (`journal.jsonl`) in the journal
//! directory, each entry written with one `write(2)` on an `O_APPEND` descriptor and
//! `fdatasync`'d before the next, so the daemon and the `detector release` command can both
//! append and a crash loses at most the entry being written (a torn last line is skipped on
//! read).
//!
//! [`replay`] folds the entries into [`IncidentRecord`]s: a pure function, so the daemon's
//! resume, `detector incidents` and the tests read the journal the same way.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{StepOutcome, config::Mode};
use crate::score::Subject;

/// The journal's file name inside the journal directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// Failure of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The directory or file could not be created, opened, written or synced.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Wall-clock time of the entry (RFC 3339).
    pub ts: String,
    /// The incident id.
    pub incident: String,
    /// `CLOCK_BOOTTIME` when it was recorded (the kernel's event clock), for latencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_ns: Option<u64>,
    /// The writing process (the daemon or a `detector release`).
    #[serde(default)]
    pub pid: u32,
    /// What happened.
    #[serde(flatten)]
    pub kind: EntryKind,
}

impl Entry {
    /// An entry of this process, now.
    pub fn new(incident: &str, kind: EntryKind) -> Self {
        Self {
            ts: now_rfc3339(),
            incident: incident.to_owned(),
            boot_ns: Some(crate::clock::Clock::boot_now_ns()),
            pid: std::process::id(),
            kind,
        }
    }
}

/// What a journal line records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum EntryKind {
    /// A containment started.
    Opened {
        /// The pod.
        subject: Subject,
        /// The node the pod runs on, as far as known.
        node: String,
        /// Score of the verdict.
        score: f64,
        /// Reason of the verdict.
        reason: String,
        /// cgroup ids to block.
        cgroup_ids: Vec<u64>,
        /// Kernel time of the deciding event.
        event_ktime_ns: u64,
        /// Whether this incident is a dry run.
        dry_run: bool,
        /// The boot it was opened in: `cgroup_ids` mean nothing in another one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot_id: Option<String>,
        /// `enforce`, or `propose`: the API steps wait for a person's approval.
        #[serde(default)]
        mode: Mode,
    },
    /// A verdict the guardrails refused (protected, budget, warm-up, disarmed), or an opened
    /// incident the cluster budget refused (its kernel block lifted first).
    Refused {
        /// The pod.
        subject: Subject,
        /// Why.
        why: String,
    },
    /// A person approved a proposed incident: its API steps run now.
    Approved {
        /// How: `cli` (`detector approve`) or `annotation` (on the pod).
        by: String,
    },
    /// A person confirmed an incident: it does not expire.
    Confirmed {
        /// How: `cli` (`detector confirm`).
        by: String,
    },
    /// Nobody approved or confirmed it in time: it is released.
    Expired {
        /// The expiry it reached, in seconds.
        after_s: u64,
    },
    /// One playbook step ran.
    Step {
        /// Step name.
        step: String,
        /// Its outcome.
        outcome: StepOutcome,
    },
    /// Every step has been attempted.
    Completed,
    /// One step was undone.
    Undo {
        /// Step name.
        step: String,
        /// Its outcome.
        outcome: StepOutcome,
    },
    /// Release was asked for; what is still pending is done by the daemon.
    ReleaseRequested {
        /// Who asked: `daemon` or `cli`.
        by: String,
    },
    /// Every undoable step has been undone.
    Released,
}

/// The state of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Proposed: kernel-blocked (or not), waiting for a person's approval to run the API steps.
    Proposed,
    /// Steps still running (or interrupted: resumed at start).
    Open,
    /// Every step attempted; containment in force.
    Contained,
    /// Refused by the guardrails (nothing was done), or by the cluster budget (the kernel
    /// block lifted again).
    Refused,
    /// Release asked for; the daemon still has to lift the kernel block.
    ReleasePending,
    /// Released.
    Released,
}

/// An incident, folded from its journal entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentRecord {
    /// Id.
    pub id: String,
    /// When it was opened.
    pub opened: String,
    /// The pod.
    pub subject: Subject,
    /// The node.
    pub node: String,
    /// Score.
    pub score: f64,
    /// Reason (or, when refused, why it was refused).
    pub reason: String,
    /// cgroup ids.
    pub cgroup_ids: Vec<u64>,
    /// Kernel time of the deciding event.
    pub event_ktime_ns: u64,
    /// Dry run.
    pub dry_run: bool,
    /// The boot it was opened in (`None` in journals written before it was recorded).
    #[serde(default)]
    pub boot_id: Option<String>,
    /// `enforce` or `propose`.
    #[serde(default)]
    pub mode: Mode,
    /// Confirmed (or approved) by a person: it does not expire.
    #[serde(default)]
    pub confirmed: bool,
    /// Released at its expiry, nobody having approved or confirmed it.
    #[serde(default)]
    pub expired: bool,
    /// State.
    pub state: IncidentState,
    /// Each step's latest outcome, in the order first run.
    pub steps: Vec<(String, StepOutcome)>,
    /// Each undo's latest outcome.
    pub undone: Vec<(String, StepOutcome)>,
    /// Boot time when the kernel block was in place.
    pub kernel_block_ns: Option<u64>,
    /// Boot time when every step had been attempted.
    pub completed_ns: Option<u64>,
}

impl IncidentRecord {
    /// An incident as its first entry (`opened` or `refused`, at `entry`) leaves it, before
    /// what that entry adds and what later entries fold in.
    fn first(id: String, entry: &Entry, subject: &Subject, state: IncidentState) -> Self {
        Self {
            id,
            opened: entry.ts.clone(),
            subject: subject.clone(),
            node: String::new(),
            score: 0.0,
            reason: String::new(),
            cgroup_ids: Vec::new(),
            event_ktime_ns: 0,
            dry_run: false,
            boot_id: None,
            mode: Mode::Enforce,
            confirmed: false,
            expired: false,
            state,
            steps: Vec::new(),
            undone: Vec::new(),
            kernel_block_ns: None,
            completed_ns: None,
        }
    }

    /// The latest outcome of a step.
    pub fn step(&self, name: &str) -> Option<&StepOutcome> {
        self.steps.iter().find(|(n, _)| n == name).map(|(_, o)| o)
    }

    /// How long ago it was opened, by the wall clock (`None` when its time does not read).
    pub fn age(&self) -> Option<std::time::Duration> {
        let opened = OffsetDateTime::parse(&self.opened, &Rfc3339).ok()?;
        (OffsetDateTime::now_utc() - opened).try_into().ok()
    }

    /// Whether the containment is (or may still be) in force, or proposed: not refused, not
    /// released.
    pub fn active(&self) -> bool {
        matches!(
            self.state,
            IncidentState::Proposed | IncidentState::Open | IncidentState::Contained
        )
    }
}

fn set(list: &mut Vec<(String, StepOutcome)>, name: String, outcome: StepOutcome) {
    match list.iter_mut().find(|(n, _)| *n == name) {
        // A resumed step finding its own earlier work keeps the record of that work (and the
        // undo data in it).
        Some((_, StepOutcome::Done { .. }))
            if matches!(outcome, StepOutcome::AlreadyDone { .. }) => {}
        Some(slot) => slot.1 = outcome,
        None => list.push((name, outcome)),
    }
}

/// Folds entries into incidents, by id, in journal order.
pub fn replay<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
) -> BTreeMap<String, IncidentRecord> {
    let mut incidents = BTreeMap::new();
    for entry in entries {
        apply(&mut incidents, entry);
    }
    incidents
}

/// Folds one entry, the next in journal order, into `incidents` ([`replay`] one at a time).
pub fn apply(incidents: &mut BTreeMap<String, IncidentRecord>, entry: &Entry) {
    let id = entry.incident.clone();
    match &entry.kind {
        EntryKind::Opened {
            subject,
            node,
            score,
            reason,
            cgroup_ids,
            event_ktime_ns,
            dry_run,
            boot_id,
            mode,
        } => {
            let state = match mode {
                Mode::Enforce => IncidentState::Open,
                Mode::Propose => IncidentState::Proposed,
            };
            incidents.insert(
                id.clone(),
                IncidentRecord {
                    node: node.clone(),
                    score: *score,
                    reason: reason.clone(),
                    cgroup_ids: cgroup_ids.clone(),
                    event_ktime_ns: *event_ktime_ns,
                    dry_run: *dry_run,
                    boot_id: boot_id.clone(),
                    mode: *mode,
                    ..IncidentRecord::first(id, entry, subject, state)
                },
            );
        }
        // Refused after it was opened (by the cluster budget): what it did stays recorded.
        EntryKind::Refused { why, .. } if incidents.contains_key(&id) => {
            if let Some(incident) = incidents.get_mut(&id) {
                incident.state = IncidentState::Refused;
                incident.reason = why.clone();
            }
        }
        EntryKind::Refused { subject, why } => {
            incidents.insert(
                id.clone(),
                IncidentRecord {
                    reason: why.clone(),
                    ..IncidentRecord::first(id, entry, subject, IncidentState::Refused)
                },
            );
        }
        kind => {
            let Some(incident) = incidents.get_mut(&id) else {
                return;
            };
            match kind {
                EntryKind::Step { step, outcome } => {
                    if step == "kernel_block" && outcome.ok() {
                        incident.kernel_block_ns = entry.boot_ns;
                    }
                    set(&mut incident.steps, step.clone(), outcome.clone());
                }
                EntryKind::Approved { .. } => {
                    incident.confirmed = true;
                    if incident.state == IncidentState::Proposed {
                        incident.state = IncidentState::Open;
                    }
                }
                EntryKind::Confirmed { .. } => incident.confirmed = true,
                EntryKind::Expired { .. } => incident.expired = true,
                EntryKind::Completed if incident.state == IncidentState::Open => {
                    incident.state = IncidentState::Contained;
                    incident.completed_ns = entry.boot_ns;
                }
                EntryKind::Undo { step, outcome } => {
                    set(&mut incident.undone, step.clone(), outcome.clone());
                }
                EntryKind::ReleaseRequested { .. } if incident.state != IncidentState::Released => {
                    incident.state = IncidentState::ReleasePending;
                }
                EntryKind::Released => incident.state = IncidentState::Released,
                _ => {}
            }
        }
    }
}

/// The journal file, open for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

/// Now, formatted for an entry.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

impl Journal {
    /// Opens (creating the directory and file if needed) the journal of `dir`.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| JournalError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(JOURNAL_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry (one write) and syncs it to disk.
    pub fn append(&self, incident: &str, kind: EntryKind) -> Result<Entry, JournalError> {
        let entry = Entry::new(incident, kind);
        self.append_entries(std::slice::from_ref(&entry))?;
        Ok(entry)
    }

    /// Appends entries (one write) and syncs them: the group commit of the daemon's writer.
    pub fn append_entries(&self, entries: &[Entry]) -> Result<(), JournalError> {
        let mut text = String::new();
        for entry in entries {
            // Entries are plain data; serialization cannot fail.
            text.push_str(&serde_json::to_string(entry).unwrap_or_default());
            text.push('\n');
        }
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A writer that crashed mid-line (this process or another) left a fragment: the entry
        // starts on a line of its own, or it would fuse with the fragment and be lost.
        let text = if ends_mid_line(&file) {
            format!("\n{text}")
        } else {
            text
        };
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Every entry from byte `from` on, and the offset after the last complete line.
    pub fn read_from(&self, from: u64) -> Result<(Vec<Entry>, u64), JournalError> {
        read_from(&self.path, from)
    }

    /// Every entry.
    pub fn entries(&self) -> Result<Vec<Entry>, JournalError> {
        Ok(self.read_from(0)?.0)
    }
}

/// Whether the file's last byte is not a newline (a torn last line).
fn ends_mid_line(file: &File) -> bool {
    use std::os::unix::fs::FileExt as _;
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return false;
    };
    let mut last = [0u8];
    len > 0 && file.read_exact_at(&mut last, len - 1).is_ok() && last[0] != b'\n'
}

/// Reads the entries of a journal file from byte `from`, and the offset after the last
/// complete line. A line that does not decode (torn by a crash, damaged, not UTF-8) is
/// skipped with a warning naming its line (or, read from an offset, its byte); what follows
/// it still counts. An unterminated last line is left for the next read.
pub fn read_from(path: &Path, from: u64) -> Result<(Vec<Entry>, u64), JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(io(err)),
    };
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut reader = BufReader::new(file);
    let mut offset = from;
    let mut entries = Vec::new();
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        number += 1;
        let at = offset;
        offset += n as u64;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice(text) {
            Ok(entry) => entries.push(entry),
            Err(err) => {
                let place = if from == 0 {
                    format!("line {number}")
                } else {
                    format!("the line at byte {at}")
                };
                tracing::warn!(
                    "{}: {place} is not a journal entry and is skipped ({:?} error at its \
                     column {})",
                    path.display(),
                    err.classify(),
                    err.column()
                );
            }
        }
    }
    Ok((entries, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(journal: &Journal, id: &str) {
        journal
            .append(
                id,
                EntryKind::Opened {
                    subject: Subject {
                        key: format!("pod:{id}"),
                        ..Subject::default()
                    },
                    node: "node-1".into(),
                    score: 120.0,
                    reason: "test".into(),
                    cgroup_ids: vec![7],
                    event_ktime_ns: 1,
                    dry_run: false,
                    boot_id: None,
                    mode: Default::default(),
                },
            )
            .unwrap();
    }

    #[test]
    fn a_torn_last_line_does_not_hide_the_next_entry() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        opened(&journal, "inc-1");
        // A writer crashed mid-entry.
        let mut file = OpenOptions::new()
            .append(true)
            .open(journal.path())
            .unwrap();
        file.write_all(br#"{"ts":"2026-12-05T00:00:00Z","incident":"inc-1","entry":"ste"#)
            .unwrap();
        drop(file);
        // The release that follows is read, and the incident is released.
        journal.append("inc-1", EntryKind::Released).unwrap();
        let entries = journal.entries().unwrap();
        assert_eq!(entries.len(), 2, "{entries:?}");
        let records = replay(&entries);
        assert_eq!(records["inc-1"].state, IncidentState::Released);
    }

    #[test]
    fn a_damaged_line_is_skipped_and_what_follows_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        opened(&journal, "inc-1");
        let mut file = OpenOptions::new()
            .append(true)
            .open(journal.path())
            .unwrap();
        // Not UTF-8, then not JSON, then a blank line.
        file.write_all(b"{\"ts\":\"\xff\xfe\"}\nnot json\n\n")
            .unwrap();
        drop(file);
        opened(&journal, "inc-2");
        journal.append("inc-2", EntryKind::Completed).unwrap();
        let entries = journal.entries().unwrap();
        assert_eq!(entries.len(), 3, "{entries:?}");
        let records = replay(&entries);
        assert_eq!(records.len(), 2);
        assert_eq!(records["inc-2"].state, IncidentState::Contained);
        // Read on from an offset, the same.
        let (first, offset) = journal.read_from(0).unwrap();
        let (rest, end) = journal.read_from(offset).unwrap();
        assert_eq!(first.len(), 3);
        assert!(rest.is_empty());
        assert_eq!(end, offset);
    }
}
