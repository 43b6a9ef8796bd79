//! Who is calling, and may they: s3s's authentication and access hooks, and the
//! Host-name rule for virtual-hosted-style addressing.
//!
//! s3s verifies SigV4 (header, presigned, aws-chunked with or without trailers)
//! and SigV2 signatures and the clock-skew window; it asks [`KeyAuth`] for the
//! secret of an access key id. Once the signature holds, [`Access`] runs once per
//! request: it refuses anonymous requests, a credential scope for another region,
//! keys larder will not store, and a key without the right the operation needs
//! (see [`Endpoint::needs`]); then it leaves the key in the request's extensions
//! for the handlers.

use std::sync::Arc;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::host::{S3Host, VirtualHost};
use s3s::{S3Error, S3ErrorCode, S3Result};

use super::error::S3ApiError;
use super::keys::{allows, sees, Right};
use super::object::check_key;
use super::router::Endpoint;
use crate::meta::S3Key;
use crate::service::Larder;

/// The authenticated caller of a request, left in its extensions by [`Access`].
#[derive(Clone, Debug)]
pub struct S3Caller {
    pub key: S3Key,
    pub endpoint: Endpoint,
}

impl S3Caller {
    pub fn may(&self, bucket: &str, right: Right) -> bool {
        allows(&self.key.grants, bucket, right)
    }

    pub fn sees(&self, bucket: &str) -> bool {
        sees(&self.key.grants, bucket)
    }
}

/// Looks access keys up in SQLite.
pub struct KeyAuth {
    pub larder: Arc<Larder>,
}

#[async_trait::async_trait]
impl S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.larder.meta.s3_key_by_id(access_key) {
            Ok(Some(k)) => Ok(SecretKey::from(k.secret)),
            Ok(None) => Err(S3Error::with_message(
                S3ErrorCode::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            )),
            Err(e) => Err(S3ApiError::from(e).into()),
        }
    }
}

/// The per-request access check.
pub struct Access {
    pub larder: Arc<Larder>,
    pub region: String,
}

/// The region of a SigV4 credential scope, from the `Authorization` header or the
/// presigned `X-Amz-Credential` parameter. `None` for SigV2 and unsigned requests.
pub fn credential_region(headers: &hyper::HeaderMap, uri: &hyper::Uri) -> Option<String> {
    let scope_region = |credential: &str| -> Option<String> {
        // AKID/20130524/us-east-1/s3/aws4_request
        let mut parts = credential.split('/');
        let _id = parts.next()?;
        let _date = parts.next()?;
        parts.next().map(str::to_owned)
    };
    if let Some(auth) = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(rest) = auth.trim().strip_prefix("AWS4-HMAC-SHA256") {
            let cred = rest
                .split(',')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("Credential="))?;
            return scope_region(cred);
        }
        return None;
    }
    let query = uri.query()?;
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("X-Amz-Credential=") {
            let decoded = percent_encoding::percent_decode_str(v).decode_utf8().ok()?;
            return scope_region(&decoded);
        }
    }
    None
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let endpoint = Endpoint::parse(cx.s3_op().name(), cx.s3_path());
        let Some(cred) = cx.credentials() else {
            return Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                "Anonymous access is not allowed: sign the request with an access key.",
            ));
        };
        let access_key = cred.access_key.clone();
        if let Some(region) = credential_region(cx.headers(), cx.uri()) {
            if region != self.region {
                return Err(S3ApiError::AuthorizationHeaderMalformed(format!(
                    "the authorization header is malformed; the region '{region}' is wrong; expecting '{}'",
                    self.region
                ))
                .into());
            }
        }
        if let Some(key) = endpoint.key() {
            check_key(key)?;
        }
        let key = match self.larder.meta.s3_key_by_id(&access_key) {
            Ok(Some(k)) => k,
            Ok(None) => {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidAccessKeyId,
                    "The AWS Access Key Id you provided does not exist in our records.",
                ))
            }
            Err(e) => return Err(S3ApiError::from(e).into()),
        };
        if let Some((bucket, right)) = endpoint.needs() {
            let ok = allows(&key.grants, bucket, right)
                || (matches!(endpoint, Endpoint::HeadBucket { .. }) && sees(&key.grants, bucket));
            if !ok {
                return Err(S3ApiError::AccessDenied(format!(
                    "access denied: key {:?} has no {} right on bucket {bucket:?}",
                    key.name,
                    right.name()
                ))
                .into());
            }
        }
        crate::http::access::note_s3_key(&key.name);
        cx.extensions_mut().insert(S3Caller { key, endpoint });
        Ok(())
    }
}

/// Virtual-hosted-style addressing under one configured host: `bucket.<host>`
/// names a bucket; the host itself and every other name are path-style. (s3s
/// itself treats IP addresses as path-style before asking.)
pub struct HostStyle {
    host: Option<String>,
}

impl HostStyle {
    pub fn new(host: Option<String>) -> Self {
        HostStyle {
            host: host.map(|h| h.to_ascii_lowercase()),
        }
    }
}

impl S3Host for HostStyle {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let name = name.trim_end_matches('.');
        if let Some(base) = &self.host {
            // `split_at_checked`: a Host that is not ASCII must not split inside a
            // character.
            let split = (name.len() > base.len() + 1)
                .then(|| name.split_at_checked(name.len() - base.len()))
                .flatten();
            if let Some((head, tail)) = split {
                if tail.eq_ignore_ascii_case(base) {
                    if let Some(bucket) = head.strip_suffix('.') {
                        return Ok(VirtualHost::new(base.as_str()).with_bucket(bucket));
                    }
                }
            }
        }
        Ok(VirtualHost::new(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_from_headers_and_queries() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            hyper::header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"
                .parse()
                .unwrap(),
        );
        let uri: hyper::Uri = "/test.txt".parse().unwrap();
        assert_eq!(credential_region(&h, &uri).as_deref(), Some("us-east-1"));
        let uri: hyper::Uri = "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Flarder%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
            .parse()
            .unwrap();
        assert_eq!(
            credential_region(&hyper::HeaderMap::new(), &uri).as_deref(),
            Some("larder")
        );
        let mut v2 = hyper::HeaderMap::new();
        v2.insert(
            hyper::header::AUTHORIZATION,
            "AWS AKID:sig".parse().unwrap(),
        );
        assert_eq!(credential_region(&v2, &uri), None);
    }
}
