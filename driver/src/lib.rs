//! sqlx driver for dqlite.
#![forbid(unsafe_code)]
