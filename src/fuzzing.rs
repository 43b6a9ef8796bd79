//! Entry points for the coverage-guided fuzz targets in `fuzz/` (and for the
//! regression tests that replay what they found). Not an API: nothing in larder
//! calls these.
//!
//! Each function takes arbitrary bytes, feeds them to one parser that sees
//! untrusted input, and asserts that parser's own invariants (round trips, results
//! independent of how a stream is split, client faults rather than server errors).
//! A panic here is a finding: either the parser panicked or an invariant broke.

use std::sync::OnceLock;

use crate::auth::{token_from_header, AuthError, Authenticator, Caller, TokenAuthority};
use crate::http::path::{self, Endpoint};
use crate::nix::base32;
use crate::nix::hash::Sha256;
use crate::nix::nar::NarValidator;
use crate::nix::narinfo::NarInfo;
use crate::nix::signing::{PublicKey, SecretKey};
use crate::nix::store_path::{validate_store_dir, StorePath, StorePathHash};
use crate::service::ByteRange;

/// The outcome of validating a NAR, compared across ways of feeding it.
#[derive(Debug, PartialEq, Eq)]
struct NarOutcome {
    fed: Result<(), String>,
    finished: Result<(), String>,
    complete: bool,
    seen: u64,
}

fn validate_nar<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> NarOutcome {
    let mut v = NarValidator::new();
    let mut fed = Ok(());
    for p in pieces {
        if let Err(e) = v.feed(p) {
            fed = Err(e.to_string());
            break;
        }
    }
    NarOutcome {
        fed,
        finished: v.finish().map_err(|e| e.to_string()),
        complete: v.is_complete(),
        seen: v.bytes_seen(),
    }
}

/// The NAR validator: the same verdict, error and offset however the bytes are
/// split into `feed` calls; every byte counted when accepted; a failure sticks; a
/// complete archive refuses trailing bytes.
pub fn nar(data: &[u8]) {
    let whole = validate_nar([data]);
    let len = data.len() as u64;
    assert!(whole.seen <= len, "{} bytes seen of {len}", whole.seen);
    match &whole.fed {
        Ok(()) => assert_eq!(whole.seen, len, "accepted bytes must all be counted"),
        Err(_) => {
            assert!(!whole.complete);
            assert_eq!(whole.finished, whole.fed, "a failure must stick");
        }
    }
    assert_eq!(whole.complete, whole.finished.is_ok());

    // Split points derived from the input itself, so a crash replays exactly.
    let h = blake3::hash(data);
    let hb = h.as_bytes();
    let cut = |i: usize| {
        if data.is_empty() {
            0
        } else {
            usize::from(u16::from_le_bytes([hb[2 * i], hb[2 * i + 1]])) % (data.len() + 1)
        }
    };
    let (mut a, mut b) = (cut(0), cut(1));
    if a > b {
        std::mem::swap(&mut a, &mut b);
    }
    let three = validate_nar([&data[..a], &data[a..b], &data[b..]]);
    assert_eq!(whole, three, "split at {a} and {b}");
    if data.len() <= 4096 {
        let bytewise = validate_nar(data.chunks(1));
        assert_eq!(whole, bytewise, "fed one byte at a time");
    }
    let with_empty = validate_nar([&data[..a], &[][..], &data[a..]]);
    assert_eq!(whole, with_empty, "an empty feed at {a}");

    if whole.complete {
        let mut v = NarValidator::new();
        let fed = v.feed(data);
        assert!(fed.is_ok());
        assert!(v.feed(&[0]).is_err(), "bytes after a complete archive");
        assert!(v.finish().is_err(), "a failure after completion must stick");
    }
}

/// The narinfo parser: parse -> render -> parse gives the same narinfo and the same
/// text; a parsed narinfo signed by a key verifies with that key and not another.
pub fn narinfo(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = NarInfo::parse(text) else {
        return;
    };
    let rendered = info.render();
    let again = match NarInfo::parse(&rendered) {
        Ok(i) => i,
        Err(e) => panic!("rendered narinfo does not parse back: {e}\n{rendered}"),
    };
    assert_eq!(info, again, "parse -> render -> parse changed the narinfo");
    assert_eq!(rendered, again.render(), "render is not stable");

    let (dir, sp) = match info.split_store_path() {
        Ok(x) => x,
        Err(e) => panic!("a parsed narinfo's StorePath does not split: {e}"),
    };
    assert_eq!(sp.to_full_path(dir), info.store_path);
    let keys = keys();
    let mut signed = info.clone();
    if let Err(e) = signed.sign(&keys.0) {
        panic!("signing a parsed narinfo failed: {e}");
    }
    assert!(signed.is_signed_by(&keys.0.public()));
    assert!(!signed.is_signed_by(&keys.1.public()) || info.is_signed_by(&keys.1.public()));
    let reparsed = NarInfo::parse(&signed.render());
    assert_eq!(reparsed.ok().as_ref(), Some(&signed));
}

