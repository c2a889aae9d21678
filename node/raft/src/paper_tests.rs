//! Tests named after the sections of the Raft paper (and thesis) whose rules they check.
