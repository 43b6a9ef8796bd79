//! A Debian bookworm system booted with systemd as PID 1 (systemd-nspawn), for the
//! appliance's real-boot test. Needs root, `debootstrap`, `systemd-container` and
//! `iproute2` (tests/run.sh installs them).
//!
//! - The root file system is made once by debootstrap (about 3 minutes) and cached
//!   in `$LARDER_TEST_CACHE_DIR` (default `/var/cache/larder-test`), under a lock so
//!   concurrent test runs on one machine build it once. Each container boots a copy
//!   (about 1 s), so tests never change the cached tree.
//! - Networking: the test makes two network namespaces joined by a veth pair. The
//!   container boots in one (`--network-namespace-path`) at [`SERVER_ADDR`]; Nix
//!   from the host runs in the other ([`Container::client`]) at [`CLIENT_ADDR`]. The
//!   host's own network is untouched, so parallel runs cannot collide.
//! - Commands run inside with `nsenter` into the container's PID 1.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::process::{self, Output};
use super::workdir::Workdir;

/// Names the cached tree; bump it when the debootstrap command changes.
const ROOT_NAME: &str = "debian-bookworm-minbase-1";
/// What debootstrap installs beyond minbase: systemd as init, and TLS roots.
const DEBOOTSTRAP_INCLUDE: &str = "systemd,systemd-sysv,dbus,ca-certificates";
/// The mirror, unless `LARDER_TEST_DEBIAN_MIRROR` names another.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The first debootstrap takes about 3 minutes here; allow for a slow mirror.
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Booting to `running` takes about 2 s on an idle machine; far longer while
/// other builds load both cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// A clean poweroff takes about 2 s here; longer than the unit's TimeoutStopSec
/// (60 s), so a service that ignores SIGTERM shows as a failure, not a hang.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(90);
/// One command run inside the container.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(180);

/// The container's address on the test's private link.
pub const SERVER_ADDR: &str = "10.231.0.2";
/// The client namespace's address on that link.
pub const CLIENT_ADDR: &str = "10.231.0.1";
const PREFIX_LEN: u8 = 24;

/// Where cached roots (and other slow-to-make test assets) live.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LARDER_TEST_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/larder-test"))
}

/// Whether this process may boot containers.
pub fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output();
    matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The cached bookworm root, made by debootstrap when missing.
pub fn bookworm_root() -> PathBuf {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let root = dir.join(ROOT_NAME);
    let lock = File::create(dir.join(format!("{ROOT_NAME}.lock"))).expect("creating the lock");
    lock.lock().expect("locking the root cache");
    if !root.join("usr/lib/systemd/systemd").exists() {
        let tmp = dir.join(format!("{ROOT_NAME}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let mirror = std::env::var("LARDER_TEST_DEBIAN_MIRROR")
            .ok()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| DEFAULT_MIRROR.to_string());
        eprintln!(
            "debootstrap: making {} (once; about 3 minutes)",
            root.display()
        );
        let mut cmd = Command::new("debootstrap");
        cmd.args(["--variant=minbase"])
            .arg(format!("--include={DEBOOTSTRAP_INCLUDE}"))
            .arg("bookworm")
            .arg(&tmp)
            .arg(&mirror);
        let out = process::run(&mut cmd, DEBOOTSTRAP_TIMEOUT);
        assert!(out.success(), "debootstrap failed: {}", out.describe());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&tmp, &root).expect("moving the new root into the cache");
    }
    drop(lock);
    root
}

/// The child of `nspawn_pid` once it is systemd (the container's PID 1).
fn systemd_child(nspawn_pid: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "systemd")
        })
}

/// Runs `ip ARGS`, panicking with its output on failure.
fn ip(args: &[&str]) {
    let out = process::run(Command::new("ip").args(args), Duration::from_secs(30));
    assert!(out.success(), "ip {args:?}: {}", out.describe());
}

/// Two network namespaces joined by a veth pair; removed on drop.
struct Link {
    server: String,
    client: String,
}

impl Link {
    fn new() -> Link {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let link = Link {
            server: format!("larder-t{id}s"),
            client: format!("larder-t{id}c"),
        };
        // Interface names: at most 15 bytes.
        let (a, b) = (format!("lt{id}c"), format!("lt{id}s"));
        // Names left by a run that was killed (same pid, long ago) would collide.
        for ns in [&link.server, &link.client] {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        ip(&["netns", "add", &link.server]);
        ip(&["netns", "add", &link.client]);
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &link.client]);
        ip(&["link", "set", &b, "netns", &link.server]);
        for (ns, dev, addr) in [
            (&link.client, &a, CLIENT_ADDR),
            (&link.server, &b, SERVER_ADDR),
        ] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/{PREFIX_LEN}"),
                "dev",
                dev,
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A copy of the cached root, booted (or not yet) with systemd as PID 1.
pub struct Container {
    work: Workdir,
    root: PathBuf,
    name: String,
    link: Link,
    nspawn: Option<Child>,
    pid1: u32,
    boots: u32,
}

impl Container {
    /// A fresh copy of the bookworm root and its network; not booted.
    pub fn new(label: &str) -> Container {
        let cached = bookworm_root();
        let work = Workdir::new(&format!("container-{label}"));
        let root = work.join("root");
        let out = process::run(
            Command::new("cp").arg("-a").arg(&cached).arg(&root),
            Duration::from_secs(300),
        );
        assert!(out.success(), "copying the root: {}", out.describe());
        let link = Link::new();
        let name = link.server.clone();
        Container {
            work,
            root,
            name,
            link,
            nspawn: None,
            pid1: 0,
            boots: 0,
        }
    }

