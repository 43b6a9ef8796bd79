//! The S3 API against real clients: the aws cli (`s3` and `s3api`), boto3, rclone
//! and s3cmd each round-trip objects (put, get, list, a 100 MiB multipart upload,
//! presigned URLs, ranged reads, copies, deleting many); refusals carry the right
//! S3 error codes; bad input is a 4xx; an object and a NAR share chunks; answered
//! PUTs survive kill -9; overwrites are atomic; big uploads run in flat memory.

use std::time::{Duration, SystemTime};

use crate::support::http::{self, Auth, RawOutcome};
use crate::support::s3::{
    random_bytes, random_file, raw_signed, script, status_and_code, RawRequest, S3Larder,
};
use crate::support::server::{parse_json, Launch, Server};
use crate::support::Nix;

/// Size of the multipart upload every client makes.
const BIG: usize = 100 << 20;

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[track_caller]
fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert!(
        a.len() == b.len() && a == b,
        "{what}: {} bytes vs {} bytes, contents differ",
        a.len(),
        b.len()
    );
}

fn json(out: &crate::support::process::Output) -> serde_json::Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.describe()))
}

#[test]
fn s3_aws_cli_round_trips() {
    let s3 = S3Larder::start();
    let k = &s3.admin;
    let w = s3.work();
    let small = random_file(&w.join("small.txt"), 5000, 1);
    let big = random_file(&w.join("big.bin"), BIG, 2);
    let p = |name: &str| w.join(name).to_str().unwrap().to_string();

    s3.aws(k, &["s3", "mb", "s3://awscli"]).ok();
    s3.aws(
        k,
        &[
            "s3",
            "cp",
            "--no-progress",
            &p("small.txt"),
            "s3://awscli/docs/small.txt",
        ],
    )
    .ok();
    let ls = s3.aws(k, &["s3", "ls", "s3://awscli/docs/"]).ok();
    assert!(
        ls.stdout.contains("small.txt") && ls.stdout.contains("5000"),
        "{}",
        ls.stdout
    );

    // 100 MiB: the aws cli splits it into 8 MiB parts.
    s3.aws(
        k,
        &[
            "s3",
            "cp",
            "--no-progress",
            &p("big.bin"),
            "s3://awscli/big.bin",
        ],
    )
    .ok();
    let head = json(
        &s3.aws(
            k,
            &[
                "s3api",
                "head-object",
                "--bucket",
                "awscli",
                "--key",
                "big.bin",
            ],
        )
        .ok(),
    );
    assert_eq!(head["ContentLength"], BIG as u64, "{head}");
    assert!(head["ETag"].as_str().unwrap().ends_with("-13\""), "{head}");
    s3.aws(
        k,
        &[
            "s3",
            "cp",
            "--no-progress",
            "s3://awscli/big.bin",
            &p("big.back"),
        ],
    )
    .ok();
    assert_same(&read(&w.join("big.back")), &big, "100 MiB back");

    // Ranged GET.
    let r = json(
        &s3.aws(
            k,
            &[
                "s3api",
                "get-object",
                "--bucket",
                "awscli",
                "--key",
                "big.bin",
                "--range",
                "bytes=9000000-9000999",
                &p("range.out"),
            ],
        )
        .ok(),
    );
    assert_eq!(r["ContentRange"], "bytes 9000000-9000999/104857600", "{r}");
    assert_same(
        &read(&w.join("range.out")),
        &big[9_000_000..9_001_000],
        "range",
    );

    // Presigned GET.
    let url = s3
        .aws(
            k,
            &[
                "s3",
                "presign",
                "s3://awscli/docs/small.txt",
                "--expires-in",
                "300",
            ],
        )
        .ok()
        .stdout
        .trim()
        .to_string();
    let got = http::get(&url, Auth::None);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_same(&got.body, &small, "presigned GET");

    // Copy (server side).
    s3.aws(
        k,
        &[
            "s3",
            "cp",
            "s3://awscli/docs/small.txt",
            "s3://awscli/copy/small.txt",
        ],
    )
    .ok();
    s3.aws(
        k,
        &[
            "s3",
            "cp",
            "--no-progress",
            "s3://awscli/copy/small.txt",
            &p("copy.out"),
        ],
    )
    .ok();
    assert_same(&read(&w.join("copy.out")), &small, "copy");

    // Delete many with s3api delete-objects, then the rest with s3 rm --recursive.
    std::fs::create_dir_all(w.join("many")).unwrap();
    for i in 0..30 {
        std::fs::write(w.join(format!("many/f{i:02}")), format!("file {i}")).unwrap();
    }
    s3.aws(
        k,
        &[
            "s3",
            "cp",
            "--no-progress",
            "--recursive",
            &p("many"),
            "s3://awscli/many/",
        ],
    )
    .ok();
    let count = |l: &serde_json::Value| l["Contents"].as_array().map_or(0, |a| a.len());
    let listed = json(
        &s3.aws(
            k,
            &[
                "s3api",
                "list-objects-v2",
                "--bucket",
                "awscli",
                "--prefix",
                "many/",
            ],
        )
        .ok(),
    );
    assert_eq!(count(&listed), 30, "{listed}");
    let objects: Vec<serde_json::Value> = (0..20)
        .map(|i| serde_json::json!({"Key": format!("many/f{i:02}")}))
        .collect();
    let del = serde_json::json!({"Objects": objects}).to_string();
    let out = json(
        &s3.aws(
            k,
            &[
                "s3api",
                "delete-objects",
                "--bucket",
                "awscli",
                "--delete",
                &del,
            ],
        )
        .ok(),
    );
    assert_eq!(
        out["Deleted"].as_array().map(|a| a.len()),
        Some(20),
        "{out}"
    );
    let listed = json(
        &s3.aws(
            k,
            &[
                "s3api",
                "list-objects-v2",
                "--bucket",
                "awscli",
                "--prefix",
                "many/",
            ],
        )
        .ok(),
    );
    assert_eq!(count(&listed), 10, "{listed}");
    s3.aws(k, &["s3", "rm", "--recursive", "s3://awscli/many/"])
        .ok();

    // Listing with a delimiter.
    let l = json(
        &s3.aws(
            k,
            &[
                "s3api",
                "list-objects-v2",
                "--bucket",
                "awscli",
                "--delimiter",
                "/",
            ],
        )
        .ok(),
    );
    let prefixes: Vec<&str> = l["CommonPrefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, vec!["copy/", "docs/"], "{l}");
    let keys: Vec<&str> = l["Contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["big.bin"], "{l}");

    // A non-empty bucket is not deleted.
    let rb = s3
        .aws(k, &["s3api", "delete-bucket", "--bucket", "awscli"])
        .fails();
    assert!(rb.stderr.contains("BucketNotEmpty"), "{}", rb.describe());
    s3.aws(k, &["s3", "rb", "--force", "s3://awscli"]).ok();
    let lb = json(&s3.aws(k, &["s3api", "list-buckets"]).ok());
    assert_eq!(lb["Buckets"].as_array().map(|a| a.len()), Some(0), "{lb}");
}

#[test]
fn s3_refusals_carry_s3_error_codes() {
    let s3 = S3Larder::start();
    let admin = &s3.admin;
    s3.aws(admin, &["s3", "mb", "s3://mine"]).ok();
    s3.aws(admin, &["s3", "mb", "s3://theirs"]).ok();
    let w = s3.work();
    std::fs::write(w.join("f"), b"hello").unwrap();
    let f = w.join("f").to_str().unwrap().to_string();
    s3.aws(admin, &["s3", "cp", &f, "s3://mine/f"]).ok();

    // A wrong secret.
    let mut wrong = admin.clone();
    wrong.secret = "0".repeat(64);
    let out = s3.aws(&wrong, &["s3api", "list-buckets"]).fails();
    assert!(
        out.stderr.contains("SignatureDoesNotMatch"),
        "{}",
        out.describe()
    );
    // An unknown access key.
    let mut unknown = admin.clone();
    unknown.id = "LKNOTAKEY0000000000000000".into();
    let out = s3.aws(&unknown, &["s3api", "list-buckets"]).fails();
    assert!(
        out.stderr.contains("InvalidAccessKeyId"),
        "{}",
        out.describe()
    );

    // A tampered signature.
    let signer = s3.signer(admin);
    let o = s3.raw(
        &signer,
        RawRequest {
            method: "GET",
            target: "/mine/f",
            signature: Some("0".repeat(64)),
            ..Default::default()
        },
    );
    assert_eq!(status_and_code(&o), (403, "SignatureDoesNotMatch".into()));
    // A tampered request: the signature covers the path.
    let host = s3.addr();
    let mut good = signer.sign(
        "GET",
        &host,
        "/mine/f",
        "",
        &[],
        "UNSIGNED-PAYLOAD",
        SystemTime::now(),
    );
    good.retain(|(k, _)| k != "host");
    let mut text = format!("GET /mine/other HTTP/1.1\r\nhost: {host}\r\n");
    for (k, v) in &good {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("connection: close\r\n\r\n");
    let o = http::raw(&host, text.as_bytes(), false, Duration::from_secs(30));
    assert_eq!(status_and_code(&o), (403, "SignatureDoesNotMatch".into()));

    // The same request signed properly works: the refusals above were about the
    // signature, not the request.
    let o = s3.raw(
        &signer,
        RawRequest {
            method: "GET",
            target: "/mine/f",
            ..Default::default()
        },
    );
    assert_eq!(status_and_code(&o).0, 200);

    // Presigned URLs: valid, then expired (signed 20 minutes ago for 60 s).
    let url = signer.presign("GET", &host, "/mine/f", 300, SystemTime::now());
    assert_eq!(http::get(&url, Auth::None).status, 200);
    let old = SystemTime::now() - Duration::from_secs(1200);
    let url = signer.presign("GET", &host, "/mine/f", 60, old);
    let r = http::get(&url, Auth::None);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("<Code>AccessDenied</Code>"),
        "{}",
        r.text()
    );

    // Outside the clock-skew window.
    let o = s3.raw(
        &signer,
        RawRequest {
            method: "GET",
            target: "/mine/f",
            at: Some(SystemTime::now() - Duration::from_secs(3600)),
            ..Default::default()
        },
    );
    assert_eq!(status_and_code(&o), (403, "RequestTimeTooSkewed".into()));

    // Another region.
    let mut other_region = s3.signer(admin);
    other_region.region = "us-east-1".into();
    let o = s3.raw(
        &other_region,
        RawRequest {
            method: "GET",
            target: "/mine/f",
            ..Default::default()
        },
    );
    assert_eq!(
        status_and_code(&o),
        (400, "AuthorizationHeaderMalformed".into())
    );

    // Anonymous.
    let r = http::get(&format!("{}/mine/f", s3.endpoint()), Auth::None);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("AccessDenied"), "{}", r.text());

    // A key without rights on the bucket; a read-only key writing; a key that may
    // not create buckets.
    let reader = s3.key("reader", &[("mine", "--read")]);
    let out = s3.aws(&reader, &["s3", "cp", "s3://theirs/x", "-"]).fails();
    assert!(
        out.stderr.contains("403") || out.stderr.contains("AccessDenied"),
        "{}",
        out.describe()
    );
    let out = s3
        .aws(
            &reader,
            &[
                "s3api",
                "get-object",
                "--bucket",
                "theirs",
                "--key",
                "x",
                "/dev/null",
            ],
        )
        .fails();
    assert!(out.stderr.contains("AccessDenied"), "{}", out.describe());
    let out = s3
        .aws(
            &reader,
            &[
                "s3api",
                "put-object",
                "--bucket",
                "mine",
                "--key",
                "y",
                "--body",
                &f,
            ],
        )
        .fails();
    assert!(out.stderr.contains("AccessDenied"), "{}", out.describe());
    let out = s3
        .aws(&reader, &["s3api", "create-bucket", "--bucket", "newone"])
        .fails();
    assert!(out.stderr.contains("AccessDenied"), "{}", out.describe());
    s3.aws(
        &reader,
        &[
            "s3api",
            "get-object",
            "--bucket",
            "mine",
            "--key",
            "f",
            "/dev/null",
        ],
    )
    .ok();
    // ListBuckets shows only what a key may see.
    let lb = json(&s3.aws(&reader, &["s3api", "list-buckets"]).ok());
    let names: Vec<&str> = lb["Buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["mine"]);
    // Copying needs read on the source too.
    let writer = s3.key("writer", &[("theirs", "--write")]);
    let out = s3
        .aws(
            &writer,
            &[
                "s3api",
                "copy-object",
                "--bucket",
                "theirs",
                "--key",
                "c",
                "--copy-source",
                "mine/f",
            ],
        )
        .fails();
    assert!(out.stderr.contains("AccessDenied"), "{}", out.describe());
    // A key owner of a pattern may create matching buckets only.
    let team = s3.key("team", &[("team-*", "--read --write --owner")]);
    s3.aws(&team, &["s3api", "create-bucket", "--bucket", "team-a"])
        .ok();
    let out = s3
        .aws(&team, &["s3api", "create-bucket", "--bucket", "other-a"])
        .fails();
    assert!(out.stderr.contains("AccessDenied"), "{}", out.describe());
    // Deleted keys stop working at once; deny takes rights away.
    s3.server
        .local(&["s3", "key", "deny", "reader", "--bucket", "mine"])
        .ok();
    let out = s3
        .aws(
            &reader,
            &[
                "s3api",
                "get-object",
                "--bucket",
                "mine",
                "--key",
                "f",
                "/dev/null",
            ],
        )
        .fails();
    assert!(out.stderr.contains("AccessDenied"), "{}", out.describe());
    s3.server.local(&["s3", "key", "delete", "reader"]).ok();
    let out = s3.aws(&reader, &["s3api", "list-buckets"]).fails();
    assert!(
        out.stderr.contains("InvalidAccessKeyId"),
        "{}",
        out.describe()
    );
    assert!(!s3.server.log().contains("panicked"), "{}", s3.server.log());
}

#[test]
fn s3_unsupported_operations_answer_not_implemented() {
    let s3 = S3Larder::start();
    let k = &s3.admin;
    s3.aws(k, &["s3", "mb", "s3://bkt"]).ok();
    for args in [
        vec![
            "s3api",
            "put-bucket-versioning",
            "--bucket",
            "bkt",
            "--versioning-configuration",
            "Status=Enabled",
        ],
        vec![
            "s3api",
            "put-bucket-acl",
            "--bucket",
            "bkt",
            "--acl",
            "public-read",
        ],
        vec![
            "s3api",
            "put-bucket-tagging",
            "--bucket",
            "bkt",
            "--tagging",
            "TagSet=[{Key=a,Value=b}]",
        ],
        vec![
            "s3api",
            "put-object-lock-configuration",
            "--bucket",
            "bkt",
            "--object-lock-configuration",
            "ObjectLockEnabled=Enabled",
        ],
    ] {
        let out = s3.aws(k, &args).fails();
        assert!(out.stderr.contains("NotImplemented"), "{}", out.describe());
    }
    // What clients probe with answers as AWS does for a plain bucket.
    let v = s3
        .aws(k, &["s3api", "get-bucket-versioning", "--bucket", "bkt"])
        .ok();
    assert!(!v.stdout.contains("Enabled"), "{}", v.describe());
    let l = json(
        &s3.aws(k, &["s3api", "get-bucket-location", "--bucket", "bkt"])
            .ok(),
    );
    assert_eq!(l["LocationConstraint"], "larder", "{l}");
}

#[test]
fn s3_keys_cli() {
    let server = Server::start_with_extra(Launch::Env, &[], &[("LARDER_S3_LISTEN", "127.0.0.1:0")]);
    // The env variable turns the S3 listener on.
    let endpoint = crate::support::s3::s3_endpoint(&server);
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    let created = parse_json(&server.local(&["s3", "key", "create", "ci", "--json"]).ok());
    let obj = created.as_object().unwrap();
    let mut fields: Vec<&str> = obj.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, vec!["access_key_id", "secret_access_key"]);
    let secret = created["secret_access_key"].as_str().unwrap().to_string();
    // The secret is shown once: never by list.
    let list = server.local(&["s3", "key", "list"]).ok();
    assert!(
        list.stdout.contains("ci") && !list.stdout.contains(&secret),
        "{}",
        list.stdout
    );
    let list = server.local(&["s3", "key", "list", "--json"]).ok();
    assert!(!list.stdout.contains(&secret), "{}", list.stdout);
    // Import is idempotent; a clash is refused.
    let id = "GK31c2f218a2e44f485b94239e";
    let sk = "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835";
    server
        .local(&["s3", "key", "import", id, sk, "-n", "boot"])
        .ok();
    server
        .local(&["s3", "key", "import", id, sk, "-n", "boot"])
        .ok();
    server
        .local(&[
            "s3",
            "key",
            "import",
            id,
            "another-secret-entirely",
            "-n",
            "boot",
        ])
        .fails();
    server.local(&["s3", "key", "create", "boot"]).fails();
    // allow / deny / delete.
    server
        .local(&[
            "s3", "key", "allow", "boot", "--bucket", "*", "--read", "--owner",
        ])
        .ok();
    server
        .local(&["s3", "key", "allow", "boot", "--bucket", "*"])
        .fails();
    server
        .local(&[
            "s3",
            "key",
            "allow",
            "boot",
            "--bucket",
            "Bad_Pattern",
            "--read",
        ])
        .fails();
    let list = parse_json(&server.local(&["s3", "key", "list", "--json"]).ok());
    let boot = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "boot")
        .unwrap()
        .clone();
    assert_eq!(boot["access_key_id"], id);
    assert_eq!(boot["grants"][0]["bucket"], "*");
    assert_eq!(boot["grants"][0]["read"], true);
    assert_eq!(boot["grants"][0]["write"], false);
    assert_eq!(boot["grants"][0]["owner"], true);
    server
        .local(&["s3", "key", "deny", "boot", "--bucket", "*", "--owner"])
        .ok();
    server
        .local(&["s3", "key", "deny", "boot", "--bucket", "*"])
        .ok();
    server.local(&["s3", "key", "delete", "boot"]).ok();
    server.local(&["s3", "key", "delete", "boot"]).fails();
    server
        .local(&["s3", "key", "allow", "nobody", "--bucket", "*", "--read"])
        .fails();
    // The secrets rest in SQLite, readable by larder's user only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(server.data_dir()), 0o700);
    for f in ["larder.db", "larder.db-wal", "larder.db-shm"] {
        let p = server.data_dir().join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
}

#[test]
fn s3_bad_input_is_4xx_never_5xx() {
    let s3 = S3Larder::start();
    let k = &s3.admin;
    s3.aws(k, &["s3", "mb", "s3://bkt"]).ok();
    let signer = s3.signer(k);
    let send = |method: &str, target: &str, headers: Vec<(String, String)>, body: &[u8]| {
        s3.raw(
            &signer,
            RawRequest {
                method,
                target,
                headers,
                body: body.to_vec(),
                ..Default::default()
            },
        )
    };
    // Malformed XML bodies.
    for (target, body) in [
        ("/bkt?delete", &b"<Delete><Object><Key>x</Key>"[..]),
        ("/bkt?delete", b"not xml at all"),
        ("/bkt?delete", b"<Delete></Delete>"),
    ] {
        let (status, code) = status_and_code(&send("POST", target, vec![], body));
        assert!((400..500).contains(&status), "{target}: {status} {code}");
        assert!(
            code == "MalformedXML" || code == "InvalidRequest",
            "{status} {code}"
        );
    }
    let (status, code) = status_and_code(&send(
        "POST",
        "/bkt/k?uploadId=nope",
        vec![],
        b"<CompleteMultipartUpload><Part>",
    ));
    assert!((400..500).contains(&status), "{status} {code}");
    // Bad bucket names.
    for target in [
        "/Bad_Bucket",
        "/ab",
        "/a..b",
        "/-x-",
        &format!("/{}", "a".repeat(64)),
    ] {
        let (status, code) = status_and_code(&send("PUT", target, vec![], b""));
        assert_eq!(
            (status, code.as_str()),
            (400, "InvalidBucketName"),
            "{target}"
        );
    }
    // Keys with dot segments or NUL bytes, raw and percent-encoded.
    for target in [
        "/bkt/a/../x",
        "/bkt/%2E%2E/x",
        "/bkt/a/./x",
        "/bkt/..",
        "/bkt/a%00b",
        "/bkt/%00",
    ] {
        let o = send("PUT", target, vec![], b"data");
        let (status, code) = status_and_code(&o);
        assert!((400..500).contains(&status), "{target}: {status} {code}");
        let o = send("GET", target, vec![], b"");
        let (status, _) = status_and_code(&o);
        assert!((400..500).contains(&status), "{target}: GET {status}");
    }
    // A key over 1024 bytes.
    let long = format!("/bkt/{}", "k".repeat(1025));
    let (status, code) = status_and_code(&send("PUT", &long, vec![], b"x"));
    assert_eq!((status, code.as_str()), (400, "KeyTooLongError"));
    // Oversized user metadata (AWS: 2 KiB), and a header block too big to parse.
    let big_meta = vec![("x-amz-meta-big".to_string(), "v".repeat(3000))];
    let (status, code) = status_and_code(&send("PUT", "/bkt/meta", big_meta, b"x"));
    assert_eq!((status, code.as_str()), (400, "MetadataTooLarge"));
    let many: Vec<(String, String)> = (0..200)
        .map(|i| (format!("x-amz-meta-m{i}"), "v".repeat(500)))
        .collect();
    let o = send("PUT", "/bkt/meta2", many, b"x");
    let status = match &o {
        RawOutcome::Response(r) => r.status,
        RawOutcome::NoResponse(_) => 431,
    };
    assert!((400..500).contains(&status), "{o:?}");
    // A bad Content-MD5, a wrong one, and a wrong checksum.
    let (status, code) = status_and_code(&send(
        "PUT",
        "/bkt/md5",
        vec![("content-md5".into(), "nope".into())],
        b"x",
    ));
    assert_eq!((status, code.as_str()), (400, "InvalidDigest"));
    let (status, code) = status_and_code(&send(
        "PUT",
        "/bkt/md5",
        vec![("content-md5".into(), "1B2M2Y8AsgTpgAmY7PhCfg==".into())],
        b"x",
    ));
    assert_eq!((status, code.as_str()), (400, "BadDigest"));
    let (status, code) = status_and_code(&send(
        "PUT",
        "/bkt/crc",
        vec![("x-amz-checksum-crc32".into(), "AAAAAA==".into())],
        b"hello world",
    ));
    assert_eq!((status, code.as_str()), (400, "BadDigest"));
    let (status, code) = status_and_code(&send(
        "PUT",
        "/bkt/crc",
        vec![("x-amz-checksum-crc32".into(), "zz".into())],
        b"x",
    ));
    assert_eq!((status, code.as_str()), (400, "InvalidRequest"));
    // Unsatisfiable and odd list parameters.
    let (status, code) = status_and_code(&send("GET", "/bkt?list-type=2&max-keys=-1", vec![], b""));
    assert!((400..500).contains(&status), "{status} {code}");
    let (status, _) = status_and_code(&send(
        "GET",
        "/bkt?list-type=2&continuation-token=%21%21",
        vec![],
        b"",
    ));
    assert_eq!(status, 400);
    let (status, _) = status_and_code(&send(
        "GET",
        "/bkt?list-type=2&encoding-type=bogus",
        vec![],
        b"",
    ));
    assert_eq!(status, 400);
    let (status, code) =
        status_and_code(&send("PUT", "/bkt/p?partNumber=0&uploadId=x", vec![], b"x"));
    assert!((400..500).contains(&status), "{status} {code}");
    let (status, code) = status_and_code(&send("GET", "/nosuchbucket/x", vec![], b""));
    assert_eq!((status, code.as_str()), (404, "NoSuchBucket"));
    // None of the refused writes left an object behind, and nothing panicked.
    let l = s3
        .aws(k, &["s3api", "list-objects-v2", "--bucket", "bkt"])
        .ok();
    assert!(!l.stdout.contains("\"Key\""), "{}", l.stdout);
    let log = s3.server.log();
    assert!(!log.contains("panicked"), "{log}");
    let o = send("GET", "/bkt?list-type=2", vec![], b"");
    assert_eq!(status_and_code(&o).0, 200);
    // A Range that cannot be honoured (and is not signed) is ignored, as RFC 9110
    // says: the whole object, 200.
    assert_eq!(
        send("PUT", "/bkt/ten", vec![], b"0123456789").status(),
        Some(200)
    );
    let url = signer.presign("GET", &s3.addr(), "/bkt/ten", 60, SystemTime::now());
    for (range, status, body) in [
        ("bytes=4-2", 200, &b"0123456789"[..]),
        ("bytes=0-1,3-4", 200, b"0123456789"),
        ("lines=1-2", 200, b"0123456789"),
        ("bytes=2-3", 206, b"23"),
    ] {
        let r = http::request("GET", &url, Auth::None, &[("Range", range)], None);
        assert_eq!((r.status, r.body.as_slice()), (status, body), "{range}");
    }
}

#[test]
fn s3_boto3_round_trips() {
    let s3 = S3Larder::start();
    random_file(&s3.work().join("big.bin"), BIG, 3);
    let w = s3.work().to_str().unwrap().to_string();
    let out = s3.boto3(&s3.admin, &script("boto3_round_trips.py"), &[&w]);
    assert!(
        out.success() && out.stdout.contains("OK"),
        "{}",
        out.describe()
    );
}

#[test]
fn s3_behaves_like_aws() {
    let s3 = S3Larder::start();
    let out = s3.boto3(&s3.admin, &script("semantics.py"), &[]);
    assert!(
        out.success() && out.stdout.contains("OK"),
        "{}",
        out.describe()
    );
    assert!(!s3.server.log().contains("panicked"), "{}", s3.server.log());
}

#[test]
fn s3_rclone_round_trips() {
    let s3 = S3Larder::start();
    let k = &s3.admin;
    let w = s3.work();
    // rclone's stdout is read as text: the objects it prints are text.
    let small = text_file(&w.join("small.txt"), 3000, 4);
    let big = random_file(&w.join("big.bin"), BIG, 5);
    let text = text_file(&w.join("text.txt"), 2 << 20, 8);
    let p = |name: &str| w.join(name).to_str().unwrap().to_string();
    s3.rclone(k, &["mkdir", "s3:rclone"]).ok();
    s3.rclone(k, &["copyto", &p("small.txt"), "s3:rclone/a/small.txt"])
        .ok();
    let ls = s3.rclone(k, &["lsf", "s3:rclone/a/"]).ok();
    assert_eq!(ls.stdout.trim(), "small.txt");
    // rclone's md5sum reads the ETag: an MD5 for single-part objects.
    let sum = s3.rclone(k, &["md5sum", "s3:rclone/a/small.txt"]).ok();
    let want = md5_hex(&small);
    assert!(sum.stdout.starts_with(&want), "{} vs {want}", sum.stdout);
    // 100 MiB as a multipart upload (16 MiB parts).
    s3.rclone(
        k,
        &[
            "copyto",
            "--s3-upload-cutoff",
            "16M",
            "--s3-chunk-size",
            "16M",
            &p("big.bin"),
            "s3:rclone/big.bin",
        ],
    )
    .ok();
    s3.rclone(k, &["copyto", "s3:rclone/big.bin", &p("big.back")])
        .ok();
    assert_same(&read(&w.join("big.back")), &big, "rclone 100 MiB back");
    // Ranged GET.
    s3.rclone(k, &["copyto", &p("text.txt"), "s3:rclone/text.txt"])
        .ok();
    let part = s3
        .rclone(
            k,
            &[
                "cat",
                "--offset",
                "1500000",
                "--count",
                "777",
                "s3:rclone/text.txt",
            ],
        )
        .ok();
    assert_same(
        part.stdout.as_bytes(),
        &text[1_500_000..1_500_777],
        "rclone range",
    );
    // Presigned GET.
    let url = s3
        .rclone(k, &["link", "--expire", "5m", "s3:rclone/a/small.txt"])
        .ok();
    let got = http::get(url.stdout.trim(), Auth::None);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_same(&got.body, &small, "rclone link");
    // Server-side copy.
    s3.rclone(
        k,
        &["copyto", "s3:rclone/a/small.txt", "s3:rclone/b/copy.txt"],
    )
    .ok();
    let c = s3.rclone(k, &["cat", "s3:rclone/b/copy.txt"]).ok();
    assert_same(c.stdout.as_bytes(), &small, "rclone copy");
    // Many objects, then delete them all.
    std::fs::create_dir_all(w.join("many")).unwrap();
    for i in 0..40 {
        std::fs::write(w.join(format!("many/f{i:02}")), format!("file {i}")).unwrap();
    }
    s3.rclone(k, &["copy", &p("many"), "s3:rclone/many"]).ok();
    let ls = s3.rclone(k, &["lsf", "s3:rclone/many"]).ok();
    assert_eq!(ls.stdout.lines().count(), 40);
    s3.rclone(k, &["delete", "s3:rclone/many"]).ok();
    let ls = s3.rclone(k, &["lsf", "s3:rclone/many"]).ok();
    assert_eq!(ls.stdout.trim(), "");
    s3.rclone(k, &["purge", "s3:rclone"]).ok();
}

#[test]
fn s3_s3cmd_round_trips() {
    let s3 = S3Larder::start();
    let k = &s3.admin;
    let w = s3.work();
    let small = random_file(&w.join("small.txt"), 4000, 6);
    let big = random_file(&w.join("big.bin"), BIG, 7);
    let p = |name: &str| w.join(name).to_str().unwrap().to_string();
    s3.s3cmd(k, &["mb", "s3://s3cmd"]).ok();
    s3.s3cmd(k, &["put", &p("small.txt"), "s3://s3cmd/a/small.txt"])
        .ok();
    let ls = s3.s3cmd(k, &["ls", "s3://s3cmd/a/"]).ok();
    assert!(
        ls.stdout.contains("s3://s3cmd/a/small.txt"),
        "{}",
        ls.stdout
    );
    // 100 MiB as 15 MiB parts.
    s3.s3cmd(k, &["put", &p("big.bin"), "s3://s3cmd/big.bin"])
        .ok();
    let info = s3.s3cmd(k, &["info", "s3://s3cmd/big.bin"]).ok();
    assert!(info.stdout.contains(&md5_hex(&big)), "{}", info.stdout);
    let head = json(
        &s3.aws(
            k,
            &[
                "s3api",
                "head-object",
                "--bucket",
                "s3cmd",
                "--key",
                "big.bin",
            ],
        )
        .ok(),
    );
    assert!(head["ETag"].as_str().unwrap().ends_with("-7\""), "{head}");
    s3.s3cmd(k, &["get", "--force", "s3://s3cmd/big.bin", &p("big.back")])
        .ok();
    assert_same(&read(&w.join("big.back")), &big, "s3cmd 100 MiB back");
    // A ranged GET: s3cmd resumes a partial download with `Range: bytes=N-`.
    std::fs::write(w.join("partial"), &big[..60_000_000]).unwrap();
    s3.s3cmd(
        k,
        &["get", "--continue", "s3://s3cmd/big.bin", &p("partial")],
    )
    .ok();
    assert_same(&read(&w.join("partial")), &big, "s3cmd --continue");
    // Presigned GET (s3cmd signs URLs with SigV2).
    let url = s3
        .s3cmd(k, &["signurl", "s3://s3cmd/a/small.txt", "+300"])
        .ok();
    let got = http::get(url.stdout.trim(), Auth::None);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_same(&got.body, &small, "s3cmd signurl");
    // Copy.
    s3.s3cmd(
        k,
        &["cp", "s3://s3cmd/a/small.txt", "s3://s3cmd/b/copy.txt"],
    )
    .ok();
    s3.s3cmd(
        k,
        &["get", "--force", "s3://s3cmd/b/copy.txt", &p("copy.out")],
    )
    .ok();
    assert_same(&read(&w.join("copy.out")), &small, "s3cmd copy");
    // Many objects, deleted with one multi-object delete.
    std::fs::create_dir_all(w.join("many")).unwrap();
    for i in 0..40 {
        std::fs::write(w.join(format!("many/f{i:02}")), format!("file {i}")).unwrap();
    }
    s3.s3cmd(k, &["put", "--recursive", &p("many"), "s3://s3cmd/"])
        .ok();
    let ls = s3.s3cmd(k, &["ls", "s3://s3cmd/many/"]).ok();
    assert_eq!(ls.stdout.lines().count(), 40, "{}", ls.stdout);
    s3.s3cmd(k, &["del", "--recursive", "--force", "s3://s3cmd/many/"])
        .ok();
    let ls = s3.s3cmd(k, &["ls", "s3://s3cmd/many/"]).ok();
    assert_eq!(ls.stdout.trim(), "", "{}", ls.stdout);
    s3.s3cmd(k, &["del", "--recursive", "--force", "s3://s3cmd/"])
        .ok();
    s3.s3cmd(k, &["rb", "s3://s3cmd"]).ok();
}

/// Writes `len` bytes of random letters to `path`.
fn text_file(path: &std::path::Path, len: usize, seed: u64) -> Vec<u8> {
    let data: Vec<u8> = crate::support::s3::random_bytes(len, seed)
        .into_iter()
        .map(|b| b'a' + b % 26)
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

fn md5_hex(data: &[u8]) -> String {
    use s3s::crypto::Checksum as _;
    hex::encode(s3s::crypto::Md5::checksum(data))
}

/// Sends `PUT /bucket/key` with an aws-chunked body, signed per chunk when
/// `signed`, with a CRC32 trailer when `trailer` is given. `tamper` corrupts the
/// second chunk's signature.
fn aws_chunked_put(
    s3: &S3Larder,
    target: &str,
    chunks: &[&[u8]],
    signed: bool,
    trailer: Option<&str>,
    tamper: bool,
) -> RawOutcome {
    let signer = s3.signer(&s3.admin);
    let host = s3.addr();
    let at = SystemTime::now();
    let decoded: usize = chunks.iter().map(|c| c.len()).sum();
    let payload = match (signed, trailer.is_some()) {
        (true, false) => "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        (false, true) => "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        _ => panic!("unsupported combination in this test"),
    };
    let mut extra: Vec<(String, String)> = vec![
        ("content-encoding".into(), "aws-chunked".into()),
        ("x-amz-decoded-content-length".into(), decoded.to_string()),
    ];
    if trailer.is_some() {
        extra.push(("x-amz-trailer".into(), "x-amz-checksum-crc32".into()));
    }
    let signed_headers = signer.sign("PUT", &host, target, "", &extra, payload, at);
    let auth = &signed_headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap()
        .1;
    let mut prev = auth.rsplit("Signature=").next().unwrap().to_string();
    let mut body = Vec::new();
    let mut all: Vec<&[u8]> = chunks.to_vec();
    all.push(b"");
    for (i, c) in all.iter().enumerate() {
        if signed {
            let mut sig = signer.chunk_signature(at, &prev, c);
            prev = sig.clone();
            if tamper && i == 1 {
                sig = "0".repeat(64);
            }
            body.extend_from_slice(format!("{:x};chunk-signature={sig}\r\n", c.len()).as_bytes());
        } else {
            body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        }
        if !c.is_empty() {
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
        }
    }
    if let Some(t) = trailer {
        body.extend_from_slice(format!("x-amz-checksum-crc32:{t}\r\n").as_bytes());
    }
    body.extend_from_slice(b"\r\n");
    let mut text = format!("PUT {target} HTTP/1.1\r\n");
    for (k, v) in extra.iter().chain(signed_headers.iter()) {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(&body);
    http::raw(&host, &bytes, false, Duration::from_secs(60))
}

#[test]
fn s3_aws_chunked_bodies_signed_and_with_unsigned_trailers() {
    let s3 = S3Larder::start();
    s3.aws(&s3.admin, &["s3", "mb", "s3://chunks"]).ok();
    let a = random_bytes(70_000, 11);
    let b = random_bytes(65_536, 12);
    let whole = [a.clone(), b.clone()].concat();
    let get = |key: &str| {
        let url = s3.signer(&s3.admin).presign(
            "GET",
            &s3.addr(),
            &format!("/chunks/{key}"),
            60,
            SystemTime::now(),
        );
        http::get(&url, Auth::None)
    };
    // Signed chunks (what SigV4 streaming uploads send).
    let o = aws_chunked_put(&s3, "/chunks/signed", &[&a, &b], true, None, false);
    assert_eq!(status_and_code(&o).0, 200, "{o:?}");
    assert_same(&get("signed").body, &whole, "signed chunks");
    // A chunk whose signature does not chain is refused and stores nothing.
    let o = aws_chunked_put(&s3, "/chunks/tampered2", &[&a, &b], true, None, true);
    let (status, code) = status_and_code(&o);
    assert!((400..500).contains(&status), "{status} {code}");
    assert_eq!(code, "SignatureDoesNotMatch");
    assert_eq!(get("tampered2").status, 404);
    // The unsigned-trailer form recent SDKs send over HTTPS, with a CRC32 trailer.
    let crc = {
        use base64::Engine as _;
        use s3s::crypto::Checksum as _;
        base64::engine::general_purpose::STANDARD.encode(s3s::crypto::Crc32::checksum(&whole))
    };
    let o = aws_chunked_put(&s3, "/chunks/trailer", &[&a, &b], false, Some(&crc), false);
    assert_eq!(status_and_code(&o).0, 200, "{o:?}");
    assert_same(&get("trailer").body, &whole, "unsigned trailer");
    // A trailer checksum that does not match is BadDigest, and nothing is stored.
    let o = aws_chunked_put(
        &s3,
        "/chunks/badtrailer",
        &[&a, &b],
        false,
        Some("AAAAAA=="),
        false,
    );
    assert_eq!(status_and_code(&o), (400, "BadDigest".into()));
    assert_eq!(get("badtrailer").status, 404);
}

#[test]
fn s3_object_and_nar_with_the_same_content_share_chunks() {
    let s3 = S3Larder::start();
    let k = &s3.admin;
    let cache = s3.server.create_cache("main", false);
    let file = s3.work().join("content.bin");
    random_file(&file, 64 << 20, 21);
    let f = file.to_str().unwrap();
    s3.aws(k, &["s3", "mb", "s3://dedup"]).ok();
    let before = s3.server.stats();
    // One PUT, so the object is one stream through the chunker, as the NAR is.
    s3.aws(
        k,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "dedup",
            "--key",
            "content.bin",
            "--body",
            f,
        ],
    )
    .ok();
    let object = s3.server.stats();
    let added_by_object = object.chunk_bytes - before.chunk_bytes;
    assert!(
        added_by_object >= 60 << 20,
        "the object stored {added_by_object} bytes"
    );
    // The same bytes as a flat-file store path pushed by Nix: the NAR framing
    // shifts them, and content-defined chunking finds the same cuts after the
    // first chunk.
    let nix = Nix::new("s3-dedup");
    let src = nix.store("src");
    let path = nix
        .run("nix-store", &["--store", src.to_str().unwrap(), "--add", f])
        .ok()
        .stdout
        .trim()
        .to_string();
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&src, &to, &[&path], Some(&nix.netrc(s3.server.token())))
        .ok();
    let both = s3.server.stats();
    assert_eq!(both.nars, 1, "{both:?}");
    let added_by_nar = both.chunk_bytes - object.chunk_bytes;
    assert!(
        added_by_nar < 1 << 20,
        "the NAR added {added_by_nar} chunk bytes on top of the object's {added_by_object}: stored twice?"
    );
    // And both read back whole.
    let back = s3.work().join("back.bin");
    s3.aws(
        k,
        &[
            "s3",
            "cp",
            "--no-progress",
            "s3://dedup/content.bin",
            back.to_str().unwrap(),
        ],
    )
    .ok();
    assert_same(&read(&back), &read(&file), "object back");
    let dst = nix.store("dst");
    nix.substitute(
        &dst,
        &path,
        &cache.url,
        &cache.public_key,
        Some(&nix.netrc(s3.server.token())),
    )
    .ok();
    assert_same(
        &read(&crate::support::in_store(&dst, &path)),
        &read(&file),
        "store path back",
    );
}

/// A signed GET of `/bucket/key`: (status, body).
fn signed_get(s3: &S3Larder, target: &str) -> (u16, Vec<u8>) {
    match s3.raw(
        &s3.signer(&s3.admin),
        RawRequest {
            method: "GET",
            target,
            ..Default::default()
        },
    ) {
        RawOutcome::Response(r) => {
            assert!(r.complete, "{target}: a short body");
            (r.status, r.body)
        }
        RawOutcome::NoResponse(why) => panic!("{target}: {why}"),
    }
}

fn signed_put(s3: &S3Larder, target: &str, body: &[u8]) -> (u16, String) {
    status_and_code(&s3.raw(
        &s3.signer(&s3.admin),
        RawRequest {
            method: "PUT",
            target,
            body: body.to_vec(),
            ..Default::default()
        },
    ))
}

#[test]
fn s3_acknowledged_writes_survive_kill_9_and_failed_ones_leave_nothing() {
    let mut s3 = S3Larder::start();
    let k = s3.admin.clone();
    s3.aws(&k, &["s3", "mb", "s3://dura"]).ok();
    let mut objects = Vec::new();
    for i in 0..12u64 {
        let data = random_bytes(1000 + (i as usize) * 150_000, 100 + i);
        assert_eq!(signed_put(&s3, &format!("/dura/o{i}"), &data).0, 200);
        objects.push((format!("/dura/o{i}"), data));
    }
    // A multipart upload completed, one left open, a copy, a deletion.
    let big = s3.work().join("mp.bin");
    let mp = random_file(&big, 20 << 20, 31);
    s3.aws(
        &k,
        &[
            "s3",
            "cp",
            "--no-progress",
            big.to_str().unwrap(),
            "s3://dura/mp.bin",
        ],
    )
    .ok();
    objects.push(("/dura/mp.bin".into(), mp));
    let up = json(
        &s3.aws(
            &k,
            &[
                "s3api",
                "create-multipart-upload",
                "--bucket",
                "dura",
                "--key",
                "open",
            ],
        )
        .ok(),
    );
    let upload_id = up["UploadId"].as_str().unwrap().to_string();
    std::fs::write(s3.work().join("part"), random_bytes(1 << 20, 32)).unwrap();
    s3.aws(
        &k,
        &[
            "s3api",
            "upload-part",
            "--bucket",
            "dura",
            "--key",
            "open",
            "--upload-id",
            &upload_id,
            "--part-number",
            "1",
            "--body",
            s3.work().join("part").to_str().unwrap(),
        ],
    )
    .ok();
    s3.aws(
        &k,
        &[
            "s3api",
            "copy-object",
            "--bucket",
            "dura",
            "--key",
            "copy",
            "--copy-source",
            "dura/o3",
        ],
    )
    .ok();
    objects.push(("/dura/copy".into(), objects[3].1.clone()));
    s3.aws(
        &k,
        &["s3api", "delete-object", "--bucket", "dura", "--key", "o0"],
    )
    .ok();
    objects.remove(0);

    // A PUT cut off by its client: the declared length never arrives.
    let signer = s3.signer(&k);
    let host = s3.addr();
    let headers = signer.sign(
        "PUT",
        &host,
        "/dura/cut",
        "",
        &[],
        "UNSIGNED-PAYLOAD",
        SystemTime::now(),
    );
    let mut text = "PUT /dura/cut HTTP/1.1\r\ncontent-length: 10000000\r\n".to_string();
    for (k, v) in &headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(&host).unwrap();
        sock.write_all(text.as_bytes()).unwrap();
        sock.write_all(&random_bytes(3 << 20, 33)).unwrap();
        sock.shutdown(std::net::Shutdown::Both).unwrap();
    }
    // A PUT still streaming when the server dies.
    let headers = signer.sign(
        "PUT",
        &host,
        "/dura/dying",
        "",
        &[],
        "UNSIGNED-PAYLOAD",
        SystemTime::now(),
    );
    let mut text = "PUT /dura/dying HTTP/1.1\r\ncontent-length: 50000000\r\n".to_string();
    for (k, v) in &headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    let mut dying = std::net::TcpStream::connect(&host).unwrap();
    {
        use std::io::Write;
        dying.write_all(text.as_bytes()).unwrap();
        dying.write_all(&random_bytes(8 << 20, 34)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        signed_get(&s3, "/dura/cut").0,
        404,
        "a cut-off PUT is not visible"
    );

    s3.server.kill9();
    drop(dying);
    s3.server.start_again();

    for (target, data) in &objects {
        let (status, body) = signed_get(&s3, target);
        assert_eq!(status, 200, "{target} after kill -9");
        assert_same(&body, data, target);
    }
    assert_eq!(
        signed_get(&s3, "/dura/o0").0,
        404,
        "a deleted object stays deleted"
    );
    assert_eq!(signed_get(&s3, "/dura/cut").0, 404);
    assert_eq!(
        signed_get(&s3, "/dura/dying").0,
        404,
        "a PUT interrupted by kill -9 is not visible"
    );
    assert_eq!(
        signed_get(&s3, "/dura/open").0,
        404,
        "an open upload is not an object"
    );
    let l = json(
        &s3.aws(&k, &["s3api", "list-objects-v2", "--bucket", "dura"])
            .ok(),
    );
    let keys: Vec<&str> = l["Contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["Key"].as_str().unwrap())
        .collect();
    assert!(
        !keys.contains(&"cut") && !keys.contains(&"dying") && !keys.contains(&"open"),
        "{keys:?}"
    );
    // The open upload survived too, and aborting it leaves nothing.
    let parts = json(
        &s3.aws(
            &k,
            &[
                "s3api",
                "list-parts",
                "--bucket",
                "dura",
                "--key",
                "open",
                "--upload-id",
                &upload_id,
            ],
        )
        .ok(),
    );
    assert_eq!(
        parts["Parts"].as_array().map(|p| p.len()),
        Some(1),
        "{parts}"
    );
    s3.aws(
        &k,
        &[
            "s3api",
            "abort-multipart-upload",
            "--bucket",
            "dura",
            "--key",
            "open",
            "--upload-id",
            &upload_id,
        ],
    )
    .ok();
    let ups = s3
        .aws(&k, &["s3api", "list-multipart-uploads", "--bucket", "dura"])
        .ok();
    assert!(!ups.stdout.contains(&upload_id), "{}", ups.stdout);
    // The server can still verify every NAR (none here) and its store is sound.
    assert!(!s3.server.log().contains("panicked"));
}

#[test]
fn s3_overwrites_are_atomic() {
    let s3 = S3Larder::start();
    s3.aws(&s3.admin, &["s3", "mb", "s3://atomic"]).ok();
    // Several chunks each, so bodies stream chunk by chunk.
    let a = random_bytes(3 << 20, 41);
    let b = random_bytes(3 << 20, 42);
    assert_eq!(signed_put(&s3, "/atomic/obj", &a).0, 200);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen = std::sync::Mutex::new((0usize, 0usize));
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, body) = signed_get(&s3, "/atomic/obj");
                    assert_eq!(status, 200);
                    let mut s = seen.lock().unwrap();
                    if body == a {
                        s.0 += 1;
                    } else if body == b {
                        s.1 += 1;
                    } else {
                        panic!("a reader saw a mix of two versions ({} bytes)", body.len());
                    }
                }
            });
        }
        for i in 0..16 {
            let body = if i % 2 == 0 { &b } else { &a };
            assert_eq!(signed_put(&s3, "/atomic/obj", body).0, 200);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let (sa, sb) = *seen.lock().unwrap();
    assert!(sa + sb > 10, "readers saw {sa} + {sb} versions");
}

