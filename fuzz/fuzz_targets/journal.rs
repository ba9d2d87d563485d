//! The incident journal: any file reads, never a panic or an error. Every complete line that
//! is an entry on its own is read, in order, whatever the lines around it hold (a torn or
//! damaged line hides nothing after it); an unterminated last line is left for later, and
//! reading on from the offset returned once the rest is appended gives the same entries as
//! reading the whole file (how the daemon follows `detector release`). Replaying the entries
//! never panics, and every incident it finds was opened or refused by an entry.
#![no_main]

use std::{fs, io::Write as _, path::PathBuf, sync::LazyLock};

use detector::contain::journal::{self, Entry, EntryKind};
use libfuzzer_sys::fuzz_target;

/// This process's journal file, rewritten for each input.
static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("detector-fuzz-journal-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create the scratch directory");
    dir.join(journal::JOURNAL_FILE)
});

fuzz_target!(|data: &[u8]| {
    let path = &*FILE;
    // What the reader must find: each complete line that parses as an entry on its own.
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let expected: Vec<Entry> = data[..complete]
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            serde_json::from_str(line.trim_end()).ok()
        })
        .collect();

    fs::write(path, data).expect("write the journal");
    let (entries, offset) = journal::read_from(path, 0)
        .unwrap_or_else(|err| panic!("the journal does not read: {err}"));
    assert_eq!(entries, expected, "entries lost or invented");
    assert_eq!(
        offset, complete as u64,
        "the offset is not after the last complete line"
    );

    // The same file written in two parts, read as the daemon follows it.
    let split = data
        .first()
        .map_or(0, |&b| data.len() * usize::from(b) / 256);
    fs::write(path, &data[..split]).expect("write the journal");
    let (mut first, offset) = journal::read_from(path, 0)
        .unwrap_or_else(|err| panic!("the first part does not read: {err}"));
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(&data[split..]))
        .expect("append to the journal");
    let (rest, end) = journal::read_from(path, offset)
        .unwrap_or_else(|err| panic!("the journal does not read on from {offset}: {err}"));
    first.extend(rest);
    assert_eq!(
        first, expected,
        "reading on from {offset} finds other entries"
    );
    assert_eq!(
        end, complete as u64,
        "reading on from {offset} ends elsewhere"
    );

    let incidents = journal::replay(&entries);
    for (id, record) in &incidents {
        assert_eq!(&record.id, id);
        assert!(
            entries.iter().any(|e| &e.incident == id
                && matches!(e.kind, EntryKind::Opened { .. } | EntryKind::Refused { .. })),
            "incident {id} replayed without being opened"
        );
    }
});
