//! One role as a child process: started with its output appended to its log file, in a process
//! group of its own, stopped with SIGTERM (then SIGKILL after a bound), and described when it ends.
//!
//! Each child gets its own process group so that Ctrl-C at the terminal reaches `dsm` alone: the
//! roles must stop in order (actors before the learner before the shards), which a SIGINT sent to
//! the whole foreground group at once would not give. And each child asks the kernel for SIGTERM
//! when `dsm` dies (`PR_SET_PDEATHSIG`), so a `dsm` killed with SIGKILL leaves no role running
//! for long: every role stops cleanly on SIGTERM.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What a role is started with.
#[derive(Debug, Clone)]
pub struct Launch {
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl Launch {
    /// The command line as a user would type it (for the log's header and error messages).
    pub fn command_line(&self) -> String {
        let mut line = self.binary.display().to_string();
        for a in &self.args {
            line.push(' ');
            line.push_str(a);
        }
        line
    }
}

/// A running (or finished) role process.
#[derive(Debug)]
pub struct RoleProcess {
    child: Child,
    status: Option<ExitStatus>,
}

impl RoleProcess {
    /// Starts `launch`, appending its stdout and stderr to its log after a header line naming the
    /// command, so that a restarted role's log reads as one story.
    pub fn spawn(launch: &Launch) -> Result<RoleProcess> {
        if let Some(dir) = launch.log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .with_context(|| format!("opening {}", launch.log.display()))?;
        writeln!(log, "==== dsm up, unix time {}: {}", unix_seconds(), launch.command_line())?;
        let err = log.try_clone()?;
        let mut command = Command::new(&launch.binary);
        command.args(&launch.args).stdin(Stdio::null()).stdout(log).stderr(err).process_group(0);
        // SAFETY: the closure runs in the forked child before exec and calls only prctl, which is
        // async-signal-safe; it allocates nothing and touches no lock.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("starting {}", launch.binary.display()))?;
        Ok(RoleProcess { child, status: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has ended (reaping it), without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends SIGTERM: every role then stops cleanly within its own bound.
    pub fn terminate(&mut self) {
        if self.try_wait().is_none() {
            // SAFETY: kill(2) on our own child's pid; the child is not reaped yet (try_wait said
            // so), so the pid cannot have been reused.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// Waits up to `bound` for it to end.
    pub fn wait_for(&mut self, bound: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if start.elapsed() >= bound {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.status
    }
}

/// "exit code 1", "killed by SIGKILL (signal 9)".
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(sig) => format!("killed by {} (signal {sig})", signal_name(sig)),
        None => format!("{status}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        _ => "a signal",
    }
}

/// The last `n` lines of `path` (at most its last 64 KiB), for a death report.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut file) = File::open(path) else { return vec![] };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(64 * 1024);
    if file.seek(SeekFrom::Start(from)).is_err() {
        return vec![];
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return vec![];
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    // A tail that starts mid-file starts mid-line: drop that partial first line.
    let skip = usize::from(from > 0 && lines.len() > 1);
    let lines = &lines[skip..];
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_logged_stopped_and_described() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/sleeper.log");
        let launch = Launch {
            binary: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hello; echo oops >&2; exec sleep 30".into()],
            log: log.clone(),
        };
        let mut p = RoleProcess::spawn(&launch).unwrap();
        assert!(p.try_wait().is_none());
        std::thread::sleep(Duration::from_millis(200));
        p.terminate();
        let status = p.wait_for(Duration::from_secs(5)).expect("sleep stops on SIGTERM");
        assert_eq!(describe(status), "killed by SIGTERM (signal 15)");
        let lines = tail(&log, 2);
        assert_eq!(lines, vec!["hello".to_string(), "oops".to_string()]);
        assert!(tail(&log, 10)[0].starts_with("==== dsm up"), "{:?}", tail(&log, 10));
    }

    #[test]
    fn exit_codes_and_long_logs() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let launch = Launch {
            binary: "/bin/sh".into(),
            args: vec!["-c".into(), "seq 1 20000; exit 3".into()],
            log: log.clone(),
        };
        let mut p = RoleProcess::spawn(&launch).unwrap();
        let status = p.wait_for(Duration::from_secs(10)).unwrap();
        assert_eq!(describe(status), "exit code 3");
        assert_eq!(tail(&log, 3), vec!["19998", "19999", "20000"]);
        assert!(tail(&dir.path().join("missing.log"), 3).is_empty());
    }
}
