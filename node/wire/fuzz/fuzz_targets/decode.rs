//! Every decoder of dqlite-wire on arbitrary bytes: must never panic, and whatever
//! decodes must re-encode to a fixed point (see `dqlite_wire::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dqlite_wire::fuzzing::exercise_decoders(data);
});
