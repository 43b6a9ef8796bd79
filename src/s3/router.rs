//! Which S3 operation a request is, as one [`Endpoint`] variant per operation
//! larder implements, and which right on which bucket it needs.
//!
//! s3s parses the HTTP request (method, path or Host, query, headers) into one of
//! its typed operations; [`Endpoint::parse`] names that operation here, with its
//! bucket and key. The access check (`auth.rs`) matches on it once, and the one
//! dispatch (`dispatch.rs`) sends each operation to its handler file. Everything
//! else is [`Endpoint::Unsupported`] and answers `NotImplemented`.

use s3s::path::S3Path;

use super::keys::Right;

/// One S3 operation larder serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ListBuckets,
    CreateBucket {
        bucket: String,
    },
    HeadBucket {
        bucket: String,
    },
    DeleteBucket {
        bucket: String,
    },
    GetBucketLocation {
        bucket: String,
    },
    GetBucketVersioning {
        bucket: String,
    },
    ListObjects {
        bucket: String,
    },
    ListObjectsV2 {
        bucket: String,
    },
    ListMultipartUploads {
        bucket: String,
    },
    DeleteObjects {
        bucket: String,
    },
    GetObject {
        bucket: String,
        key: String,
    },
    HeadObject {
        bucket: String,
        key: String,
    },
    PutObject {
        bucket: String,
        key: String,
    },
    CopyObject {
        bucket: String,
        key: String,
    },
    DeleteObject {
        bucket: String,
        key: String,
    },
    CreateMultipartUpload {
        bucket: String,
        key: String,
    },
    UploadPart {
        bucket: String,
        key: String,
    },
    UploadPartCopy {
        bucket: String,
        key: String,
    },
    CompleteMultipartUpload {
        bucket: String,
        key: String,
    },
    AbortMultipartUpload {
        bucket: String,
        key: String,
    },
    ListParts {
        bucket: String,
        key: String,
    },
    /// Any other operation s3s recognises (versioning, ACL writes, tagging, object
    /// lock, ...): answered `NotImplemented`.
    Unsupported {
        op: String,
    },
}

impl Endpoint {
    /// Name the operation s3s resolved (`op` is its AWS name, e.g. `PutObject`).
    pub fn parse(op: &str, path: &S3Path) -> Endpoint {
        let bucket = path.get_bucket_name().map(str::to_owned);
        let key = path.get_object_key().map(str::to_owned);
        let unsupported = || Endpoint::Unsupported { op: op.to_owned() };
        match (op, bucket, key) {
            ("ListBuckets", None, None) => Endpoint::ListBuckets,
            ("CreateBucket", Some(bucket), None) => Endpoint::CreateBucket { bucket },
            ("HeadBucket", Some(bucket), None) => Endpoint::HeadBucket { bucket },
            ("DeleteBucket", Some(bucket), None) => Endpoint::DeleteBucket { bucket },
            ("GetBucketLocation", Some(bucket), None) => Endpoint::GetBucketLocation { bucket },
            ("GetBucketVersioning", Some(bucket), None) => Endpoint::GetBucketVersioning { bucket },
            ("ListObjects", Some(bucket), None) => Endpoint::ListObjects { bucket },
            ("ListObjectsV2", Some(bucket), None) => Endpoint::ListObjectsV2 { bucket },
            ("ListMultipartUploads", Some(bucket), None) => {
                Endpoint::ListMultipartUploads { bucket }
            }
            ("DeleteObjects", Some(bucket), None) => Endpoint::DeleteObjects { bucket },
            (op, Some(bucket), Some(key)) => match op {
                "GetObject" => Endpoint::GetObject { bucket, key },
                "HeadObject" => Endpoint::HeadObject { bucket, key },
                "PutObject" => Endpoint::PutObject { bucket, key },
                "CopyObject" => Endpoint::CopyObject { bucket, key },
                "DeleteObject" => Endpoint::DeleteObject { bucket, key },
                "CreateMultipartUpload" => Endpoint::CreateMultipartUpload { bucket, key },
                "UploadPart" => Endpoint::UploadPart { bucket, key },
                "UploadPartCopy" => Endpoint::UploadPartCopy { bucket, key },
                "CompleteMultipartUpload" => Endpoint::CompleteMultipartUpload { bucket, key },
                "AbortMultipartUpload" => Endpoint::AbortMultipartUpload { bucket, key },
                "ListParts" => Endpoint::ListParts { bucket, key },
                _ => unsupported(),
            },
            _ => unsupported(),
        }
    }