fn keys() -> &'static (SecretKey, SecretKey) {
    static KEYS: OnceLock<(SecretKey, SecretKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let make = |n: &str| match SecretKey::generate(n) {
            Ok(k) => k,
            Err(e) => panic!("generating a signing key: {e}"),
        };
        (make("fuzz-1"), make("fuzz-2"))
    })
}

/// Store paths, their hashes, store dirs, nix32, SHA-256 strings and signing keys:
/// whatever parses renders back to the same text (or, for hashes given in another
/// encoding, to the same value).
pub fn store_path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(h) = StorePathHash::parse(s) {
        assert_eq!(h.to_nix32(), s);
    }
    if let Ok(p) = StorePath::from_basename(s) {
        assert_eq!(p.basename(), s);
        assert_eq!(p.to_string(), s);
        let full = p.to_full_path("/nix/store");
        assert_eq!(StorePath::from_full_path("/nix/store", &full).ok(), Some(p));
    }
    if validate_store_dir(s).is_ok() {
        let full = format!("{s}/0123456789abcdfghijklmnpqrsvwxyz-x");
        assert!(
            StorePath::from_full_path(s, &full).is_ok(),
            "a valid store dir {s:?} refuses a valid path"
        );
    }
    if let Ok((dir, base)) = s.rsplit_once('/').ok_or(()) {
        if let Ok(p) = StorePath::from_full_path(dir, s) {
            assert_eq!(p.basename(), base);
            assert_eq!(p.to_full_path(dir), s);
        }
    }
    if let Ok(bytes) = base32::decode(s) {
        assert_eq!(base32::encode(&bytes), s, "nix32 decode/encode round trip");
    }
    if let Ok(h) = Sha256::parse(s) {
        for form in [
            h.to_nix_string(),
            h.to_sri(),
            format!("sha256:{}", h.to_hex()),
        ] {
            assert_eq!(Sha256::parse(&form).ok(), Some(h), "{form}");
        }
    }
    if let Ok(k) = PublicKey::parse(s) {
        assert_eq!(PublicKey::parse(&k.to_nix_string()).ok(), Some(k));
    }
    if let Ok(k) = SecretKey::parse(s) {
        let again = SecretKey::parse(&k.to_nix_string());
        assert!(again.is_ok(), "a secret key does not render back");
        let sig = k.sign("fingerprint");
        assert!(k.public().verify("fingerprint", &sig));
    }
}

/// A cache URL path, then the same bytes as a realisation and as a build-trace
/// name: a client's bad path is always a client fault, and what is accepted names
/// one cache and one key without any traversal.
pub fn url_path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    check_url_path(s);
    check_url_path(&format!("/c/realisations/{s}.doi"));
    check_url_path(&format!(
        "/c/build-trace-v2/0123456789abcdfghijklmnpqrsvwxyz-x.drv/{s}.doi"
    ));
    check_url_path(&format!("/c/nar/{s}"));
    check_url_path(&format!("/c/{s}.narinfo"));
}

fn check_url_path(s: &str) {
    let (cache, endpoint) = match path::parse(s) {
        Ok(x) => x,
        Err(e) => {
            assert!(e.0.is_client_fault(), "{s:?}: {e:?} is not a client fault");
            return;
        }
    };
    let safe = |v: &str| {
        !v.is_empty()
            && v != "."
            && v != ".."
            && !v.contains(['/', '\\', '\0'])
            && !v.split('/').any(|seg| seg == "..")
    };
    assert!(safe(&cache), "{s:?}: cache name {cache:?}");
    match &endpoint {
        Endpoint::CacheInfo | Endpoint::AtticCacheInfo => {}
        Endpoint::NarInfo(h) | Endpoint::Listing(h) => {
            assert!(StorePathHash::parse(h).is_ok(), "{s:?}: {endpoint:?}");
        }
        Endpoint::Nar(f) | Endpoint::Log(f) | Endpoint::Realisation(f) => {
            assert!(safe(f), "{s:?}: {endpoint:?}");
        }
        Endpoint::BuildTrace(k) => {
            let (drv, out) = k.split_once('/').unwrap_or_default();
            assert!(
                StorePath::from_basename(drv).is_ok() && safe(out),
                "{s:?}: {endpoint:?}"
            );
        }
    }
}

