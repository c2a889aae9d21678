//! CI guard: the consensus core must not depend on I/O, threads, a clock or an entropy source.
//!
//! It reads `Cargo.toml` (the `[dependencies]`, `[build-dependencies]` and target-specific
//! dependency tables; dev-dependencies may use anything), follows the crate's dependencies
//! transitively through the workspace's `Cargo.lock`, and reads every `src/**/*.rs` file with
//! comments and string literals removed. It fails on a forbidden crate (direct or transitive),
//! a forbidden path (`std::io`, `std::fs`, `std::env`, ...), a printing or environment macro
//! (`println!`, `env!`, `include_str!`, ...), or `std` imported under another name (which would
//! hide every later path from the scan).

use std::path::{Path, PathBuf};

/// Crates the library may not depend on.
const FORBIDDEN_CRATES: &[&str] =
    &["tokio", "async-std", "async-io", "async-net", "mio", "smol", "socket2", "rand", "getrandom", "quanta"];

/// Crates that may not appear anywhere in the library's dependency tree (besides the above):
/// the operating system's interfaces.
const FORBIDDEN_TRANSITIVE: &[&str] = &["libc", "nix", "rustix", "winapi", "windows-sys", "linux-raw-sys"];

/// Paths the library source may not mention (whitespace removed before matching).
const FORBIDDEN_PATHS: &[&str] = &[
    "tokio::",
    "async_std::",
    "mio::",
    "std::net",
    "std::fs",
    "std::io",
    "std::env",
    "std::thread",
    "std::time::Instant",
    "std::time::SystemTime",
    "SystemTime",
    "Instant::now",
    "std::process",
    "std::os::",
    "std::io::stdout",
    "std::io::stderr",
];

/// Macros the library source may not call: printing (logging goes through `tracing`), the
/// build or run environment, and files read at compile time.
const FORBIDDEN_MACROS: &[&str] = &[
    "println!",
    "print!",
    "eprintln!",
    "eprint!",
    "dbg!",
    "env!",
    "option_env!",
    "include_str!",
    "include_bytes!",
    "include!",
];

