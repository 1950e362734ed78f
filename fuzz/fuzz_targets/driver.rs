//! Sequences of driver calls (see `oncache_fuzz::calls` for the input format) on the real
//! kernel, through `server::answer` as the HTTP layer makes them. After each input every
//! network and peer is removed, and no oncache link may be left.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oncache_fuzz::calls::Calls;
use oncache_fuzz::{check_answer, reset_and_check, trace, with_testbed};
use std::fmt::Write;

fuzz_target!(|calls: Calls| {
    with_testbed(|tb| {
        let mut log = String::new();
        for c in &calls.0 {
            let (status, answer) = tb.call(c.method, &c.body);
            let _ = writeln!(log, "{c:?}\n  -> {status} {answer}");
            check_answer(c.method, status, &answer, || format!("calls so far:\n{log}"));
        }
        if trace() {
            eprintln!("{log}");
        }
        reset_and_check(tb, || format!("calls:\n{log}"));
    })
});
