//! Ring-buffer record decoding: any bytes decode into an event or an error, never a panic,
//! and a decoded event's JSON form reads back into the same event (what replays rely on).
#![no_main]

use detector::{clock::Clock, decode::decode, event::Event};
use libfuzzer_sys::fuzz_target;

/// `CLOCK_REALTIME - CLOCK_BOOTTIME` of a machine booted in November 2023: every kernel
/// timestamp maps to a time RFC 3339 can write.
const OFFSET_NS: i128 = 1_700_000_000_000_000_000;

fuzz_target!(|record: &[u8]| {
    match decode(record, &Clock::with_offset(OFFSET_NS)) {
        Ok(event) => {
            let json = serde_json::to_string(&event)
                .unwrap_or_else(|err| panic!("{event:?} does not serialize: {err}"));
            let back: Event = serde_json::from_str(&json)
                .unwrap_or_else(|err| panic!("{json} does not read back: {err}"));
            assert_eq!(back, event, "{json} reads back as another event");
        }
        Err(err) => {
            // Loss accounting names the kind of every undecodable record.
            assert!(!err.record_kind().is_empty(), "{err:?} names no kind");
            let _ = err.to_string();
        }
    }
});