/// `Range: bytes=` headers: what parses resolves to a non-empty range inside the
/// body, and a range within the body is never refused.
pub fn range(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let len = data
        .iter()
        .fold(0u64, |a, &b| a.rotate_left(5) ^ u64::from(b))
        % 100_000;
    if let Some(r) = ByteRange::parse(s) {
        for n in [0, 1, len, u64::MAX] {
            if let Some((start, end)) = r.resolve(n) {
                assert!(start < end && end <= n, "{s:?} over {n}: {start}..{end}");
                match r {
                    ByteRange::FromTo(a, b) => assert!(start == a && end <= b.saturating_add(1)),
                    ByteRange::From(a) => assert!(start == a && end == n),
                    ByteRange::Suffix(k) => assert!(end == n && end - start <= k),
                }
            } else if let ByteRange::FromTo(a, _) | ByteRange::From(a) = r {
                assert!(a >= n, "{s:?}: a start inside {n} bytes was refused");
            }
        }
    }
    for n in [1, len, u64::MAX] {
        if let Ok((a, b)) = crate::s3::multipart::copy_range(s, n) {
            assert!(a < b && b <= n, "copy range {s:?} over {n}: {a}..{b}");
        }
    }
    let mut headers = hyper::HeaderMap::new();
    if let Ok(v) = hyper::header::HeaderValue::from_bytes(data) {
        headers.insert(hyper::header::RANGE, v);
        crate::s3::ignore_unusable_range(&mut headers);
        if let Some(kept) = headers.get(hyper::header::RANGE) {
            let kept = kept.to_str().unwrap_or_default();
            assert!(s3s::dto::Range::parse(kept.trim()).is_ok(), "{s:?} kept");
        }
    }
}

/// The fuzzer's token authority, with a fresh key made in a temporary dir.
fn authority() -> &'static (TokenAuthority, String) {
    static AUTH: OnceLock<(TokenAuthority, String)> = OnceLock::new();
    AUTH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("larder-fuzz-token-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("creating {}: {e}", dir.display());
        }
        let admin = "fuzz-admin-token-0123456789".to_owned();
        let opened = TokenAuthority::open(&dir, Some(admin.clone()));
        // The key is in memory now; nothing is left behind in the temporary dir.
        let _ = std::fs::remove_dir_all(&dir);
        match opened {
            Ok(a) => (a, admin),
            Err(e) => panic!("opening the token key in {}: {e}", dir.display()),
        }
    })
}

/// An `Authorization` header (and the raw bytes as a token): without the key, no
/// bytes authenticate as anyone but the admin token itself, and the verdict is
/// the same when asked twice (the verified-token memo changes nothing).
pub fn token(data: &[u8]) {
    let (auth, admin) = authority();
    let mut candidates = Vec::new();
    if let Ok(Some(t)) = token_from_header(Some(data)) {
        assert!(!t.is_empty());
        candidates.push(t);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        candidates.push(s.to_owned());
        candidates.push(format!("{}{s}", crate::auth::paseto::TOKEN_PREFIX));
    }
    for t in candidates {
        let first = auth.authenticate(Some(&t));
        let second = auth.authenticate(Some(&t));
        match (&first, &second) {
            (Ok(Caller::Admin), Ok(Caller::Admin)) => assert_eq!(&t, admin),
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                assert!(!matches!(a, AuthError::Key(_)), "{t:?}: {a}");
            }
            _ => panic!("{t:?} authenticated without the key: {first:?} then {second:?}"),
        }
        assert!(auth.decode_ignoring_time(&t).is_err());
    }
}

