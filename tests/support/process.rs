//! Running external programs (nix, larder's own CLI) with a deadline.
//!
//! Every command a test runs goes through [`run`], so a client that hangs (Nix 2.8 can,
//! when a server answers a PUT badly) fails its test instead of stalling the suite.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a finished (or killed) command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    pub cmdline: String,
    /// Exit code; `None` when a signal ended it (including our timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// Panics with everything the command said unless it exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "command failed: {}", self.describe());
        self
    }

    /// Panics unless the command ran to completion and exited non-zero.
    #[track_caller]
    pub fn fails(self) -> Self {
        assert!(
            !self.timed_out && self.code.is_some() && self.code != Some(0),
            "command was expected to fail: {}",
            self.describe()
        );
        self
    }

    pub fn describe(&self) -> String {
        format!(
            "{}\n  exit: {:?}{}\n  stdout:\n{}\n  stderr:\n{}",
            self.cmdline,
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            indent(&self.stdout),
            indent(&self.stderr)
        )
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// A command running in the background, in its own process group.
pub struct Running {
    cmdline: String,
    child: Child,
    out: Option<thread::JoinHandle<Vec<u8>>>,
    err: Option<thread::JoinHandle<Vec<u8>>>,
}

impl Running {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Has it exited yet?
    pub fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the command, killing its whole process group at the deadline.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    kill_group(self.child.id());
                    break self.child.wait().ok();
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("waiting for {}: {e}", self.cmdline),
            }
        };
        // Builders started by nix live in the same group; make sure nothing keeps the
        // pipes open once the leader is gone.
        kill_group(self.child.id());
        let take = |h: Option<thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Output {
            cmdline: self.cmdline.clone(),
            code: status.and_then(|s| s.code()),
            stdout: take(self.out.take()),
            stderr: take(self.err.take()),
            timed_out,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_group(self.child.id());
            let _ = self.child.wait();
        }
    }
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Starts `cmd` with no stdin and captured output, in its own process group.
pub fn spawn(cmd: &mut Command) -> Running {
    let cmdline = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = child.stdout.take().map(|s| drain(Box::new(s)));
    let err = child.stderr.take().map(|s| drain(Box::new(s)));
    Running {
        cmdline,
        child,
        out,
        err,
    }
}

/// Runs `cmd` to completion, or kills it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    spawn(cmd).wait(timeout)
}
