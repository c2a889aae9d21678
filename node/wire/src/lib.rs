//! Sans-I/O codec for the dqlite client wire protocol v1.
#![forbid(unsafe_code)]