    /// The container's file system, seen from the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// nspawn's console output, over all boots.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.work.join("console.log")).unwrap_or_default()
    }

    /// Boots and waits until systemd reports `running` (or `degraded`).
    pub fn boot(&mut self) {
        assert!(self.nspawn.is_none(), "already booted");
        self.boots += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("console.log"))
            .expect("opening the console log");
        let child = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&self.root)
            .args(["-b", "--register=no", "--keep-unit", "--console=passive"])
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                self.link.server
            ))
            .args(["-M", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("cloning the log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting systemd-nspawn");
        let nspawn_pid = child.id();
        self.nspawn = Some(child);
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut state = String::new();
        loop {
            // nspawn's child becomes the container's PID 1 (systemd); before that it
            // is nspawn's own helper, so look again until it is systemd.
            self.pid1 = systemd_child(nspawn_pid).unwrap_or(0);
            if self.pid1 != 0 {
                let out =
                    self.exec_timeout(&["systemctl", "is-system-running"], Duration::from_secs(10));
                state = out.stdout.trim().to_string();
                if state == "running" || state == "degraded" {
                    return;
                }
            }
            self.check_alive(
                deadline,
                &format!("PID 1 {}, system state {state:?}", self.pid1),
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn check_alive(&mut self, deadline: Instant, what: &str) {
        let exited = match self.nspawn.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        };
        if exited || Instant::now() >= deadline {
            self.kill();
            panic!(
                "container did not boot ({what}; nspawn {}).\nconsole:\n{}",
                if exited { "exited" } else { "timed out" },
                self.console()
            );
        }
    }

    /// Shuts the container down cleanly (as `systemctl poweroff` inside).
    pub fn poweroff(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        let _ = self.exec_timeout(
            &["systemctl", "poweroff", "--no-block"],
            Duration::from_secs(10),
        );
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => {
                    self.pid1 = 0;
                    return;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => {
                    self.nspawn = Some(child);
                    self.kill();
                    panic!(
                        "container did not power off within {POWEROFF_TIMEOUT:?}.\nconsole:\n{}",
                        self.console()
                    );
                }
            }
        }
    }

    /// Ends the container at once: its PID 1 and nspawn.
    fn kill(&mut self) {
        if self.pid1 != 0 {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid1.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut c) = self.nspawn.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.pid1 = 0;
    }

    /// Runs a command inside, with a clean environment.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_timeout(args, EXEC_TIMEOUT)
    }

    fn exec_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        assert!(self.pid1 != 0, "the container is not running");
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "-t",
            &self.pid1.to_string(),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "--",
        ])
        .args([
            "/usr/bin/env",
            "-i",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
            "LANG=C.UTF-8",
        ])
        .args(args);
        process::run(&mut cmd, timeout)
    }

    /// Runs a shell script inside.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["/bin/sh", "-c", script])
    }

    /// `inner`, run from the host in the client namespace (`ip netns exec`), with
    /// the same program, arguments and environment.
    pub fn client(&self, inner: &Command) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.link.client])
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }

    /// How many times this container was booted.
    pub fn boots(&self) -> u32 {
        self.boots
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let console = self.console();
            let tail: Vec<&str> = console.lines().rev().take(60).collect();
            eprintln!(
                "---- container console (last {} lines) ----\n{}\n---- end ----",
                tail.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            if self.pid1 != 0 {
                let j = self.exec_timeout(
                    &[
                        "journalctl",
                        "--no-pager",
                        "-n",
                        "60",
                        "-u",
                        "larder.service",
                    ],
                    Duration::from_secs(20),
                );
                eprintln!(
                    "---- journal of larder.service ----\n{}{}",
                    j.stdout, j.stderr
                );
            }
        }
        if self.nspawn.is_some() {
            let _ = self.exec_timeout(
                &["systemctl", "poweroff", "--no-block"],
                Duration::from_secs(10),
            );
            if let Some(c) = self.nspawn.as_mut() {
                let deadline = Instant::now() + POWEROFF_TIMEOUT;
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            self.kill();
        }
    }
}