/// S3 request pieces larder reads itself (object keys, Host names, Content-MD5,
/// checksums, continuation tokens, credential scopes), and the XML bodies s3s
/// parses for larder (CompleteMultipartUpload, DeleteObjects).
pub fn s3(data: &[u8]) {
    use crate::s3::object::{bare_etag, check_key, parse_content_md5, ChecksumAlgo};
    use s3s::host::S3Host;
    use s3s::xml::{Deserialize, Deserializer};

    xml_body::<s3s::dto::CompletedMultipartUpload>(data);
    xml_body::<s3s::dto::Delete>(data);

    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if check_key(s).is_ok() {
        assert!(!s.is_empty() && !s.contains('\0'));
        assert!(!s.split('/').any(|seg| seg == "." || seg == ".."));
    }
    let host = crate::s3::HostStyle::new(Some("s3.example.com".into()));
    if let Ok(vh) = host.parse_host_header(s) {
        if let Some(bucket) = vh.bucket() {
            assert!(crate::s3::is_s3_host(s, "s3.example.com"), "{s:?}");
            assert!(!bucket.is_empty() || s.contains(".."));
        }
    }
    let _ = crate::s3::is_s3_host(s, s);
    if let Ok(md5) = parse_content_md5(s) {
        use base64::Engine;
        let back = base64::engine::general_purpose::STANDARD.encode(md5);
        assert_eq!(parse_content_md5(&back).ok(), Some(md5));
    }
    for algo in ChecksumAlgo::ALL {
        let _ = algo.check_value(s);
    }
    if let Some(a) = ChecksumAlgo::parse(s) {
        assert!(a.name().eq_ignore_ascii_case(s.trim()));
    }
    let _ = bare_etag(s);
    if let Ok(after) = crate::s3::list::decode_token(s) {
        let again = crate::s3::list::encode_token(&after);
        assert_eq!(crate::s3::list::decode_token(&again).ok(), Some(after));
    }
    let mut headers = hyper::HeaderMap::new();
    if let Ok(v) = hyper::header::HeaderValue::from_str(s) {
        headers.insert(hyper::header::AUTHORIZATION, v.clone());
        let _ = crate::s3::auth::credential_region(&headers, &hyper::Uri::from_static("/b/k"));
        headers.clear();
        for algo in ChecksumAlgo::ALL {
            headers.insert(algo.header(), v.clone());
            let _ = crate::s3::put::checksum_plan(&headers, Some(s));
            headers.clear();
        }
    }
    if let Ok(uri) = format!("/b/k?{s}").parse::<hyper::Uri>() {
        let _ = crate::s3::auth::credential_region(&headers, &uri);
    }

    fn xml_body<'a, T: Deserialize<'a>>(data: &'a [u8]) {
        let mut d = Deserializer::new(data);
        let _ = T::deserialize(&mut d).and_then(|v| d.expect_eof().map(|()| v));
    }
}

/// The config file: TOML into larder's config types, then every validation
/// `larder serve` and `larder check-config` apply. Listen addresses that name a
/// host (and would need a DNS lookup) are replaced with a loopback address first.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut file) = toml::from_str::<crate::config::FileConfig>(text) else {
        return;
    };
    let literal = |s: &mut Option<String>| {
        if let Some(v) = s {
            if v.trim().parse::<std::net::SocketAddr>().is_err() && !v.trim().is_empty() {
                *v = "127.0.0.1:1".into();
            }
        }
    };
    literal(&mut file.listen);
    literal(&mut file.s3_listen);
    literal(&mut file.metrics_listen);
    let s3 = crate::config::S3Config::resolve(&file, None);
    match crate::config::Config::resolve(file, Some("/nonexistent/larder-fuzz".into()), None) {
        Ok(c) => {
            assert!((1..=19).contains(&c.zstd_level));
            for k in &c.trusted_upload_keys {
                assert!(PublicKey::parse(k).is_ok(), "{k:?}");
            }
            assert!(
                s3.is_ok(),
                "the S3 settings failed alone but not in the whole"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// Every fuzz target's seeds (`fuzz/corpus/<target>/`) and the inputs that once
/// crashed it (`fuzz/regressions/<target>/`), replayed through the same checks.
#[cfg(test)]
mod tests {
    use std::path::Path;

    type Check = fn(&[u8]);

    const TARGETS: [(&str, Check); 8] = [
        ("nar", super::nar),
        ("narinfo", super::narinfo),
        ("store_path", super::store_path),
        ("url_path", super::url_path),
        ("range", super::range),
        ("token", super::token),
        ("s3", super::s3),
        ("config", super::config),
    ];

    fn replay(dir: &str) -> usize {
        let mut n = 0;
        for (name, check) in TARGETS {
            let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(name);
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files {
                let bytes = std::fs::read(&f).unwrap();
                let run = std::panic::catch_unwind(|| check(&bytes));
                assert!(run.is_ok(), "{} fails {name}'s checks", f.display());
                n += 1;
            }
        }
        n
    }

    #[test]
    fn fuzz_regressions_replay() {
        replay("fuzz/regressions");
    }

    #[test]
    fn fuzz_seeds_pass_the_checks() {
        assert!(replay("fuzz/corpus") >= 8, "the seed corpora are missing");
    }
}