    /// The bucket and the right on it this operation needs; `None` for operations
    /// any valid key may call (ListBuckets shows only what the key may see;
    /// unsupported operations answer NotImplemented to anyone). CopyObject and
    /// UploadPartCopy also need read on their source, checked by their handler.
    pub fn needs(&self) -> Option<(&str, Right)> {
        use Endpoint as E;
        match self {
            E::ListBuckets | E::Unsupported { .. } => None,
            E::CreateBucket { bucket } | E::DeleteBucket { bucket } => Some((bucket, Right::Owner)),
            // HeadBucket is also allowed with any right on the bucket (auth.rs).
            E::HeadBucket { bucket }
            | E::GetBucketLocation { bucket }
            | E::GetBucketVersioning { bucket }
            | E::ListObjects { bucket }
            | E::ListObjectsV2 { bucket }
            | E::ListMultipartUploads { bucket } => Some((bucket, Right::Read)),
            E::GetObject { bucket, .. } | E::HeadObject { bucket, .. } => {
                Some((bucket, Right::Read))
            }
            E::DeleteObjects { bucket }
            | E::PutObject { bucket, .. }
            | E::CopyObject { bucket, .. }
            | E::DeleteObject { bucket, .. }
            | E::CreateMultipartUpload { bucket, .. }
            | E::UploadPart { bucket, .. }
            | E::UploadPartCopy { bucket, .. }
            | E::CompleteMultipartUpload { bucket, .. }
            | E::AbortMultipartUpload { bucket, .. }
            | E::ListParts { bucket, .. } => Some((bucket, Right::Write)),
        }
    }

