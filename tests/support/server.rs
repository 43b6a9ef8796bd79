//! A real `larder serve` process in its own data directory.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::http::{self, Auth};
use super::process::{self, Output};
use super::workdir::Workdir;

/// The larder binary cargo built for this test run.
pub const LARDER: &str = env!("CARGO_BIN_EXE_larder");

/// How long a larder CLI command may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a start may take before the listening line must have appeared.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a graceful stop may take after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the server learns its data directory and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// `--data-dir DIR --listen ADDR`
    Flags,
    /// `LARDER_DATA_DIR` and `LARDER_LISTEN`
    Env,
}

/// A cache as `larder cache info --json` describes it.
#[derive(Debug, Clone)]
pub struct Cache {
    pub name: String,
    /// `http://127.0.0.1:PORT/NAME`, valid for the server start it was made in.
    pub url: String,
    /// `keyname:base64`, the exact `trusted-public-keys` entry.
    pub public_key: String,
}

impl Cache {
    pub fn key_name(&self) -> &str {
        self.public_key
            .split_once(':')
            .map(|(n, _)| n)
            .unwrap_or(&self.public_key)
    }

    /// `URL/rel`
    pub fn at(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }
}

/// Numbers from `larder stats --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub chunk_bytes_uncompressed: u64,
    pub nars: u64,
    pub store_paths: u64,
}

impl Stats {
    pub fn parse(json: &str) -> Stats {
        let v: serde_json::Value = serde_json::from_str(json.trim())
            .unwrap_or_else(|e| panic!("stats output is not JSON ({e}): {json}"));
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .unwrap_or_else(|| panic!("stats JSON lacks a numeric {k:?}: {json}"))
        };
        Stats {
            chunks: field("chunks"),
            chunk_bytes: field("chunk_bytes"),
            chunk_bytes_uncompressed: field("chunk_bytes_uncompressed"),
            nars: field("nars"),
            store_paths: field("store_paths"),
        }
    }
}

/// One `larder serve` and everything it owns. Dropping it kills the process.
pub struct Server {
    work: Workdir,
    data_dir: PathBuf,
    launch: Launch,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of the current start.
    url: String,
    /// stdout lines, one list per start.
    stdout: Vec<Arc<Mutex<Vec<String>>>>,
    stderr_log: PathBuf,
    token: String,
    /// Extra `larder serve` arguments and environment, for every start.
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
}

impl Server {
    /// Starts a server on a fresh data directory and waits until it is healthy.
    pub fn start() -> Server {
        Server::start_with(Launch::Flags)
    }

    pub fn start_with(launch: Launch) -> Server {
        let mut s = Server::new_stopped(launch);
        s.spawn();
        s
    }

    /// Starts a server with extra `larder serve` arguments and environment (kept
    /// for restarts), e.g. `--s3-listen 127.0.0.1:0`.
    pub fn start_with_extra(launch: Launch, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut s = Server::new_stopped(launch);
        s.extra_args = args.iter().map(|a| a.to_string()).collect();
        s.extra_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.spawn();
        s
    }

    /// Like [`Server::start_with_extra`] without starting it, so a test can prepare
    /// the data directory first; start it with [`Server::start_again`].
    pub fn new_stopped_with_extra(launch: Launch, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut s = Server::new_stopped(launch);
        s.extra_args = args.iter().map(|a| a.to_string()).collect();
        s.extra_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s
    }