/// Names that may not appear inside a `std::{...}` group import.
const FORBIDDEN_IN_STD_GROUP: &[&str] = &["fs", "net", "io", "env", "thread", "process", "Instant", "SystemTime", "os"];

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
        } else if c == 'r'
            && (next == Some('"') || (next == Some('#') && !prev_is_ident(&b, i)))
            && !prev_is_ident(&b, i)
        {
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
    // A macro call: the name not preceded by an identifier character (`eprintln!` is not
    // `println!`, `my_env!` is not `env!`), followed by `!` and an opening delimiter.
    let bytes = code.as_bytes();
    for m in FORBIDDEN_MACROS {
        let mut from = 0;
        while let Some(at) = code[from..].find(m) {
            let i = from + at;
            let before_ok = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            let after = bytes.get(i + m.len()).copied();
            if before_ok && matches!(after, Some(b'(' | b'[' | b'{')) {
                found.push((*m).to_string());
                break;
            }
            from = i + m.len();
        }
    }
    // `std` under another name: `use std as x;`, `extern crate std as x;`, `use std::{self as x}`.
    // (The spaces are gone: `usestdas`, `cratestdas`, `{selfas`.)
    for alias in ["usestdas", "use::stdas", "cratestdas"] {
        if code.contains(alias) {
            found.push("std aliased".to_string());
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
        if inner.split(',').any(|item| item.starts_with("selfas")) {
            found.push("std aliased".to_string());
        }
        for name in FORBIDDEN_IN_STD_GROUP {
            let hit = inner.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|tok| tok == *name);
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

/// The crates `root` depends on, transitively, according to a `Cargo.lock` (which lists every
/// dependency of every feature, so this over-approximates; dev-dependencies of `root` are
/// included too, except `root` itself).
fn lock_closure(lock: &str, root: &str) -> Vec<String> {
    // (name, version) -> dependencies as written ("name" or "name version ...").
    let mut packages: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut in_deps = false;
    for line in lock.lines() {
        let t = line.trim();
        if t == "[[package]]" {
            packages.push((String::new(), String::new(), Vec::new()));
            in_deps = false;
        } else if let Some(p) = packages.last_mut() {
            if let Some(v) = t.strip_prefix("name = ") {
                p.0 = v.trim_matches('"').to_string();
            } else if let Some(v) = t.strip_prefix("version = ") {
                p.1 = v.trim_matches('"').to_string();
            } else if t.starts_with("dependencies = [") {
                in_deps = !t.ends_with(']');
            } else if in_deps && t == "]" {
                in_deps = false;
            } else if in_deps {
                p.2.push(t.trim_end_matches(',').trim_matches('"').to_string());
            }
        }
    }
    let find = |dep: &str| -> Option<usize> {
        let mut it = dep.split(' ');
        let name = it.next()?;
        let version = it.next();
        packages.iter().position(|p| p.0 == name && version.is_none_or(|v| p.1 == v))
    };
    let mut seen = vec![false; packages.len()];
    let mut todo: Vec<usize> = packages.iter().position(|p| p.0 == root).into_iter().collect();
    let mut out = Vec::new();
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        if packages[i].0 != root {
            out.push(packages[i].0.clone());
        }
        for d in &packages[i].2 {
            if let Some(j) = find(d) {
                todo.push(j);
            }
        }
    }
    out.sort();
    out.dedup();
    out
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
    let mut problems: Vec<String> =
        scan_manifest(&manifest).into_iter().map(|c| format!("Cargo.toml: depends on {c}")).collect();
    let lock = std::fs::read_to_string(root.join("../../Cargo.lock")).expect("read the workspace's Cargo.lock");
    let closure = lock_closure(&lock, "dqlite-raft");
    assert!(closure.iter().any(|c| c == "tracing"), "dependency closure not found in Cargo.lock: {closure:?}");
    for c in &closure {
        if FORBIDDEN_CRATES.contains(&c.as_str()) || FORBIDDEN_TRANSITIVE.contains(&c.as_str()) {
            problems.push(format!("Cargo.lock: depends (transitively) on {c}"));
        }
    }
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
    assert_eq!(
        scan_manifest("[target.'cfg(unix)'.dependencies]\nnet = { package = \"mio\", version = \"1\" }"),
        vec!["mio"]
    );
    assert_eq!(scan_manifest("[dependencies.tokio]\nversion = \"1\""), vec!["tokio"]);
    assert!(scan_manifest("[dependencies]\nserde = \"1\"\n").is_empty());
}

#[test]
fn scanner_catches_io_printing_environment_and_aliases() {
    assert_eq!(scan_source("use std::io::Write;"), vec!["std::io"]);
    assert_eq!(scan_source("use std::{fmt, io};"), vec!["std::{io}"]);
    assert_eq!(scan_source("let p = std::env::var(\"X\");"), vec!["std::env"]);
    assert_eq!(scan_source("fn f() { println!(\"x\"); }"), vec!["println!"]);
    assert_eq!(scan_source("fn f() { eprintln!(\"x\"); }"), vec!["eprintln!"]);
    assert_eq!(scan_source("fn f() { print! (\"x\"); }"), vec!["print!"]);
    assert_eq!(scan_source("fn f() { dbg!(1); }"), vec!["dbg!"]);
    assert_eq!(scan_source("const D: &str = env!(\"HOME\");"), vec!["env!"]);
    assert_eq!(scan_source("const D: Option<&str> = option_env!(\"HOME\");"), vec!["option_env!"]);
    assert_eq!(scan_source("const B: &[u8] = include_bytes!(\"/etc/passwd\");"), vec!["include_bytes!"]);
    assert_eq!(scan_source("use std as s; fn f() { s::thread::spawn(|| ()); }"), vec!["std aliased"]);
    assert_eq!(scan_source("extern crate std as s;"), vec!["std aliased"]);
    assert_eq!(scan_source("use std::{self as s};"), vec!["std aliased"]);
    assert_eq!(scan_source("use ::std as s;"), vec!["std aliased"]);
    // Not violations: a string, a comment, similar names, `core`/`alloc`, tracing's macros.
    assert!(
        scan_source("// println!(\"x\")\nlet s = \"env!(X) std::io\"; my_env!(x); tracing::info!(\"x\");").is_empty()
    );
    assert!(scan_source("use core::fmt::Write; use std::{collections::BTreeMap, fmt};").is_empty());
    assert!(scan_source("let environment = 1; let io_len = 2; let stdas = 3;").is_empty());
}

#[test]
fn lock_closure_follows_dependencies_transitively() {
    let lock = "[[package]]\nname = \"a\"\nversion = \"1.0.0\"\ndependencies = [\n \"b\",\n \"c 2.0.0\",\n]\n\n\
                [[package]]\nname = \"b\"\nversion = \"1.0.0\"\ndependencies = [\n \"libc\",\n]\n\n\
                [[package]]\nname = \"c\"\nversion = \"1.0.0\"\ndependencies = [\n \"tokio\",\n]\n\n\
                [[package]]\nname = \"c\"\nversion = \"2.0.0\"\n\n\
                [[package]]\nname = \"libc\"\nversion = \"0.2.0\"\n\n\
                [[package]]\nname = \"tokio\"\nversion = \"1.0.0\"\n";
    assert_eq!(lock_closure(lock, "a"), vec!["b", "c", "libc"], "c 2.0.0 has no dependencies; c 1.0.0 is not used");
}
