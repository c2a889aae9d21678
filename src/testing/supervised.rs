//! One node process under a tiny supervising `sh`, shared by the [`RealDqlite`](super::RealDqlite)
//! and [`OwnDqlite`](super::OwnDqlite) launchers.
//!
//! The shell's standard input is a pipe from the test process. One line on it says what to do:
//! `keep` = SIGKILL the node and keep its data ([`Supervised::stop`]), `term` = SIGTERM it, wait,
//! write its exit status to `LOG.exit` and keep the data ([`Supervised::terminate`]); anything
//! else, or end-of-file, = SIGKILL it and delete its data. End-of-file also happens when the
//! test process dies for any reason, so no node outlives its test, even one kept in a `static`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::LaunchError;

/// `sh -c SCRIPT supervisor LOG DIR BINARY ARGS...`: prints the node's pid, then waits for a
/// line (or EOF) on stdin. `kill -9` + `wait` means the node is gone (and its port closed) when
/// the supervisor exits.
const SUPERVISOR: &str = r#"log=$1; dir=$2; shift 2
"$@" </dev/null >>"$log" 2>&1 &
pid=$!
echo "$pid"
read -r cmd
if [ "$cmd" = term ]; then
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"; echo "$?" >"$log.exit"
  exit 0
fi
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ "$cmd" != keep ]; then rm -rf "$dir"; rmdir "$(dirname "$dir")" 2>/dev/null; fi
exit 0"#;

/// How long a supervisor may take to exit after being told to kill its node.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A running, supervised node process.
pub(super) struct Supervised {
    shell: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    /// Node index, for messages.
    node: usize,
}

impl Supervised {
    /// Starts `binary args…` for node `node`, its output appended to `log`; `dir` is deleted when
    /// the node is stopped without `keep`. `env` is added to the node's environment.
    pub(super) fn spawn(
        node: usize,
        log: &Path,
        dir: &Path,
        binary: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Supervised, LaunchError> {
        let mut command = Command::new("sh");
        command.arg("-c").arg(SUPERVISOR).arg("dqlite-supervisor").arg(log).arg(dir).arg(binary).args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut shell =
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map_err(|source| {
                LaunchError::Io { what: format!("spawning the supervising sh for node {node}"), source }
            })?;
        let stdin = shell.stdin.take();
        let mut line = String::new();
        let read = match shell.stdout.take() {
            Some(stdout) => BufReader::new(stdout).read_line(&mut line),
            None => Ok(0),
        };
        let pid = match read.map(|_| line.trim().parse::<u32>()) {
            Ok(Ok(pid)) => pid,
            other => {
                let _ = shell.kill();
                let _ = shell.wait();
                let source = match other {
                    Err(e) => e,
                    Ok(Err(e)) => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    Ok(Ok(_)) => std::io::Error::other("unreachable: a parsed pid"),
                };
                return Err(LaunchError::Io {
                    what: format!("reading node {node}'s pid from its supervisor (got {line:?})"),
                    source,
                });
            }
        };
        Ok(Supervised { shell, stdin, pid, node })
    }

    /// The node's process id.
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// Tells the supervisor to SIGKILL the node (`keep` = keep its data) and waits for it.
    pub(super) fn stop(mut self, keep: bool) -> Result<(), LaunchError> {
        // A write error means the supervisor is already gone; waiting below covers it.
        self.command(if keep { "keep" } else { "drop" });
        self.wait_exit(KILL_TIMEOUT, "die after SIGKILL", String::new)
    }

    /// SIGTERM; waits (bounded by `bound`) for the node to exit and returns its exit status.
    pub(super) fn terminate(
        mut self,
        log: &Path,
        bound: Duration,
        log_tail: impl FnOnce() -> String,
    ) -> Result<i32, LaunchError> {
        let exit = exit_path(log);
        let _ = fs::remove_file(&exit);
        self.command("term");
        let node = self.node;
        self.wait_exit(bound, "exit after SIGTERM", log_tail)?;
        let status = fs::read_to_string(&exit)
            .map_err(|source| LaunchError::Io { what: format!("reading node {node}'s exit status"), source })?;
        let _ = fs::remove_file(&exit);
        status.trim().parse::<i32>().map_err(|e| LaunchError::Io {
            what: format!("parsing node {node}'s exit status {status:?}"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    fn command(&mut self, line: &str) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(format!("{line}\n").as_bytes());
        }
    }

    fn wait_exit(&mut self, bound: Duration, what: &str, detail: impl FnOnce() -> String) -> Result<(), LaunchError> {
        let start = Instant::now();
        loop {
            match self.shell.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if start.elapsed() < bound => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    // Past the bound: SIGKILL the node itself, then its shell.
                    let _ = Command::new("kill").arg("-9").arg(self.pid.to_string()).status();
                    let _ = self.shell.kill();
                    let _ = self.shell.wait();
                    return Err(LaunchError::Timeout {
                        what: format!("node {} (pid {}) to {what}", self.node, self.pid),
                        waited: start.elapsed(),
                        detail: detail(),
                    });
                }
                Err(source) => {
                    return Err(LaunchError::Io {
                        what: format!("waiting for node {}'s supervisor", self.node),
                        source,
                    })
                }
            }
        }
    }

    /// Whether the node process is still alive.
    pub(super) fn is_running(&mut self) -> bool {
        if !matches!(self.shell.try_wait(), Ok(None)) {
            return false;
        }
        // The node is the supervisor's child; until the supervisor reaps it, a dead node is a
        // zombie ('Z'), so the state letter is what tells.
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state != 'Z' && state != 'X'),
            // No procfs (not Linux): trust the supervisor being alive.
            Err(_) if !Path::new("/proc/self").exists() => true,
            Err(_) => false,
        }
    }
}

/// Where the supervisor writes the exit status after `term`.
pub(super) fn exit_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".exit");
    PathBuf::from(p)
}

/// The last `max_bytes` of the log at `path`.
pub(super) fn log_tail(path: &Path, max_bytes: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return "(no log)".to_owned();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max_bytes as u64)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
