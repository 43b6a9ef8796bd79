//! The Attic API's wire shapes, request by request, as PROTOCOLS.md §2 writes them
//! down (and as the stock `attic` client sends them): exact JSON field names,
//! status codes and the `{"code","error","message"}` error body; upload-path with
//! the metadata in a header and in a preamble, chunked without Content-Length,
//! zstd on the wire, a hash mismatch and a deduplicated NAR.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::http::{self, Auth, RawOutcome};
use crate::support::{fetch_narinfo, hash_part, Nix, Server};
use crate::tokens::{error_body, mint};

/// Headers the stock client sends with every request.
const ATTIC_UA: (&str, &str) = ("User-Agent", "Attic/attic-client (larder test)");

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn json_of(r: &http::Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// The stock client's request: `authorization: bearer <t>` (lowercase scheme).
fn attic(method: &str, url: &str, token: &str, body: Option<&Value>) -> http::Resp {
    let auth = format!("bearer {token}");
    let mut headers = vec![
        ATTIC_UA,
        ("Accept", "*/*"),
        ("Authorization", auth.as_str()),
    ];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let body = body.map(|b| b.to_string());
    http::request(
        method,
        url,
        Auth::None,
        &headers,
        body.as_deref().map(str::as_bytes),
    )
}

/// The exact body `attic cache create` sends.
fn attic_create_body() -> Value {
    json!({"keypair":"Generate","is_public":false,"store_dir":"/nix/store","priority":41,
           "upstream_cache_key_names":["cache.nixos.org-1"]})
}

#[test]
fn cache_config_routes_have_attics_shapes() {
    let server = Server::start();
    let token = mint(
        &server,
        "attic-user",
        3600,
        json!({"team-*": ["pull", "create-cache", "configure-cache", "destroy-cache"]}),
    );
    let api = format!("{}/_api/v1", server.url());

    // POST: create; accepted with any 2xx.
    let r = attic(
        "POST",
        &format!("{api}/cache-config/team-a"),
        &token,
        Some(&attic_create_body()),
    );
    assert!(r.is_success(), "{} {}", r.status, r.text());
    // Again: 400 CacheAlreadyExists.
    let r = attic(
        "POST",
        &format!("{api}/cache-config/team-a"),
        &token,
        Some(&attic_create_body()),
    );
    error_body(&r, 400, "CacheAlreadyExists");

    // GET: the CacheConfig, field for field.
    let r = attic("GET", &format!("{api}/cache-config/team-a"), &token, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    let cfg = json_of(&r);
    assert_eq!(
        keys(&cfg),
        [
            "api_endpoint",
            "is_public",
            "priority",
            "public_key",
            "retention_period",
            "store_dir",
            "substituter_endpoint",
            "upstream_cache_key_names"
        ]
    );
    assert_eq!(
        cfg["substituter_endpoint"],
        json!(format!("{}/team-a", server.url()))
    );
    assert_eq!(cfg["api_endpoint"], json!(format!("{}/", server.url())));
    assert_eq!(cfg["is_public"], json!(false));
    assert_eq!(cfg["store_dir"], json!("/nix/store"));
    assert_eq!(cfg["priority"], json!(41));
    assert_eq!(
        cfg["upstream_cache_key_names"],
        json!(["cache.nixos.org-1"])
    );
    assert_eq!(cfg["retention_period"], json!("Global"));
    let pk = cfg["public_key"].as_str().unwrap();
    assert!(
        pk.starts_with("team-a:") && pk.len() == "team-a:".len() + 44,
        "{pk}"
    );

    // /<cache>/attic-cache-info is the same document.
    let r = attic(
        "GET",
        &format!("{}/team-a/attic-cache-info", server.url()),
        &token,
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(json_of(&r), cfg);

    // PATCH: any subset; retention as {"Period": n}; an empty patch is 400.
    let r = attic(
        "PATCH",
        &format!("{api}/cache-config/team-a"),
        &token,
        Some(&json!({})),
    );
    error_body(&r, 400, "RequestError");
    let r = attic(
        "PATCH",
        &format!("{api}/cache-config/team-a"),
        &token,
        Some(
            &json!({"is_public": true, "priority": 30, "upstream_cache_key_names": [],
                     "retention_period": "Global"}),
        ),
    );
    assert_eq!(
        r.status,
        200,
        "attic's configure always sends retention_period: {}",
        r.text()
    );
    let after = json_of(&attic(
        "GET",
        &format!("{api}/cache-config/team-a"),
        &token,
        None,
    ));
    assert_eq!(after["is_public"], json!(true));
    assert_eq!(after["priority"], json!(30));
    assert_eq!(after["upstream_cache_key_names"], json!([]));
    assert_eq!(
        after["public_key"], cfg["public_key"],
        "the key changed without being asked"
    );
    // Changing retention needs configure-cache-retention, which this token lacks.
    let r = attic(
        "PATCH",
        &format!("{api}/cache-config/team-a"),
        &token,
        Some(&json!({"retention_period": {"Period": 3600}})),
    );
    let msg = error_body(&r, 403, "AccessError");
    assert!(msg.contains("configure-cache-retention"), "{msg}");
    let r = http::request(
        "PATCH",
        &format!("{api}/cache-config/team-a"),
        server.auth(),
        &[("Content-Type", "application/json")],
        Some(br#"{"retention_period":{"Period":3600}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json_of(&r)["retention_period"], json!({"Period": 3600}));
    // A keypair given by the client is used as is.
    let nix = Nix::new("attic-keypair");
    let (sk_file, pk_line) = nix.generate_key("team-b-1");
    let sk = std::fs::read_to_string(sk_file).unwrap();
    let r = attic(
        "POST",
        &format!("{api}/cache-config/team-b"),
        &token,
        Some(
            &json!({"keypair": {"Keypair": sk.trim()}, "is_public": true, "store_dir": "/nix/store",
                     "priority": 45, "upstream_cache_key_names": []}),
        ),
    );
    assert!(r.is_success(), "{}", r.text());
    let b = json_of(&attic(
        "GET",
        &format!("{api}/cache-config/team-b"),
        &token,
        None,
    ));
    assert_eq!(b["public_key"], json!(pk_line));

    // DELETE: an empty-bodied 200, then the cache is gone.
    let r = attic(
        "DELETE",
        &format!("{api}/cache-config/team-b"),
        &token,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = attic("GET", &format!("{api}/cache-config/team-b"), &token, None);
    error_body(&r, 404, "NoSuchCache");
    assert_eq!(
        http::get(
            &format!("{}/team-b/nix-cache-info", server.url()),
            Auth::None
        )
        .status,
        401
    );

    // Bad names are 400 RequestError.
    let r = attic(
        "POST",
        &format!("{api}/cache-config/-bad"),
        server.token(),
        Some(&attic_create_body()),
    );
    error_body(&r, 400, "RequestError");
    // Malformed JSON is 400 too, never 5xx.
    let r = http::request(
        "POST",
        &format!("{api}/cache-config/team-c"),
        Auth::Bearer(&token),
        &[("Content-Type", "application/json")],
        Some(b"{not json"),
    );
    error_body(&r, 400, "RequestError");
    // Unauthorized and forbidden bodies.
    let r = http::get(
        &format!("{api}/cache-config/team-a"),
        Auth::Bearer("garbage"),
    );
    error_body(&r, 401, "Unauthorized");
    let r = http::get(&format!("{api}/cache-config/team-a"), Auth::None);
    assert_eq!(r.status, 200, "public now: anonymous may read its config");
    let r = http::request(
        "DELETE",
        &format!("{api}/cache-config/team-a"),
        Auth::None,
        &[],
        None,
    );
    error_body(&r, 401, "Unauthorized");
}

/// What an upload-path test needs: a server, a cache, a built closure.
struct Upload {
    server: Server,
    token: String,
    nix: Nix,
    c: crate::support::Closure,
}

fn upload_setup(test: &str, blob: usize) -> Upload {
    let server = Server::start();
    server.create_cache("team-up", false);
    server.create_cache("team-two", false);
    let token = mint(&server, "ci", 3600, json!({"team-*": ["pull", "push"]}));
    let nix = Nix::new(test);
    let c = nix.closure("src", blob);
    Upload {
        server,
        token,
        nix,
        c,
    }
}

impl Upload {
    fn info(&self, cache: &str, path: &str) -> Value {
        let refs: Vec<String> = self
            .nix
            .references(&self.c.store, path)
            .iter()
            .map(|r| r.trim_start_matches("/nix/store/").to_string())
            .collect();
        json!({
            "cache": cache,
            "store_path_hash": hash_part(path),
            "store_path": path,
            "references": refs,
            "system": "x86_64-linux",
            "deriver": null,
            "sigs": [],
            "ca": null,
            "nar_hash": self.nix.nar_hash(&self.c.store, path),
            "nar_size": self.nix.dump(&self.c.store, path).len(),
        })
    }

    fn upload(&self, headers: &[(&str, &str)], body: &[u8]) -> http::Resp {
        let auth = format!("bearer {}", self.token);
        let mut h: Vec<(&str, &str)> = vec![ATTIC_UA, ("Authorization", auth.as_str())];
        h.extend_from_slice(headers);
        http::request(
            "PUT",
            &format!("{}/_api/v1/upload-path", self.server.url()),
            Auth::None,
            &h,
            Some(body),
        )
    }

    fn missing(&self, cache: &str, paths: &[&str]) -> Vec<String> {
        let hashes: Vec<&str> = paths.iter().map(|p| hash_part(p)).collect();
        let r = attic(
            "POST",
            &format!("{}/_api/v1/get-missing-paths", self.server.url()),
            &self.token,
            Some(&json!({"cache": cache, "store_path_hashes": hashes})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = json_of(&r);
        assert_eq!(keys(&v), ["missing_paths"]);
        let mut m: Vec<String> = serde_json::from_value(v["missing_paths"].clone()).unwrap();
        m.sort();
        m
    }
}

#[track_caller]
fn assert_uploaded(r: &http::Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json_of(r);
    assert_eq!(keys(&v), ["file_size", "frac_deduplicated", "kind"], "{v}");
    assert_eq!(v["kind"], json!("Uploaded"));
    assert!(v["file_size"].as_u64().unwrap() > 0);
    let f = v["frac_deduplicated"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&f), "{v}");
    v
}

#[test]
fn upload_path_with_header_preamble_and_chunked_bodies_then_nix_substitutes() {
    let u = upload_setup("attic-upload", 300 * 1024);
    let c = &u.c;
    let all: Vec<&str> = c.paths.iter().map(String::as_str).collect();
    let mut want: Vec<String> = all.iter().map(|p| hash_part(p).to_string()).collect();
    want.sort();
    assert_eq!(u.missing("team-up", &all), want);

    // leaf: metadata in the X-Attic-Nar-Info header, NAR with Content-Length.
    let leaf_nar = u.nix.dump(&c.store, &c.leaf);
    let r = u.upload(
        &[("X-Attic-Nar-Info", &u.info("team-up", &c.leaf).to_string())],
        &leaf_nar,
    );
    assert_uploaded(&r);

    // mid: metadata as a preamble, and the whole body sent chunked with no
    // Content-Length, as the stock client does.
    let mid_nar = u.nix.dump(&c.store, &c.mid);
    let meta = u.info("team-up", &c.mid).to_string();
    let mut body = meta.clone().into_bytes();
    body.extend_from_slice(&mid_nar);
    let mut req = format!(
        "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: {}\r\nAuthorization: bearer {}\r\n\
         User-Agent: Attic/attic-client\r\nX-Attic-Nar-Info-Preamble-Size: {}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        u.server.addr(),
        u.token,
        meta.len()
    )
    .into_bytes();
    for piece in body.chunks(7000) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    match http::raw(&u.server.addr(), &req, false, Duration::from_secs(60)) {
        RawOutcome::Response(resp) => {
            assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
            let v: Value = serde_json::from_slice(&resp.body).unwrap();
            assert_eq!(v["kind"], json!("Uploaded"), "{v}");
        }
        RawOutcome::NoResponse(why) => panic!("chunked upload-path: {why}"),
    }

    // top: zstd on the wire (attic#296), header metadata.
    let top_nar = u.nix.dump(&c.store, &c.top);
    let zst = zstd::encode_all(&top_nar[..], 3).unwrap();
    let r = u.upload(
        &[
            ("X-Attic-Nar-Info", &u.info("team-up", &c.top).to_string()),
            ("Content-Encoding", "zstd"),
        ],
        &zst,
    );
    assert_uploaded(&r);
    assert!(u.missing("team-up", &all).is_empty());

    // The narinfos carry the metadata, and real Nix substitutes the closure.
    let cache = u.server.cache("team-up");
    let info = fetch_narinfo(&cache, &c.mid, Auth::Bearer(&u.token)).expect("mid narinfo");
    assert_eq!(info.require("NarHash"), u.nix.nar_hash(&c.store, &c.mid));
    assert_eq!(info.require("NarSize"), mid_nar.len().to_string());
    let mut refs: Vec<String> = u
        .nix
        .references(&c.store, &c.mid)
        .iter()
        .map(|r| r.trim_start_matches("/nix/store/").to_string())
        .collect();
    refs.sort();
    assert_eq!(
        info.references(),
        refs,
        "references include the self-reference"
    );
    assert!(info.all("Sig").iter().any(|s| s.starts_with("team-up:")));
    let dst = u.nix.store("dst");
    let netrc = u.nix.netrc(&u.token);
    u.nix
        .substitute(&dst, &c.top, &cache.url, &cache.public_key, Some(&netrc))
        .ok();
    crate::substitution::check_substituted(&u.nix, c, &dst);
}

#[test]
fn upload_path_refuses_a_hash_mismatch_and_dedups_an_existing_nar() {
    let u = upload_setup("attic-mismatch", 100 * 1024);
    let c = &u.c;
    let nar = u.nix.dump(&c.store, &c.mid);
    // Wrong NarHash: the top's hash on the mid's NAR.
    let mut bad = u.info("team-up", &c.mid);
    bad["nar_hash"] = json!(u.nix.nar_hash(&c.store, &c.top));
    let r = u.upload(&[("X-Attic-Nar-Info", &bad.to_string())], &nar);
    let msg = error_body(&r, 400, "RequestError");
    assert!(msg.contains("NarHash"), "{msg}");
    // Wrong NarSize, right hash.
    let mut bad = u.info("team-up", &c.mid);
    bad["nar_size"] = json!(nar.len() + 1);
    let r = u.upload(&[("X-Attic-Nar-Info", &bad.to_string())], &nar);
    error_body(&r, 400, "RequestError");
    // A truncated body.
    let r = u.upload(
        &[("X-Attic-Nar-Info", &u.info("team-up", &c.mid).to_string())],
        &nar[..nar.len() / 2],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // Nothing is visible.
    let cache = u.server.cache("team-up");
    assert!(fetch_narinfo(&cache, &c.mid, u.server.auth()).is_none());
    assert_eq!(
        u.missing("team-up", &[&c.mid]),
        [hash_part(&c.mid).to_string()]
    );

    // Right: Uploaded. The same NAR into another cache: Deduplicated.
    let r = u.upload(
        &[("X-Attic-Nar-Info", &u.info("team-up", &c.mid).to_string())],
        &nar,
    );
    assert_uploaded(&r);
    let r = u.upload(
        &[("X-Attic-Nar-Info", &u.info("team-two", &c.mid).to_string())],
        &nar,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        json_of(&r),
        json!({"kind": "Deduplicated", "frac_deduplicated": null})
    );
    let two = u.server.cache("team-two");
    let info = fetch_narinfo(&two, &c.mid, u.server.auth()).expect("deduplicated path is visible");
    assert!(
        info.all("Sig").iter().any(|s| s.starts_with("team-two:")),
        "signed by its own cache"
    );
    let stats = u.server.stats();
    assert_eq!(stats.nars, 1, "one NAR stored for two caches: {stats:?}");
}

#[test]
fn uploads_through_nix_copy_and_upload_path_dedup_with_each_other() {
    let u = upload_setup("attic-cross", 200 * 1024);
    let c = &u.c;
    // Nix PUTs into team-up...
    let netrc = u.nix.netrc(&u.token);
    let up = u.server.cache("team-up");
    u.nix
        .copy_to(
            &c.store,
            &format!("{}?compression=zstd", up.url),
            &[&c.top],
            Some(&netrc),
        )
        .ok();
    let before = u.server.stats();
    // ...and the Attic API finds the NAR already stored.
    let nar = u.nix.dump(&c.store, &c.mid);
    let r = u.upload(
        &[("X-Attic-Nar-Info", &u.info("team-two", &c.mid).to_string())],
        &nar,
    );
    assert_eq!(json_of(&r)["kind"], json!("Deduplicated"), "{}", r.text());
    assert_eq!(
        u.server.stats().chunks,
        before.chunks,
        "new chunks for a stored NAR"
    );
    // The other way round: upload-path first, then nix copy sees the path.
    let nix2 = Nix::new("attic-cross-2");
    let c2 = nix2.closure("src", 0);
    let leaf2 = nix2.dump(&c2.store, &c2.leaf);
    let u2 = Upload {
        server: u.server,
        token: u.token.clone(),
        nix: nix2,
        c: c2,
    };
    let r = u2.upload(
        &[(
            "X-Attic-Nar-Info",
            &u2.info("team-up", &u2.c.leaf).to_string(),
        )],
        &leaf2,
    );
    assert_uploaded(&r);
    let info = u2
        .nix
        .path_info(&up.url, &u2.c.leaf, Some(&u2.nix.netrc(&u2.token)));
    assert!(Nix::info_valid(&info), "{info}");
}
