//! The ingestor as a child process: start it, watch its CPU time and memory, stop it with
//! SIGTERM so that it flushes, and kill it if it will not stop.
//!
//! CPU time and peak memory come from `/proc`, so this is Linux-only, as is the project's
//! deployment target. While the child runs, a sampler reads `/proc/PID/stat` (user and
//! system time) and `/proc/PID/status` (`VmHWM`, the peak resident set) every
//! [`SAMPLE_EVERY`]. Once the child has been reaped, its exact CPU time is the growth of
//! this process's `cutime + cstime` (the CPU time of waited-for children), which includes
//! the final flush the sampler may have missed. Peak memory cannot be read after exit
//! without `wait4`, so it is the last sample: the flush after SIGTERM may add a little
//! that the report does not show.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::process::{Child, Command};
use tracing::{info, warn};

/// How often the sampler reads `/proc`.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Clock ticks per second in `/proc/*/stat` (`USER_HZ`): fixed at 100 by the kernel's
/// user-space ABI on every architecture Linux runs tickpipe on.
const USER_HZ: f64 = 100.0;

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Environment variables set for the child, besides what it inherits.
    pub env: Vec<(String, String)>,
    /// Environment variables the child must not inherit (secrets it has no use for).
    pub env_remove: Vec<String>,
    /// Append stdout and stderr here instead of inheriting them.
    pub log: Option<PathBuf>,
}

/// What the child used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChildUsage {
    /// User plus system CPU seconds over the child's whole life.
    pub cpu_seconds: f64,
    /// Highest resident set seen (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
    /// How it ended: `exit code 0`, `signal 9`, ...
    pub exit: String,
    pub exit_code: Option<i32>,
    /// It did not stop within the timeout after SIGTERM and was killed.
    pub killed: bool,
}

/// Why the child could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the ingestor log {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for {program} failed: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send SIGTERM to {program}: {reason}")]
    Signal { program: String, reason: String },
}

impl ChildError {
    /// A missing binary or an unwritable log stays that way; a failed wait or signal is
    /// the system's trouble and may pass.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Wait { .. } | Self::Signal { .. })
    }
}

/// Samples shared with the sampler task.
#[derive(Debug, Default)]
struct Samples {
    cpu_ticks: AtomicU64,
    peak_rss_kib: AtomicU64,
}

/// A started child process.
pub struct RunningChild {
    child: Child,
    pid: u32,
    program: String,
    samples: Arc<Samples>,
    sampler: tokio::task::JoinHandle<()>,
    /// This process's children CPU ticks before the child started.
    children_ticks_before: u64,
}

impl RunningChild {
    /// Starts the child with stdin closed and a fresh process group of its own, so that
    /// a Ctrl-C in the terminal reaches loadgen only and loadgen decides when the child
    /// stops.
    pub fn spawn(command: &ChildCommand) -> Result<Self, ChildError> {
        let program = command.program.display().to_string();
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.args).stdin(Stdio::null()).kill_on_drop(true).process_group(0);
        for (key, value) in &command.env {
            cmd.env(key, value);
        }
        for key in &command.env_remove {
            cmd.env_remove(key);
        }
        if let Some(path) = &command.log {
            let log_err = |source| ChildError::Log { path: path.display().to_string(), source };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(log_err)?;
            let err_file = file.try_clone().map_err(log_err)?;
            cmd.stdout(file).stderr(err_file);
        }
        let children_ticks_before = children_cpu_ticks().unwrap_or(0);
        let child =
            cmd.spawn().map_err(|source| ChildError::Spawn { program: program.clone(), source })?;
        let pid = child.id().expect("a child that was just spawned has not been reaped");
        info!(program = %program, pid, "ingestor started");
        let samples = Arc::new(Samples::default());
        let sampler = tokio::spawn(sample(pid, samples.clone()));
        Ok(Self { child, pid, program, samples, sampler, children_ticks_before })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the child has exited on its own, and how.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM, waits up to `timeout` for the child to exit, kills it otherwise, and
    /// returns what it used.
    pub async fn stop(mut self, timeout: Duration) -> Result<ChildUsage, ChildError> {
        let program = self.program.clone();
        let mut killed = false;
        if self.child.try_wait().ok().flatten().is_none() {
            send_sigterm(self.pid)
                .map_err(|reason| ChildError::Signal { program: program.clone(), reason })?;
        }
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                warn!(pid = self.pid, timeout = ?timeout, "ingestor did not stop after SIGTERM; killing it");
                killed = true;
                // start_kill fails only when the child is already gone; wait tells.
                let _ = self.child.start_kill();
                self.child.wait().await
            }
        }
        .map_err(|source| ChildError::Wait { program, source })?;
        self.sampler.abort();
        let sampled_ticks = self.samples.cpu_ticks.load(Ordering::Relaxed);
        let reaped_ticks =
            children_cpu_ticks().map(|t| t.saturating_sub(self.children_ticks_before));
        let ticks = reaped_ticks.unwrap_or(0).max(sampled_ticks);
        let usage = ChildUsage {
            cpu_seconds: ticks as f64 / USER_HZ,
            peak_rss_bytes: self.samples.peak_rss_kib.load(Ordering::Relaxed) * 1024,
            exit: describe(status),
            exit_code: status.code(),
            killed,
        };
        info!(pid = self.pid, exit = %usage.exit, cpu_seconds = usage.cpu_seconds, "ingestor stopped");
        Ok(usage)
    }
}