#[test]
fn s3_host_name_on_the_main_listener_and_virtual_hosted_style() {
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("larder.toml");
    std::fs::write(&conf, "s3_host = \"s3.test\"\ns3_region = \"home-1\"\n").unwrap();
    let server =
        Server::start_with_extra(Launch::Flags, &["--config", conf.to_str().unwrap()], &[]);
    let key = crate::support::s3::create_key(&server, "k", &[("*", "--read --write --owner")]);
    let mut signer = crate::support::s3::Signer {
        key: &key,
        region: "home-1".into(),
    };
    let addr = server.addr();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let path_host = format!("s3.test:{port}");
    let vhost = format!("photos.s3.test:{port}");
    let req = |method, target, body: &[u8]| RawRequest {
        method,
        target,
        body: body.to_vec(),
        ..Default::default()
    };
    // Path style by Host on the main listener.
    let o = raw_signed(&addr, &path_host, &signer, req("PUT", "/photos", b""));
    assert_eq!(status_and_code(&o).0, 200, "{o:?}");
    let o = raw_signed(
        &addr,
        &path_host,
        &signer,
        req("PUT", "/photos/a/b.jpg", b"picture"),
    );
    assert_eq!(status_and_code(&o).0, 200, "{o:?}");
    // Virtual-hosted style: the bucket is in the Host.
    let o = raw_signed(&addr, &vhost, &signer, req("GET", "/a/b.jpg", b""));
    match &o {
        RawOutcome::Response(r) => {
            assert_eq!((r.status, r.body.as_slice()), (200, &b"picture"[..]))
        }
        other => panic!("{other:?}"),
    }
    let o = raw_signed(&addr, &vhost, &signer, req("GET", "/?list-type=2", b""));
    match &o {
        RawOutcome::Response(r) => {
            let text = String::from_utf8_lossy(&r.body);
            assert!(
                r.status == 200 && text.contains("<Key>a/b.jpg</Key>"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The configured region is the one to sign for.
    signer.region = "larder".into();
    let o = raw_signed(&addr, &vhost, &signer, req("GET", "/a/b.jpg", b""));
    assert_eq!(
        status_and_code(&o),
        (400, "AuthorizationHeaderMalformed".into())
    );
    // Any other Host is the Nix cache as before, and no S3 listener of its own runs.
    let r = http::get(&format!("{}/nix-cache-info", server.url()), Auth::None);
    assert!(
        r.status == 404 || r.status == 200 || r.status == 401,
        "{}",
        r.status
    );
    let r = http::get(&format!("{}/_health", server.url()), Auth::None);
    assert_eq!(r.status, 200);
    assert!(!server
        .stdout_lines()
        .iter()
        .any(|l| l.contains("S3 listening")));
    // s3_listen in the config file starts the S3 listener.
    let conf2 = conf_dir.path().join("listen.toml");
    std::fs::write(&conf2, "s3_listen = \"127.0.0.1:0\"\n").unwrap();
    let server =
        Server::start_with_extra(Launch::Flags, &["--config", conf2.to_str().unwrap()], &[]);
    let endpoint = crate::support::s3::s3_endpoint(&server);
    let r = http::get(&format!("{endpoint}/"), Auth::None);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("AccessDenied"), "{}", r.text());
}

#[test]
fn s3_large_upload_runs_in_flat_memory() {
    // A large streamed PUT must not grow the server: peak RSS after a small upload
    // and after a large one stay close. The large body repeats a 1 MiB random
    // block, so it chunks and dedups quickly, but every byte still streams through
    // hashing and the chunker. LARDER_TEST_S3_BIG_GIB sets its size (default 5).
    let gib: u64 = std::env::var("LARDER_TEST_S3_BIG_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let s3 = S3Larder::start();
    s3.aws(&s3.admin, &["s3", "mb", "s3://big"]).ok();
    let block = random_bytes(1 << 20, 51);
    let stream_put = |key: &str, len: u64| -> u16 {
        use std::io::{Read, Write};
        let signer = s3.signer(&s3.admin);
        let host = s3.addr();
        let target = format!("/big/{key}");
        let headers = signer.sign(
            "PUT",
            &host,
            &target,
            "",
            &[],
            "UNSIGNED-PAYLOAD",
            SystemTime::now(),
        );
        let mut text =
            format!("PUT {target} HTTP/1.1\r\ncontent-length: {len}\r\nconnection: close\r\n");
        for (k, v) in &headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str("\r\n");
        let mut sock = std::net::TcpStream::connect(&host).unwrap();
        sock.write_all(text.as_bytes()).unwrap();
        let mut left = len;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            sock.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        let mut answer = Vec::new();
        sock.read_to_end(&mut answer).unwrap();
        let head = String::from_utf8_lossy(&answer);
        head.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let peak = || -> u64 {
        let pid = s3.server.pid().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    assert_eq!(stream_put("warmup", 256 << 20), 200);
    let after_small = peak();
    let len = gib << 30;
    assert_eq!(stream_put("large", len), 200);
    let after_large = peak();
    assert!(
        after_large < after_small + (64 << 20) && after_large < 512 << 20,
        "peak RSS {after_small} after 256 MiB, {after_large} after {gib} GiB"
    );
    let head = json(
        &s3.aws(
            &s3.admin,
            &["s3api", "head-object", "--bucket", "big", "--key", "large"],
        )
        .ok(),
    );
    assert_eq!(head["ContentLength"].as_u64(), Some(len), "{head}");
    eprintln!(
        "peak RSS: {} MiB after 256 MiB, {} MiB after {gib} GiB",
        after_small >> 20,
        after_large >> 20
    );
}

#[test]
fn s3_ranges_read_only_their_chunks_and_multipart_completes_by_reference() {
    let s3 = S3Larder::start();
    let k = &s3.admin;
    s3.aws(k, &["s3", "mb", "s3://refs"]).ok();
    let data = random_bytes(64 << 20, 61);
    assert_eq!(signed_put(&s3, "/refs/big", &data).0, 200);
    let read_so_far = || s3.server.bytes_read().expect("/proc/PID/io");
    // A 1000-byte range in the middle of 64 MiB reads about one chunk.
    let signer = s3.signer(k);
    for (range, want) in [
        ("bytes=40000000-40000999", &data[40_000_000..40_001_000]),
        ("bytes=-1000", &data[data.len() - 1000..]),
        ("bytes=67108000-", &data[67_108_000..]),
    ] {
        let before = read_so_far();
        let o = s3.raw(
            &signer,
            RawRequest {
                method: "GET",
                target: "/refs/big",
                headers: vec![("range".into(), range.into())],
                ..Default::default()
            },
        );
        let after = read_so_far();
        match o {
            RawOutcome::Response(r) => {
                assert_eq!(r.status, 206, "{range}");
                assert_same(&r.body, want, range);
            }
            RawOutcome::NoResponse(why) => panic!("{why}"),
        }
        assert!(
            after - before < 2 << 20,
            "{range}: the server read {} bytes for a small range of 64 MiB",
            after - before
        );
    }
    // Completing a multipart upload reads no part bytes and stores no chunk.
    let w = s3.work();
    let parts = [random_bytes(6 << 20, 62), random_bytes(3 << 20, 63)];
    let up = json(
        &s3.aws(
            k,
            &[
                "s3api",
                "create-multipart-upload",
                "--bucket",
                "refs",
                "--key",
                "mp",
            ],
        )
        .ok(),
    );
    let id = up["UploadId"].as_str().unwrap().to_string();
    let mut etags = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let f = w.join(format!("part{i}"));
        std::fs::write(&f, p).unwrap();
        let n = (i + 1).to_string();
        let out = json(
            &s3.aws(
                k,
                &[
                    "s3api",
                    "upload-part",
                    "--bucket",
                    "refs",
                    "--key",
                    "mp",
                    "--upload-id",
                    &id,
                    "--part-number",
                    &n,
                    "--body",
                    f.to_str().unwrap(),
                ],
            )
            .ok(),
        );
        etags.push(out["ETag"].as_str().unwrap().to_string());
    }
    let stats_before = s3.server.stats();
    let before = read_so_far();
    let spec = serde_json::json!({"Parts": [
        {"PartNumber": 1, "ETag": etags[0]}, {"PartNumber": 2, "ETag": etags[1]}]})
    .to_string();
    s3.aws(
        k,
        &[
            "s3api",
            "complete-multipart-upload",
            "--bucket",
            "refs",
            "--key",
            "mp",
            "--upload-id",
            &id,
            "--multipart-upload",
            &spec,
        ],
    )
    .ok();
    let after = read_so_far();
    let stats_after = s3.server.stats();
    assert!(
        after - before < 1 << 20,
        "completing read {} bytes",
        after - before
    );
    assert_eq!(stats_after.chunk_bytes, stats_before.chunk_bytes);
    let (status, body) = signed_get(&s3, "/refs/mp");
    assert_eq!(status, 200);
    assert_same(
        &body,
        &[parts[0].clone(), parts[1].clone()].concat(),
        "multipart object",
    );
}
