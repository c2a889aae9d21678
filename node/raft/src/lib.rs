//! Sans-I/O Raft consensus core.
#![forbid(unsafe_code)]