/// Reads the child's CPU time and peak memory until it is gone.
async fn sample(pid: u32, samples: Arc<Samples>) {
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let status = PathBuf::from(format!("/proc/{pid}/status"));
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    loop {
        ticker.tick().await;
        let Some(ticks) = read_cpu_ticks(&stat) else { return };
        samples.cpu_ticks.fetch_max(ticks, Ordering::Relaxed);
        // A zombie has no memory lines; keep the last peak.
        if let Some(kib) = read_status_kib(&status, "VmHWM:") {
            samples.peak_rss_kib.fetch_max(kib, Ordering::Relaxed);
        }
    }
}

/// SIGTERM through the `kill` utility: the workspace has no libc binding, and tokio's
/// child handle can only send SIGKILL, which would skip the ingestor's flush.
fn send_sigterm(pid: u32) -> Result<(), String> {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("kill exited with {status}")) }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "unknown".into(),
    }
}

/// The fields of a `/proc/*/stat` line after the command name, which is in parentheses
/// and may itself hold spaces and parentheses.
fn stat_fields(line: &str) -> Option<Vec<&str>> {
    let after = &line[line.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// User plus system ticks of a process or thread: fields 14 and 15 of its stat line, the
/// 12th and 13th after the command name.
pub fn read_cpu_ticks(stat: &Path) -> Option<u64> {
    let line = std::fs::read_to_string(stat).ok()?;
    let fields = stat_fields(&line)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds the calling thread has used so far.
pub fn thread_cpu_seconds() -> Option<f64> {
    read_cpu_ticks(Path::new("/proc/thread-self/stat")).map(|t| t as f64 / USER_HZ)
}

/// CPU ticks of this process's reaped children: `cutime + cstime`, fields 16 and 17.
fn children_cpu_ticks() -> Option<u64> {
    let line = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields = stat_fields(&line)?;
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(cutime + cstime)
}

/// A `kB` line of a `/proc/*/status` file, such as `VmHWM:`.
fn read_status_kib(status: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 3 4 20 0 1 0";
        let fields = stat_fields(line).unwrap();
        assert_eq!(fields[0], "S");
        assert_eq!((fields[11], fields[12]), ("250", "75"));
        assert_eq!((fields[13], fields[14]), ("3", "4"));
    }

    #[test]
    fn this_process_can_be_read() {
        assert!(read_cpu_ticks(Path::new("/proc/self/stat")).is_some());
        assert!(thread_cpu_seconds().is_some());
        assert!(children_cpu_ticks().is_some());
        assert!(read_status_kib(Path::new("/proc/self/status"), "VmHWM:").unwrap() > 0);
    }

    #[tokio::test]
    async fn a_busy_child_is_measured_and_stopped_by_sigterm() {
        // A shell that spins until SIGTERM, then exits 3 so the test sees the trap ran.
        let command = ChildCommand {
            program: "sh".into(),
            args: vec!["-c".into(), "trap 'exit 3' TERM; while :; do :; done".into()],
            env: vec![],
            env_remove: vec![],
            log: None,
        };
        let mut child = RunningChild::spawn(&command).unwrap();
        assert!(child.try_exit().is_none());
        // Wait, bounded, until the sampler has seen some CPU time.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.samples.cpu_ticks.load(Ordering::Relaxed) < 20 {
            assert!(std::time::Instant::now() < deadline, "the child never used CPU");
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        let usage = child.stop(Duration::from_secs(10)).await.unwrap();
        assert_eq!(usage.exit_code, Some(3), "{usage:?}");
        assert!(!usage.killed);
        assert!(usage.cpu_seconds >= 0.2, "{usage:?}");
        assert!(usage.peak_rss_bytes > 0, "{usage:?}");
    }

    #[tokio::test]
    async fn a_child_that_ignores_sigterm_is_killed() {
        // The shell says when its trap is set, so the SIGTERM cannot arrive before it.
        let ready = std::env::temp_dir().join(format!("tickpipe-trap-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let script =
            format!("trap '' TERM; : > '{}'; while :; do sleep 0.05; done", ready.display());
        let command = ChildCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script],
            env: vec![],
            env_remove: vec![],
            log: None,
        };
        let child = RunningChild::spawn(&command).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(std::time::Instant::now() < deadline, "the shell never set its trap");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_file(&ready);
        let usage = child.stop(Duration::from_millis(300)).await.unwrap();
        assert!(usage.killed);
        assert_eq!(usage.exit, "signal 9");
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let command = ChildCommand {
            program: "/nonexistent/ingestor".into(),
            args: vec![],
            env: vec![],
            env_remove: vec![],
            log: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let err = runtime.block_on(async { RunningChild::spawn(&command).err().unwrap() });
        assert!(err.to_string().contains("/nonexistent/ingestor"), "{err}");
        assert!(!err.is_retryable());
    }
}