    /// The object key, for operations on one object.
    pub fn key(&self) -> Option<&str> {
        use Endpoint as E;
        match self {
            E::GetObject { key, .. }
            | E::HeadObject { key, .. }
            | E::PutObject { key, .. }
            | E::CopyObject { key, .. }
            | E::DeleteObject { key, .. }
            | E::CreateMultipartUpload { key, .. }
            | E::UploadPart { key, .. }
            | E::UploadPartCopy { key, .. }
            | E::CompleteMultipartUpload { key, .. }
            | E::AbortMultipartUpload { key, .. }
            | E::ListParts { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use hyper::http;
    use s3s::access::{S3Access, S3AccessContext};
    use s3s::auth::{S3Auth, SecretKey};
    use s3s::service::S3ServiceBuilder;
    use s3s::{S3Result, S3};

    use super::*;

    struct Nothing;
    impl S3 for Nothing {}

    struct NoKeys;
    #[async_trait::async_trait]
    impl S3Auth for NoKeys {
        async fn get_secret_key(&self, _: &str) -> S3Result<SecretKey> {
            Err(s3s::s3_error!(InvalidAccessKeyId))
        }
    }

    /// Records the endpoint of each request and stops it there.
    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<Vec<Endpoint>>>);
    #[async_trait::async_trait]
    impl S3Access for Record {
        async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
            let e = Endpoint::parse(cx.s3_op().name(), cx.s3_path());
            self.0.lock().unwrap().push(e);
            Err(s3s::s3_error!(AccessDenied))
        }
    }

    fn route(method: &str, uri: &str, headers: &[(&str, &str)]) -> Endpoint {
        route_host(method, uri, "127.0.0.1:9000", headers)
    }

    fn route_host(method: &str, uri: &str, host: &str, headers: &[(&str, &str)]) -> Endpoint {
        let record = Record::default();
        let mut b = S3ServiceBuilder::new(Nothing);
        b.set_auth(NoKeys);
        b.set_access(record.clone());
        b.set_host(super::super::auth::HostStyle::new(Some(
            "s3.example.com".into(),
        )));
        let service = b.build();
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(s3s::Body::empty()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _ = rt.block_on(service.call(req));
        let got = record.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{method} {uri}: {got:?}");
        got[0].clone()
    }

    fn b(s: &str) -> String {
        s.to_owned()
    }

    // Request lines from the examples in the Amazon S3 API Reference.
    #[test]
    fn aws_documentation_examples() {
        let bk = || b("examplebucket");
        let obj = |k: &str| (bk(), b(k));
        assert_eq!(route("GET", "/", &[]), Endpoint::ListBuckets);
        assert_eq!(
            route("PUT", "/examplebucket", &[]),
            Endpoint::CreateBucket { bucket: bk() }
        );
        assert_eq!(
            route("HEAD", "/examplebucket", &[]),
            Endpoint::HeadBucket { bucket: bk() }
        );
        assert_eq!(
            route("DELETE", "/examplebucket", &[]),
            Endpoint::DeleteBucket { bucket: bk() }
        );
        assert_eq!(
            route("GET", "/examplebucket?location", &[]),
            Endpoint::GetBucketLocation { bucket: bk() }
        );
        assert_eq!(
            route("GET", "/examplebucket?versioning", &[]),
            Endpoint::GetBucketVersioning { bucket: bk() }
        );
        assert_eq!(
            route(
                "GET",
                "/examplebucket?list-type=2&max-keys=3&prefix=E&start-after=ExampleGuide.pdf",
                &[]
            ),
            Endpoint::ListObjectsV2 { bucket: bk() }
        );
        assert_eq!(
            route("GET", "/examplebucket?prefix=N&marker=Ned&max-keys=40", &[]),
            Endpoint::ListObjects { bucket: bk() }
        );
        assert_eq!(
            route("GET", "/examplebucket?uploads&max-uploads=3", &[]),
            Endpoint::ListMultipartUploads { bucket: bk() }
        );
        assert_eq!(
            route("POST", "/examplebucket?delete", &[]),
            Endpoint::DeleteObjects { bucket: bk() }
        );
        let (bucket, key) = obj("my-image.jpg");
        assert_eq!(
            route("GET", "/examplebucket/my-image.jpg", &[]),
            Endpoint::GetObject {
                bucket: bucket.clone(),
                key: key.clone()
            }
        );
        assert_eq!(
            route("HEAD", "/examplebucket/my-image.jpg", &[]),
            Endpoint::HeadObject {
                bucket: bucket.clone(),
                key: key.clone()
            }
        );
        assert_eq!(
            route("PUT", "/examplebucket/my-image.jpg", &[]),
            Endpoint::PutObject {
                bucket: bucket.clone(),
                key: key.clone()
            }
        );
        assert_eq!(
            route(
                "PUT",
                "/examplebucket/my-image.jpg",
                &[("x-amz-copy-source", "/bucket/other.jpg")]
            ),
            Endpoint::CopyObject {
                bucket: bucket.clone(),
                key: key.clone()
            }
        );
        assert_eq!(
            route("DELETE", "/examplebucket/my-image.jpg", &[]),
            Endpoint::DeleteObject { bucket, key }
        );
        let (bucket, key) = obj("example-object");
        assert_eq!(
            route("POST", "/examplebucket/example-object?uploads", &[]),
            Endpoint::CreateMultipartUpload {
                bucket: bucket.clone(),
                key: key.clone()
            }
        );
        assert_eq!(
            route(
                "PUT",
                "/examplebucket/example-object?partNumber=1&uploadId=VXBsb2FkIElE",
                &[]
            ),
            Endpoint::UploadPart {
                bucket: bucket.clone(),
                key: key.clone()
            }
        );
        assert_eq!(
            route(
                "PUT",
                "/examplebucket/example-object?partNumber=1&uploadId=VXBsb2FkIElE",
                &[("x-amz-copy-source", "/source-bucket/sourceobject")]
            ),
            Endpoint::UploadPartCopy {
                bucket: bucket.clone(),
                key: key.clone()
            }
        );
        assert_eq!(
            route(
                "POST",
                "/examplebucket/example-object?uploadId=VXBsb2FkIElE",
                &[]
            ),
            Endpoint::CompleteMultipartUpload {
                bucket: bucket.clone(),
                key: key.clone()
            }
        );
        assert_eq!(
            route(
                "DELETE",
                "/examplebucket/example-object?uploadId=VXBsb2FkIElE",
                &[]
            ),
            Endpoint::AbortMultipartUpload {
                bucket: bucket.clone(),
                key: key.clone()
            }
        );
        assert_eq!(
            route("GET", "/examplebucket/example-object?uploadId=XXBsb2FkIEl&max-parts=2&part-number-marker=1", &[]),
            Endpoint::ListParts { bucket, key }
        );
    }

    #[test]
    fn unsupported_operations_are_named() {
        for (method, uri, op) in [
            ("PUT", "/examplebucket?versioning", "PutBucketVersioning"),
            ("PUT", "/examplebucket?acl", "PutBucketAcl"),
            ("PUT", "/examplebucket/k?tagging", "PutObjectTagging"),
            ("GET", "/examplebucket/k?tagging", "GetObjectTagging"),
            (
                "PUT",
                "/examplebucket?object-lock",
                "PutObjectLockConfiguration",
            ),
            ("PUT", "/examplebucket/k?retention", "PutObjectRetention"),
        ] {
            assert_eq!(
                route(method, uri, &[]),
                Endpoint::Unsupported { op: op.into() },
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn virtual_hosted_style() {
        assert_eq!(
            route_host(
                "GET",
                "/photos/puppy.jpg",
                "examplebucket.s3.example.com",
                &[]
            ),
            Endpoint::GetObject {
                bucket: b("examplebucket"),
                key: b("photos/puppy.jpg")
            }
        );
        assert_eq!(
            route_host(
                "GET",
                "/?list-type=2",
                "examplebucket.s3.example.com:8443",
                &[]
            ),
            Endpoint::ListObjectsV2 {
                bucket: b("examplebucket")
            }
        );
        // The bare S3 host, and any other name, is path-style.
        assert_eq!(
            route_host("GET", "/examplebucket/k", "s3.example.com", &[]),
            Endpoint::GetObject {
                bucket: b("examplebucket"),
                key: b("k")
            }
        );
        assert_eq!(
            route_host("GET", "/examplebucket/k", "localhost:9000", &[]),
            Endpoint::GetObject {
                bucket: b("examplebucket"),
                key: b("k")
            }
        );
    }

    #[test]
    fn rights() {
        let e = Endpoint::CreateBucket { bucket: b("x") };
        assert_eq!(e.needs(), Some(("x", Right::Owner)));
        let e = Endpoint::GetObject {
            bucket: b("x"),
            key: b("k"),
        };
        assert_eq!(e.needs(), Some(("x", Right::Read)));
        assert_eq!(e.key(), Some("k"));
        let e = Endpoint::UploadPart {
            bucket: b("x"),
            key: b("k"),
        };
        assert_eq!(e.needs(), Some(("x", Right::Write)));
        assert_eq!(Endpoint::ListBuckets.needs(), None);
    }
}
