//! HTTPS from the test side: a small rustls client that reports what a TLS client
//! sees (the served certificate's fingerprint, the ALPN protocol) and speaks
//! HTTP/1.1 with keep-alive, test certificates made with rcgen, and a CONNECT
//! proxy that lets Nix reach `https://cache.example.test:PORT` without touching
//! the machine's name resolution.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports: every listener is held until all are chosen, so the
/// kernel cannot hand the same just-released port out twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("finding a free port"))
        .collect();
    std::array::from_fn(|i| {
        held[i]
            .local_addr()
            .map(|a| a.port())
            .expect("a bound listener's port")
    })
}

/// Roots trusted by the test client: every certificate in `pem`.
pub fn roots(pem: &str) -> Arc<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        store
            .add(c.expect("a PEM certificate"))
            .expect("a usable root");
    }
    assert!(!store.is_empty(), "no certificate in {pem:?}");
    Arc::new(store)
}

fn client_config(roots: Arc<rustls::RootCertStore>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// One verified HTTPS connection.
pub struct HttpsConn {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
    host: String,
}

impl HttpsConn {
    /// Connects to `addr` with SNI `name`, verifying against `roots`, offering
    /// `alpn` (h2 and http/1.1 when empty is not what you want: pass them).
    pub fn connect(
        addr: &str,
        name: &str,
        roots: Arc<rustls::RootCertStore>,
        alpn: &[&[u8]],
    ) -> Result<HttpsConn, String> {
        let tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
        tcp.set_nodelay(true).ok();
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|e| format!("server name: {e}"))?;
        let conn = rustls::ClientConnection::new(client_config(roots, alpn), server_name)
            .map_err(|e| format!("TLS client: {e}"))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("TLS handshake with {addr} as {name}: {e}"))?;
        }
        Ok(HttpsConn {
            stream: BufReader::new(stream),
            host: name.to_string(),
        })
    }

    /// SHA-256 of the served leaf certificate, lowercase hex.
    pub fn leaf_sha256(&self) -> String {
        let certs = self
            .stream
            .get_ref()
            .conn
            .peer_certificates()
            .expect("a verified peer has certificates");
        hex::encode(Sha256::digest(&certs[0]))
    }

    /// The ALPN protocol the server chose.
    pub fn alpn(&self) -> Option<String> {
        self.stream
            .get_ref()
            .conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// Sends `GET path` (Host: the SNI name, or `host` when given) over HTTP/1.1 on
    /// this connection, keeping it open; returns status and body.
    pub fn get(&mut self, path: &str, host: Option<&str>) -> Result<(u16, Vec<u8>), String> {
        let host = host.unwrap_or(&self.host).to_string();
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: larder-tests\r\n\r\n");
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .and_then(|_| self.stream.get_mut().flush())
            .map_err(|e| format!("writing the request: {e}"))?;
        let mut status_line = String::new();
        self.stream
            .read_line(&mut status_line)
            .map_err(|e| format!("reading the status line: {e}"))?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            self.stream
                .read_line(&mut line)
                .map_err(|e| format!("reading headers: {e}"))?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().ok();
                } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.stream
                    .read_line(&mut size)
                    .map_err(|e| format!("reading a chunk size: {e}"))?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("bad chunk size {size:?}"))?;
                let mut chunk = vec![0; n + 2];
                self.stream
                    .read_exact(&mut chunk)
                    .map_err(|e| format!("reading a chunk: {e}"))?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            let n = length.ok_or("a response with neither length nor chunks")?;
            body.resize(n, 0);
            self.stream
                .read_exact(&mut body)
                .map_err(|e| format!("reading the body: {e}"))?;
        }
        Ok((status, body))
    }
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    pub fn sha256(&self) -> String {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("PEM cert");
        hex::encode(Sha256::digest(&der))
    }
}

/// A throwaway CA that signs leaf certificates.
pub struct TestCa {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        TestCa { ca }
    }

    pub fn pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_until(names, None)
    }

    /// A leaf for `names` that expires at `not_after` (rcgen's far-future default
    /// when `None`).
    pub fn issue_until(&self, names: &[&str], not_after: Option<time::OffsetDateTime>) -> Issued {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        if let Some(t) = not_after {
            params.not_after = t;
        }
        let cert = params.signed_by(&key, &self.ca).expect("signing a leaf");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Writes `data` to `path` whole: a temporary file renamed over it.
pub fn replace_file(path: &Path, data: &str) {
    let tmp = path.with_extension("tmp-replace");
    std::fs::write(&tmp, data).expect("writing a temporary file");
    std::fs::rename(&tmp, path).expect("renaming over the file");
}

/// An HTTP CONNECT proxy on 127.0.0.1 that sends every tunnel to one address,
/// whatever host name the client asked for: `https_proxy` for Nix, so that
/// `https://cache.example.test:PORT` reaches larder with the real name in SNI.
pub struct ConnectProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl ConnectProxy {
    pub fn start(target: &str) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("nonblocking proxy");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let target = target.to_string();
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let target = target.clone();
                        thread::spawn(move || tunnel(client, &target));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ConnectProxy { port, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn tunnel(client: TcpStream, target: &str) {
    let _ = client.set_nonblocking(false);
    let mut reader = BufReader::new(match client.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() || !first.starts_with("CONNECT ") {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let Ok(upstream) = TcpStream::connect(target) else {
        let _ = (&client).write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    if (&client)
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (Ok(mut up_w), Ok(mut cl_w)) = (upstream.try_clone(), client.try_clone()) else {
        return;
    };
    let mut up_r = upstream;
    // Bytes the reader already buffered belong to the tunnel.
    let buffered = reader.buffer().to_vec();
    if !buffered.is_empty() && up_w.write_all(&buffered).is_err() {
        return;
    }
    let mut cl_r = reader.into_inner();
    let a = thread::spawn(move || {
        let _ = std::io::copy(&mut cl_r, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut up_r, &mut cl_w);
    let _ = cl_w.shutdown(std::net::Shutdown::Write);
    let _ = a.join();
}
