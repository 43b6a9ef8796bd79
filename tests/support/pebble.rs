//! A real ACME CA for a test: Debian's `pebble`, with `pebble-challtestsrv` as its
//! DNS server mapping every name to 127.0.0.1 (TESTING.md's recipe), all on free
//! ports. Pebble validates HTTP-01 at the name's `http_port` and TLS-ALPN-01 at its
//! `tls_port`: a test points those at the listeners its larder opens.
//!
//! Validation is real (no `PEBBLE_VA_ALWAYS_VALID`); only the VA's random sleep is
//! off (`PEBBLE_VA_NOSLEEP=1`). Pebble forgets everything when it stops.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::tls::{free_ports, roots, HttpsConn, TestCa};
use super::workdir::Workdir;

/// How long Pebble may take to answer its directory after starting.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Pebble {
    work: Workdir,
    children: Vec<Child>,
    /// The ACME directory listener.
    pub port: u16,
    /// Pebble's management API (roots, intermediates).
    pub mgmt_port: u16,
    dns_port: u16,
    dns_mgmt_port: u16,
    /// Where Pebble connects for HTTP-01.
    pub http_port: u16,
    /// Where Pebble connects for TLS-ALPN-01.
    pub tls_port: u16,
    /// The CA that signed Pebble's own HTTPS certificate: `directory_ca_file`.
    pub directory_ca_file: PathBuf,
    log: PathBuf,
}

impl Pebble {
    /// A configured, not yet started Pebble. `validity_secs` makes it issue
    /// certificates that live that long (Pebble's `certificateValidityPeriod`).
    pub fn new(http_port: u16, tls_port: u16, validity_secs: Option<u64>) -> Pebble {
        let work = Workdir::new("pebble");
        let ca = TestCa::new("larder test CA for pebble's listener");
        let leaf = ca.issue(&["127.0.0.1", "localhost"]);
        let directory_ca_file = work.join("directory-ca.pem");
        std::fs::write(&directory_ca_file, ca.pem()).expect("writing the CA");
        std::fs::write(work.join("cert.pem"), &leaf.cert_pem).expect("writing pebble's cert");
        std::fs::write(work.join("key.pem"), &leaf.key_pem).expect("writing pebble's key");
        // Four distinct ports, none of them the test's own two.
        let [port, mgmt_port, dns_port, dns_mgmt_port] = loop {
            let ports = free_ports::<4>();
            if !ports.iter().any(|p| *p == http_port || *p == tls_port) {
                break ports;
            }
        };
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": work.join("cert.pem"),
            "privateKey": work.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(v) = validity_secs {
            pebble["certificateValidityPeriod"] = serde_json::json!(v);
        }
        let cfg = serde_json::json!({ "pebble": pebble });
        std::fs::write(work.join("pebble.json"), cfg.to_string()).expect("writing pebble.json");
        let log = work.join("pebble.log");
        Pebble {
            work,
            children: Vec::new(),
            port,
            mgmt_port,
            dns_port,
            dns_mgmt_port,
            http_port,
            tls_port,
            directory_ca_file,
            log,
        }
    }

    /// `https://127.0.0.1:PORT/dir`
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    fn spawn(&mut self, program: &str, args: &[String], env: &[(&str, &str)]) {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening pebble.log");
        let err = out.try_clone().expect("cloning the log handle");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} (apt-get install pebble): {e}"));
        self.children.push(child);
    }

    /// Starts the DNS server and Pebble, and waits until the directory answers.
    pub fn start(&mut self) {
        assert!(self.children.is_empty(), "pebble is already running");
        let dns = format!("127.0.0.1:{}", self.dns_port);
        self.spawn(
            "pebble-challtestsrv",
            &[
                "-defaultIPv4".into(),
                "127.0.0.1".into(),
                "-defaultIPv6".into(),
                String::new(),
                "-dns01".into(),
                dns.clone(),
                "-http01".into(),
                String::new(),
                "-https01".into(),
                String::new(),
                "-tlsalpn01".into(),
                String::new(),
                "-management".into(),
                format!("127.0.0.1:{}", self.dns_mgmt_port),
            ],
            &[],
        );
        let config = self.work.join("pebble.json").display().to_string();
        self.spawn(
            "pebble",
            &["-config".into(), config, "-dnsserver".into(), dns],
            &[("PEBBLE_VA_NOSLEEP", "1")],
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.get("127.0.0.1", self.port, "/dir").is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("pebble did not answer its directory:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops Pebble and its DNS server (it forgets every account and order).
    pub fn stop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn get(&self, name: &str, port: u16, path: &str) -> Result<Vec<u8>, String> {
        let ca = std::fs::read_to_string(&self.directory_ca_file).map_err(|e| e.to_string())?;
        let mut c = HttpsConn::connect(
            &format!("127.0.0.1:{port}"),
            name,
            roots(&ca),
            &[b"http/1.1"],
        )?;
        let (status, body) = c.get(path, None)?;
        if status != 200 {
            return Err(format!("GET {path}: {status}"));
        }
        Ok(body)
    }

    /// The root that Pebble's issued chains lead to (PEM), from its management API.
    pub fn root_pem(&self) -> String {
        let body = self
            .get("127.0.0.1", self.mgmt_port, "/roots/0")
            .unwrap_or_else(|e| panic!("fetching pebble's root: {e}\n{}", self.log()));
        String::from_utf8(body).expect("a PEM root")
    }

    /// The root as a trust store for a test client.
    pub fn roots(&self) -> Arc<rustls::RootCertStore> {
        roots(&self.root_pem())
    }

    /// Where the root is written for Nix's `ssl-cert-file` and curl's `--cacert`.
    pub fn root_file(&self) -> PathBuf {
        let p = self.work.join("pebble-root.pem");
        std::fs::write(&p, self.root_pem()).expect("writing pebble's root");
        p
    }

    /// Everything Pebble and its DNS server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Orders Pebble has accepted since it started ("Added order" in its log).
    pub fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// Certificates Pebble has issued since it started.
    pub fn issued(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "---- pebble log (last {} lines) ----\n{}\n---- end of pebble log ----",
                tail.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.stop();
    }
}
