//! Plain HTTP against larder: `ureq` for well-formed requests, and a raw socket client
//! for requests no well-behaved library would send (dot segments, broken framing) and
//! for watching exactly how a response ends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;

/// How a request authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    /// HTTP Basic with this user and password (what a netrc file makes Nix send).
    Basic(&'a str, &'a str),
}

impl Auth<'_> {
    pub fn header(&self) -> Option<String> {
        match self {
            Auth::None => None,
            Auth::Bearer(t) => Some(format!("Bearer {t}")),
            Auth::Basic(u, p) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )),
        }
    }
}

/// A complete response as `ureq` read it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .redirects(0)
            // Servers come and go on reused ephemeral ports: a pooled connection to a
            // stopped server would be written into and fail with a broken pipe.
            .max_idle_connections(0)
            .build()
    })
}

/// Sends one request; any HTTP status is a normal result, a transport error panics.
pub fn request(
    method: &str,
    url: &str,
    auth: Auth<'_>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    try_request(method, url, auth, headers, body)
        .unwrap_or_else(|e| panic!("{method} {url}: transport error: {e}"))
}

/// Like [`request`], but a transport error (refused, reset, short body) is returned.
pub fn try_request(
    method: &str,
    url: &str,
    auth: Auth<'_>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Resp, String> {
    let mut req = agent().request(method, url);
    if let Some(h) = auth.header() {
        req = req.set("Authorization", &h);
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .flat_map(|name| {
            response
                .all(&name)
                .into_iter()
                .map(|v| (name.clone(), v.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut body = Vec::new();
    response
        .into_reader()
        .take(1 << 31)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub fn get(url: &str, auth: Auth<'_>) -> Resp {
    request("GET", url, auth, &[], None)
}

pub fn head(url: &str, auth: Auth<'_>) -> Resp {
    request("HEAD", url, auth, &[], None)
}

pub fn put(url: &str, auth: Auth<'_>, content_type: &str, body: &[u8]) -> Resp {
    request(
        "PUT",
        url,
        auth,
        &[("Content-Type", content_type)],
        Some(body),
    )
}

/// What came back on a raw connection.
#[derive(Debug, Clone)]
pub enum RawOutcome {
    /// A final (non-1xx) response head arrived.
    Response(RawResponse),
    /// The connection ended (or stalled) before any final response head.
    NoResponse(String),
}

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as far as it arrived (de-chunked when chunked).
    pub body: Vec<u8>,
    /// Whether the body was framed completely: all of Content-Length arrived, or the
    /// terminating zero-length chunk did.
    pub complete: bool,
    /// The declared Content-Length, if any.
    pub content_length: Option<u64>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RawOutcome {
    pub fn status(&self) -> Option<u16> {
        match self {
            RawOutcome::Response(r) => Some(r.status),
            RawOutcome::NoResponse(_) => None,
        }
    }
}

/// Writes `request` verbatim to `addr` ("127.0.0.1:PORT") and reads until the server
/// closes the connection, an error, or `timeout` of silence. Send `Connection: close`
/// in the request so the server ends the exchange. `head` says the response has no
/// body whatever its headers claim.
pub fn raw(addr: &str, request: &[u8], head: bool, timeout: Duration) -> RawOutcome {
    let mut stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return RawOutcome::NoResponse(format!("connect: {e}")),
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let _ = stream.set_nodelay(true);
    // Write from another thread: a server may answer (and close) before it has read a
    // large request, and the answer must still be read.
    let mut writer = stream.try_clone().expect("cloning a socket");
    let payload = request.to_vec();
    let write = std::thread::spawn(move || writer.write_all(&payload).map_err(|e| e.to_string()));
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = String::from("eof");
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                // A fully framed response is the end of the exchange, whether or not
                // the server closes the connection after it.
                if let Some((RawOutcome::Response(r), true)) = parse_raw(&data, head) {
                    if r.complete {
                        break;
                    }
                }
            }
            Err(e) => {
                end = e.to_string();
                break;
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let write_result = write
        .join()
        .unwrap_or_else(|_| Err("writer panicked".into()));
    parse_raw(&data, head).map(|(o, _)| o).unwrap_or_else(|| {
        RawOutcome::NoResponse(format!(
            "no final response ({} bytes read, read ended: {end}, write: {write_result:?})",
            data.len()
        ))
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses what arrived so far; the flag says whether the body's end is known from the
/// framing (Content-Length, chunked, or no body) rather than from the connection closing.
fn parse_raw(mut data: &[u8], head: bool) -> Option<(RawOutcome, bool)> {
    loop {
        let end = find(data, b"\r\n\r\n")?;
        let head_text = String::from_utf8_lossy(&data[..end]).into_owned();
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next()?;
        let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        data = &data[end + 4..];
        if (100..200).contains(&status) {
            continue;
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let content_length = get("content-length").and_then(|v| v.parse::<u64>().ok());
        let chunked = get("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        let no_body = head || status == 204 || status == 304;
        let (body, complete, framed) = if no_body {
            (Vec::new(), true, true)
        } else if chunked {
            let (b, c) = dechunk(data);
            (b, c, true)
        } else if let Some(len) = content_length {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let take = data.len().min(len);
            (data[..take].to_vec(), data.len() >= len, true)
        } else {
            // Delimited by the connection closing: we cannot tell a cut from an end.
            (data.to_vec(), true, false)
        };
        let response = RawResponse {
            status,
            headers,
            body,
            complete,
            content_length,
        };
        return Some((RawOutcome::Response(response), framed));
    }
}

fn dechunk(mut data: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            return (out, false);
        };
        data = &data[eol + 2..];
        if size == 0 {
            return (out, true);
        }
        if data.len() < size + 2 {
            out.extend_from_slice(&data[..data.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
