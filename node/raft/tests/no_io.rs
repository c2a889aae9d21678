//! CI guard: the consensus core must not depend on I/O, threads, a clock or an entropy source.
//!
//! It reads `Cargo.toml` (the `[dependencies]`, `[build-dependencies]` and target-specific
//! dependency tables; dev-dependencies may use anything) and every `src/**/*.rs` file, with
//! comments and string literals removed, and fails on a forbidden crate or path.

use std::path::{Path, PathBuf};

/// Crates the library may not depend on.
const FORBIDDEN_CRATES: &[&str] = &[
    "tokio", "async-std", "async-io", "async-net", "mio", "smol", "socket2", "rand", "getrandom", "quanta",
];

/// Paths the library source may not mention (whitespace removed before matching).
const FORBIDDEN_PATHS: &[&str] = &[
    "tokio::", "async_std::", "mio::", "std::net", "std::fs", "std::thread", "std::time::Instant",
    "std::time::SystemTime", "SystemTime", "Instant::now", "std::process", "std::os::",
];

/// Names that may not appear inside a `std::{...}` group import.
const FORBIDDEN_IN_STD_GROUP: &[&str] = &["fs", "net", "thread", "process", "Instant", "SystemTime", "os"];

/// Removes comments, string and char literals (keeps code structure), then all whitespace.
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || (next == Some('#') && !prev_is_ident(&b, i))) && !prev_is_ident(&b, i) {
            // Raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == '#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == '"' {
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            } else {
                out.push(c);
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (b.get(i + 2) == Some(&'\'') || (next == Some('\\') && b.get(i + 3) == Some(&'\''))) {
            // A char literal like 'x' or '\n' (lifetimes have no closing quote).
            i += if next == Some('\\') { 4 } else { 3 };
            out.push_str("' '");
        } else {
            if !c.is_whitespace() {
                out.push(c);
            } else {
                out.push(' ');
            }
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// Violations in one Rust source.
fn scan_source(src: &str) -> Vec<String> {
    let code: String = strip(src).chars().filter(|c| !c.is_whitespace()).collect();
    let mut found = Vec::new();
    for p in FORBIDDEN_PATHS {
        if code.contains(p) {
            found.push((*p).to_string());
        }
    }
    let mut rest = code.as_str();
    while let Some(at) = rest.find("std::{") {
        let group = &rest[at + 6..];
        let mut depth = 1;
        let mut end = group.len();
        for (k, ch) in group.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &group[..end];
        for name in FORBIDDEN_IN_STD_GROUP {
            let hit = inner
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|tok| tok == *name);
            if hit {
                found.push(format!("std::{{{name}}}"));
            }
        }
        rest = &group[end.min(group.len())..];
    }
    found
}

/// Violations in a Cargo manifest.
fn scan_manifest(toml: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_deps = false;
    for line in toml.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            let section = line.trim_matches(|c| c == '[' || c == ']');
            in_deps = (section.ends_with("dependencies") && !section.ends_with("dev-dependencies"))
                || (section.contains("dependencies.") && !section.contains("dev-dependencies."));
            if in_deps && section.contains("dependencies.") {
                let name = section.rsplit('.').next().unwrap_or("");
                if FORBIDDEN_CRATES.contains(&name) {
                    found.push(name.to_string());
                }
            }
            continue;
        }
        if !in_deps || line.is_empty() {
            continue;
        }
        let key = line.split('=').next().unwrap_or("").trim().trim_matches('"');
        let renamed = line.split("package").nth(1).and_then(|r| r.split('"').nth(1)).unwrap_or("");
        for name in [key, renamed] {
            if FORBIDDEN_CRATES.contains(&name) {
                found.push(name.to_string());
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_io_dependencies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("read Cargo.toml");
    let mut problems: Vec<String> = scan_manifest(&manifest).into_iter().map(|c| format!("Cargo.toml: depends on {c}")).collect();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() >= 5, "found only {} source files under src/", files.len());
    for f in files {
        let src = std::fs::read_to_string(&f).expect("read source");
        for v in scan_source(&src) {
            problems.push(format!("{}: uses {v}", f.strip_prefix(root).unwrap_or(&f).display()));
        }
    }
    assert!(problems.is_empty(), "the Raft core must stay free of I/O:\n{}", problems.join("\n"));
}

#[test]
fn scanner_catches_violations_and_ignores_comments() {
    assert!(scan_source("// std::fs is mentioned\n/* std::net */ let s = \"std::thread\";").is_empty());
    assert_eq!(scan_source("use std::fs::File;"), vec!["std::fs"]);
    assert_eq!(scan_source("use std :: net :: TcpStream;"), vec!["std::net"]);
    assert_eq!(scan_source("use std::{collections::BTreeMap, fs};"), vec!["std::{fs}"]);
    assert_eq!(scan_source("let t = std::time::Instant::now();").len(), 2);
    assert!(scan_source("use core::time::Duration; let c = 'x'; fn f<'a>(x: &'a str) {}").is_empty());
    assert!(scan_source("let r = r#\"std::fs\"#;").is_empty());
    assert_eq!(scan_manifest("[dependencies]\ntokio = \"1\"\n[dev-dependencies]\nmio = \"1\""), vec!["tokio"]);
    assert_eq!(scan_manifest("[target.'cfg(unix)'.dependencies]\nnet = { package = \"mio\", version = \"1\" }"), vec!["mio"]);
    assert_eq!(scan_manifest("[dependencies.tokio]\nversion = \"1\""), vec!["tokio"]);
    assert!(scan_manifest("[dependencies]\nserde = \"1\"\n").is_empty());
}
