//! Parsing a cache URL path into one [`Endpoint`], before anything else happens.
//!
//! The raw (still percent-encoded) path is split on `/`, then each segment is
//! decoded and checked: an empty segment, `.`/`..`, or a segment that decodes to
//! contain `/`, `\` or NUL is refused, so no encoding of a traversal reaches a
//! handler. Each endpoint's name is checked against the shape Nix gives it.

use percent_encoding::percent_decode_str;

use super::error::ApiError;
use crate::nix::store_path::{StorePath, StorePathHash};

/// Longest accepted path, in bytes.
const MAX_PATH_BYTES: usize = 1024;

/// What a request under `/<cache>/` addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    CacheInfo,
    AtticCacheInfo,
    NarInfo(String),
    Listing(String),
    Nar(String),
    Log(String),
    /// `realisations/<drv hash>!<output>.doi`, keyed without `.doi`.
    Realisation(String),
    /// `build-trace-v2/<drv>/<output>.doi`, keyed as `<drv>/<output>`.
    BuildTrace(String),
}

fn bad(msg: &str) -> ApiError {
    ApiError::bad_request(msg)
}

fn decode_segment(raw: &str) -> Result<String, ApiError> {
    let s = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| bad("path segment is not UTF-8"))?
        .into_owned();
    if s.is_empty() {
        return Err(bad("empty path segment"));
    }
    if s == "." || s == ".." {
        return Err(bad("path traversal is not allowed"));
    }
    if s.contains(['/', '\\', '\0']) {
        return Err(bad("path segment contains '/', '\\' or NUL"));
    }
    Ok(s)
}

fn store_path_hash(s: &str) -> Result<String, ApiError> {
    StorePathHash::parse(s).map_err(|_| bad("store path hash must be 32 nix-base32 characters"))?;
    Ok(s.to_owned())
}

fn nar_file(s: &str) -> Result<String, ApiError> {
    let ok = s.len() <= 128
        && s.contains(".nar")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if !ok {
        return Err(bad(
            "NAR file name must look like <hash>.nar[.<compression>]",
        ));
    }
    Ok(s.to_owned())
}

fn output_name(s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 211
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad("invalid output name"))
    }
}

/// Split `/<cache>/<rest>` and parse the rest.
pub fn parse(path: &str) -> Result<(String, Endpoint), ApiError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(bad("path too long"));
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("path must start with /"))?;
    let segments = rest
        .split('/')
        .map(decode_segment)
        .collect::<Result<Vec<_>, _>>()?;
    let (cache, tail) = segments
        .split_first()
        .ok_or_else(|| bad("missing cache name"))?;
    let endpoint = match tail {
        [f] if f == "nix-cache-info" => Endpoint::CacheInfo,
        [f] if f == "attic-cache-info" => Endpoint::AtticCacheInfo,
        [f] if f.ends_with(".narinfo") => {
            Endpoint::NarInfo(store_path_hash(&f[..f.len() - ".narinfo".len()])?)
        }
        [f] if f.ends_with(".ls") => Endpoint::Listing(store_path_hash(&f[..f.len() - 3])?),
        [d, f] if d == "nar" => Endpoint::Nar(nar_file(f)?),
        [d, f] if d == "log" => {
            StorePath::from_basename(f)
                .map_err(|_| bad("log name must be a store path basename"))?;
            Endpoint::Log(f.clone())
        }
        [d, f] if d == "realisations" => {
            let key = f
                .strip_suffix(".doi")
                .ok_or_else(|| bad("realisation name must end in .doi"))?;
            let ok = key.len() <= 256
                && key.contains('!')
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":!+-._?=".contains(&b));
            if !ok {
                return Err(bad("realisation name must be <drv hash>!<output>.doi"));
            }
            Endpoint::Realisation(key.to_owned())
        }
        [d, drv, f] if d == "build-trace-v2" => {
            StorePath::from_basename(drv)
                .map_err(|_| bad("build trace derivation must be a store path basename"))?;
            let out = f
                .strip_suffix(".doi")
                .ok_or_else(|| bad("build trace name must end in .doi"))?;
            output_name(out)?;
            Endpoint::BuildTrace(format!("{drv}/{out}"))
        }
        _ => {
            return Err(ApiError(crate::service::ServiceError::NotFound(
                "no such endpoint".into(),
            )))
        }
    };
    Ok((cache.clone(), endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    #[test]
    fn endpoints() {
        assert_eq!(
            parse("/c/nix-cache-info").unwrap(),
            ("c".into(), Endpoint::CacheInfo)
        );
        assert_eq!(
            parse(&format!("/c/{H}.narinfo")).unwrap().1,
            Endpoint::NarInfo(H.into())
        );
        assert_eq!(
            parse("/c/nar/abc.nar.zst").unwrap().1,
            Endpoint::Nar("abc.nar.zst".into())
        );
        assert_eq!(
            parse(&format!("/c/log/{H}-x.drv")).unwrap().1,
            Endpoint::Log(format!("{H}-x.drv"))
        );
        assert_eq!(
            parse("/c/realisations/sha256:abc!out.doi").unwrap().1,
            Endpoint::Realisation("sha256:abc!out".into())
        );
        assert_eq!(
            parse(&format!("/c/build-trace-v2/{H}-x.drv/out.doi"))
                .unwrap()
                .1,
            Endpoint::BuildTrace(format!("{H}-x.drv/out"))
        );
    }

    #[test]
    fn traversal_and_shapes_are_refused() {
        for p in [
            "/c/../etc/passwd",
            "/c/%2e%2e/x",
            "/c/nar/..%2f..%2fetc",
            "/c/nar/%2Fetc%2Fpasswd",
            "//etc/passwd",
            "/c//nix-cache-info",
            "/c/nar/a%00.nar",
            "/c/short.narinfo",
            "/c/nar/a b.nar",
            "c/nix-cache-info",
            "/c/log/not-a-store-path",
        ] {
            assert!(parse(p).is_err(), "{p} should be refused");
        }
    }
}