    /// A server object with a fresh, empty data directory and no process yet.
    pub fn new_stopped(launch: Launch) -> Server {
        let work = Workdir::new("server");
        let data_dir = work.join("data");
        let stderr_log = work.join("larder.stderr.log");
        Server {
            work,
            data_dir,
            launch,
            child: None,
            url: String::new(),
            stdout: Vec::new(),
            stderr_log,
            token: String::new(),
            extra_args: Vec::new(),
            extra_env: Vec::new(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn work(&self) -> &Workdir {
        &self.work
    }

    /// `http://127.0.0.1:PORT` of the running server.
    pub fn url(&self) -> &str {
        assert!(self.child.is_some(), "the server is not running");
        &self.url
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        self.url().trim_start_matches("http://").to_string()
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the server wrote to stderr, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// stdout lines of the current (or last) start.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .last()
            .map(|l| l.lock().map(|v| v.clone()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for a stdout line of the current start matching `pred`.
    pub fn wait_stdout(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.stdout_lines().into_iter().find(|l| pred(l)) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// stdout lines of every start so far, oldest first.
    pub fn stdout_by_start(&self) -> Vec<Vec<String>> {
        self.stdout
            .iter()
            .map(|l| l.lock().map(|v| v.clone()).unwrap_or_default())
            .collect()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let start_no = self.stdout.len() + 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .expect("opening the server log");
        writeln!(log, "=== larder test harness: start {start_no} ===").expect("writing the log");
        let mut cmd = Command::new(LARDER);
        cmd.arg("serve");
        clear_larder_env(&mut cmd);
        match self.launch {
            Launch::Flags => {
                cmd.arg("--data-dir")
                    .arg(&self.data_dir)
                    .args(["--listen", "127.0.0.1:0"]);
            }
            Launch::Env => {
                cmd.env("LARDER_DATA_DIR", &self.data_dir)
                    .env("LARDER_LISTEN", "127.0.0.1:0");
            }
        }
        cmd.args(&self.extra_args);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd.env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("starting larder serve");
        let lines = Arc::new(Mutex::new(Vec::new()));
        self.stdout.push(lines.clone());
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut l) = lines.lock() {
                    l.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix("larder listening on ") {
                        break rest.trim().trim_end_matches('/').to_string();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !self.is_running() {
                        self.child = None;
                        panic!(
                            "larder serve exited before listening.\nstdout: {:?}\nstderr:\n{}",
                            self.stdout_lines(),
                            self.log()
                        );
                    }
                    if Instant::now() >= deadline {
                        self.kill9();
                        panic!(
                            "larder serve printed no `larder listening on` line within {:?}.\nstdout: {:?}\nstderr:\n{}",
                            START_TIMEOUT,
                            self.stdout_lines(),
                            self.log()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(100));
                    self.kill9();
                    panic!(
                        "larder serve closed stdout before listening.\nstdout: {:?}\nstderr:\n{}",
                        self.stdout_lines(),
                        self.log()
                    );
                }
            }
        };
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "unexpected listening URL {url:?}"
        );
        self.url = url;
        self.wait_healthy(deadline);
        let token_file = self.data_dir.join("admin.token");
        self.token = std::fs::read_to_string(&token_file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", token_file.display()))
            .trim()
            .to_string();
        assert!(!self.token.is_empty(), "admin.token is empty");
    }

    fn wait_healthy(&mut self, deadline: Instant) {
        let health = format!("{}/_health", self.url);
        loop {
            match http::try_request("GET", &health, Auth::None, &[], None) {
                Ok(r) if r.status == 200 => return,
                other => {
                    if Instant::now() >= deadline || !self.is_running() {
                        panic!(
                            "{health} never answered 200 (last: {other:?}).\nstderr:\n{}",
                            self.log()
                        );
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Restarts on the same data directory. The port changes.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// Starts a stopped (or killed) server again on the same data directory.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "larder serve did not exit within {STOP_TIMEOUT:?} of SIGTERM.\nstderr:\n{}",
                        self.log()
                    );
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for larder serve: {e}"),
            }
        }
    }

    /// SIGKILL: the crash case. Nothing gets to flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Runs the larder CLI with `args`, no LARDER_* variables from outside.
    pub fn cli(&self, args: &[&str]) -> Output {
        larder(args, &[])
    }

    /// Runs the larder CLI against this running server (`--server URL --token T`).
    pub fn remote(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", self.url(), "--token", self.token()]);
        larder(&all, &[])
    }

    /// Runs the larder CLI on the data directory (`--data-dir DIR`).
    pub fn local(&self, args: &[&str]) -> Output {
        let dir = self.data_dir.to_str().expect("UTF-8 temp path").to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", &dir]);
        larder(&all, &[])
    }

    /// Creates a cache through the running server and returns its description.
    pub fn create_cache(&self, name: &str, public: bool) -> Cache {
        let mut args = vec!["cache", "create", name];
        if public {
            args.push("--public");
        }
        self.remote(&args).ok();
        self.cache(name)
    }

    /// `larder cache info NAME --json` through the running server.
    pub fn cache(&self, name: &str) -> Cache {
        let info = self.cache_info(name);
        let public_key = info["public_key"]
            .as_str()
            .unwrap_or_else(|| panic!("cache info has no public_key string: {info}"))
            .to_string();
        Cache {
            name: name.to_string(),
            url: format!("{}/{name}", self.url()),
            public_key,
        }
    }

    pub fn cache_info(&self, name: &str) -> serde_json::Value {
        let out = self.remote(&["cache", "info", name, "--json"]).ok();
        parse_json(&out)
    }

    /// `larder stats --json` through the running server.
    pub fn stats(&self) -> Stats {
        Stats::parse(&self.remote(&["stats", "--json"]).ok().stdout)
    }

    /// `larder stats --json --data-dir DIR`, for a stopped server.
    pub fn stats_local(&self) -> Stats {
        Stats::parse(&self.local(&["stats", "--json"]).ok().stdout)
    }

    pub fn auth(&self) -> Auth<'_> {
        Auth::Bearer(&self.token)
    }

    /// The `*.pack` files of the chunk store.
    pub fn pack_files(&self) -> Vec<PathBuf> {
        let mut packs: Vec<PathBuf> = std::fs::read_dir(self.data_dir.join("packs"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "pack"))
                    .collect()
            })
            .unwrap_or_default();
        packs.sort();
        packs
    }

    /// Bytes the process has read through system calls so far (`/proc/PID/io`).
    pub fn bytes_read(&self) -> Option<u64> {
        let pid = self.pid()?;
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
        io.lines()
            .find_map(|l| l.strip_prefix("rchar:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "---- larder stderr (last {} lines) ----\n{}\n---- end of larder stderr ----",
                tail.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.kill9();
    }
}

fn clear_larder_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LARDER_") {
            cmd.env_remove(k);
        }
    }
}

/// Runs the larder CLI with `args` and extra environment, none inherited LARDER_*.
pub fn larder(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(LARDER);
    cmd.args(args);
    clear_larder_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    process::run(&mut cmd, CLI_TIMEOUT)
}

/// Parses a command's stdout as one JSON document.
#[track_caller]
pub fn parse_json(out: &Output) -> serde_json::Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", out.describe()))
}

/// Total bytes of regular files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        if md.is_dir() {
            total += dir_bytes(&e.path());
        } else if md.is_file() {
            total += md.len();
        }
    }
    total
}

/// Opens `path` for reading, panicking with the path on failure.
pub fn open(path: &Path) -> File {
    File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}
