//! `time.window` values: no panic on any text; a window that parses answers for any instant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_lib_policy::timewindow::TimeWindow;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (t, text) = data.split_at(8);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if let Ok(w) = TimeWindow::parse(text) {
        // Any instant jiff can represent (years -9999..=9999).
        let secs = i64::from_le_bytes(t.try_into().unwrap()) % 253_402_207_200;
        if let Ok(ts) = jiff::Timestamp::from_second(secs) {
            let _ = w.contains(ts);
        }
    }
});
