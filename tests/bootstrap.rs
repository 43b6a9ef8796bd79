//! The declarative bootstrap (issue #6): caches, tokens, S3 buckets and keys declared
//! in the config file are made so on every start, idempotently; secrets come from
//! files or `$CREDENTIALS_DIRECTORY`; `larder check-config` validates with no secrets.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::http::{self, Auth};
use crate::support::server::{larder, parse_json, Launch};
use crate::support::workdir::Workdir;
use crate::support::{Nix, Server};

/// A config file and a credentials directory for one test.
struct Setup {
    work: Workdir,
}

impl Setup {
    fn new(label: &str) -> Setup {
        let work = Workdir::new(label);
        std::fs::create_dir_all(work.join("creds")).unwrap();
        Setup { work }
    }
    fn config(&self) -> PathBuf {
        self.work.join("config.toml")
    }
    fn creds(&self) -> PathBuf {
        self.work.join("creds")
    }
    fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }
    fn credential(&self, name: &str, value: &str) {
        std::fs::write(self.creds().join(name), format!("{value}\n")).unwrap();
    }
    /// A stopped server reading this config, with `$CREDENTIALS_DIRECTORY` set.
    fn server(&self) -> Server {
        let config = self.config();
        let creds = self.creds();
        Server::new_stopped_with_extra(
            Launch::Flags,
            &["--config", config.to_str().unwrap()],
            &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
        )
    }
}

fn bootstrap_lines(server: &Server) -> Vec<String> {
    server
        .stdout_lines()
        .into_iter()
        .filter(|l| l.starts_with("bootstrap: "))
        .collect()
}

fn read_token(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn s3_keys(server: &Server) -> serde_json::Value {
    parse_json(&server.local(&["s3", "key", "list", "--json"]).ok())
}

const ID_1: &str = "LKBOOTSTRAPTEST00001";
const SECRET_1: &str = "first-secret-0123456789abcdef";

#[test]
fn declared_state_is_created_once_and_kept() {
    let setup = Setup::new("bootstrap-create");
    let nix = Nix::new("bootstrap-create");
    let (sk, pk) = nix.generate_key("declared-1");
    let sk_text = std::fs::read_to_string(&sk).unwrap();
    setup.credential("team-signing-key", sk_text.trim());
    setup.credential("s3-id", ID_1);
    std::fs::write(setup.work.join("s3-secret"), SECRET_1).unwrap();
    setup.write_config(&format!(
        r#"
[[caches]]
name = "main"

[[caches]]
name = "team"
public = true
priority = 30
upstream_cache_key_names = []
retention_period = 86400
signing_key_file = "team-signing-key"

[[tokens]]
sub = "ci"
validity = "30d"
file = "tokens/ci.token"
pull = ["main", "team"]
push = ["team"]

[[s3_buckets]]
name = "backups"

[[s3_keys]]
name = "restic"
access_key_id_file = "s3-id"
secret_access_key_file = "{}"
buckets = [{{ pattern = "backups", read = true, write = true }}, {{ pattern = "logs-*", read = true }}]
"#,
        setup.work.join("s3-secret").display()
    ));
    let mut server = setup.server();
    server.start_again();

    let lines = bootstrap_lines(&server);
    for want in [
        "created cache main",
        "created cache team",
        "minted token ci",
        "created S3 bucket backups",
        "imported S3 key restic",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "no {want:?} in {lines:?}"
        );
    }

    // The caches, as declared; settings left out got the defaults.
    let team = server.cache_info("team");
    assert_eq!(team["is_public"], true);
    assert_eq!(team["priority"], 30);
    assert_eq!(team["public_key"], pk.as_str(), "the declared key is used");
    assert_eq!(team["upstream_cache_key_names"], serde_json::json!([]));
    assert_eq!(
        team["retention_period"],
        serde_json::json!({"Period": 86400})
    );
    let main = server.cache_info("main");
    assert_eq!(main["is_public"], false);
    assert_eq!(main["priority"], 41);
    let main_key = main["public_key"].as_str().unwrap().to_string();

    // The token file: under the data dir, 0600, and the token does what it says.
    let token_file = server.data_dir().join("tokens/ci.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "token file mode");
    let token = read_token(&token_file);
    let netrc = nix.netrc(&token);
    let c = nix.closure("src", 0);
    let team_cache = server.cache("team");
    let main_cache = server.cache("main");
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", team_cache.url),
        &[&c.top],
        Some(&netrc),
    )
    .ok();
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", main_cache.url),
        &[&c.top],
        Some(&netrc),
    )
    .fails();
    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &team_cache.url, &pk, None)
        .ok();

    // The S3 key and its grants.
    let keys = s3_keys(&server);
    assert_eq!(keys[0]["name"], "restic");
    assert_eq!(keys[0]["access_key_id"], ID_1);
    assert_eq!(keys[0]["grants"].as_array().unwrap().len(), 2);

    // Again: nothing to do, nothing changes.
    server.restart();
    assert_eq!(bootstrap_lines(&server), Vec::<String>::new());
    assert_eq!(read_token(&token_file), token, "the token file is kept");
    assert_eq!(
        server.cache_info("main")["public_key"].as_str().unwrap(),
        main_key,
        "a generated key is kept"
    );
    assert_eq!(s3_keys(&server), keys);
    nix.substitute(
        &nix.store("dst2"),
        &c.top,
        &server.cache("team").url,
        &pk,
        None,
    )
    .ok();
}

#[test]
fn changed_declarations_are_applied_on_restart() {
    let setup = Setup::new("bootstrap-change");
    setup.credential("s3-id", ID_1);
    setup.credential("s3-secret", SECRET_1);
    let config = |priority: u32, push: &str, grants: &str| {
        format!(
            r#"
[[caches]]
name = "main"
priority = {priority}

[[tokens]]
sub = "ci"
validity = "1y"
file = "tokens/ci.token"
pull = ["main"]
push = [{push}]

[[s3_keys]]
name = "restic"
access_key_id_file = "s3-id"
secret_access_key_file = "s3-secret"
buckets = [{grants}]
"#
        )
    };
    setup.write_config(&config(
        41,
        r#""main""#,
        r#"{ pattern = "backups", read = true, write = true }"#,
    ));
    let mut server = setup.server();
    server.start_again();
    let token_file = server.data_dir().join("tokens/ci.token");
    let first = read_token(&token_file);
    let narinfo = |srv: &Server, token: &str| {
        http::get(
            &format!("{}/main/nix-cache-info", srv.url()),
            Auth::Bearer(token),
        )
        .status
    };
    assert_eq!(narinfo(&server, &first), 200);

    // A setting and the token's grants change; the S3 key loses a right and a
    // pattern and gains another.
    setup.write_config(&config(
        10,
        "",
        r#"{ pattern = "backups", read = true }, { pattern = "media", owner = true }"#,
    ));
    server.restart();
    let lines = bootstrap_lines(&server);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("updated cache main: priority")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("minted token ci") && l.contains("grants differ")),
        "{lines:?}"
    );
    assert_eq!(server.cache_info("main")["priority"], 10);
    let second = read_token(&token_file);
    assert_ne!(second, first);
    assert_eq!(narinfo(&server, &second), 200);
    // The replaced token is revoked (within the server's refresh period).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while narinfo(&server, &first) == 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        narinfo(&server, &first),
        401,
        "the replaced token still works"
    );
    let grants = &s3_keys(&server)[0]["grants"];
    assert_eq!(
        grants,
        &serde_json::json!([
            {"bucket": "backups", "read": true, "write": false, "owner": false},
            {"bucket": "media", "read": false, "write": false, "owner": true},
        ]),
    );

    // Rotation: a revoked token, or a deleted file, gets a fresh token on restart.
    let jti = parse_json(&server.local(&["token", "inspect", &second, "--json"]).ok())["claims"]
        ["jti"]
        .as_str()
        .unwrap()
        .to_string();
    server.local(&["token", "revoke", &jti]).ok();
    server.restart();
    let third = read_token(&token_file);
    assert_ne!(third, second);
    assert_eq!(narinfo(&server, &third), 200);
    std::fs::remove_file(&token_file).unwrap();
    server.restart();
    assert_ne!(read_token(&token_file), third);

    // New credentials under the same key name replace the key.
    const ID_2: &str = "LKBOOTSTRAPTEST00002";
    setup.credential("s3-id", ID_2);
    server.restart();
    let keys = s3_keys(&server);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["access_key_id"], ID_2);
    assert_eq!(keys[0]["grants"].as_array().unwrap().len(), 2);
}

#[test]
fn admin_token_comes_from_a_credential() {
    let setup = Setup::new("bootstrap-admin");
    let from_credential = "c".repeat(64);
    setup.credential("admin", &from_credential);
    setup.write_config("admin_token_file = \"admin\"\n");
    let mut server = setup.server();
    // What the harness reads; a server using the credential must refuse it.
    std::fs::create_dir_all(server.data_dir()).unwrap();
    let decoy = "d".repeat(64);
    std::fs::write(server.data_dir().join("admin.token"), &decoy).unwrap();
    server.start_again();
    let stats = format!("{}/_api/v1/stats", server.url());
    let ok = http::get(&stats, Auth::Bearer(&from_credential));
    assert!(ok.is_success(), "credential token refused: {}", ok.status);
    assert_eq!(http::get(&stats, Auth::Bearer(&decoy)).status, 401);
    assert!(
        !server
            .stdout_lines()
            .iter()
            .any(|l| l.contains(&from_credential)),
        "the admin token was printed"
    );
}

#[test]
fn a_missing_secret_stops_the_start() {
    let setup = Setup::new("bootstrap-missing");
    setup.write_config(
        r#"
[[s3_keys]]
name = "restic"
access_key_id_file = "s3-id"
secret_access_key_file = "s3-secret"
"#,
    );
    let data = setup.work.join("data");
    let config = setup.config();
    let args = [
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    // No $CREDENTIALS_DIRECTORY: the error says how to provide one.
    let out = larder(&args, &[]).fails();
    assert!(
        out.stderr.contains("CREDENTIALS_DIRECTORY") && out.stderr.contains("s3-id"),
        "{}",
        out.describe()
    );
    // A credentials directory without the file: the error names the file.
    let creds = setup.creds();
    let out = larder(&args, &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]).fails();
    assert!(
        out.stderr
            .contains(&creds.join("s3-id").display().to_string()),
        "{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("larder listening"),
        "{}",
        out.describe()
    );
}

#[test]
fn check_config_needs_no_secrets_and_names_the_bad_key() {
    let setup = Setup::new("check-config");
    let good = r#"
listen = "0.0.0.0:8080"
data_dir = "/nonexistent/larder"
admin_token_file = "admin-token"

[[caches]]
name = "default"
signing_key_file = "/run/secrets/never-read"

[[tokens]]
sub = "ci"
validity = "1y"
file = "tokens/ci.token"
push = ["default"]

[[s3_buckets]]
name = "backups"

[[s3_keys]]
name = "restic"
access_key_id_file = "restic-id"
secret_access_key_file = "restic-secret"
buckets = [{ pattern = "backups", read = true }]
"#;
    setup.write_config(good);
    let config = setup.config();
    let path = config.to_str().unwrap();
    let out = larder(&["check-config", path], &[]).ok();
    assert!(
        out.stdout
            .contains("token ci -> /nonexistent/larder/tokens/ci.token"),
        "{}",
        out.describe()
    );
    assert!(
        !Path::new("/nonexistent/larder").exists(),
        "check-config made the data dir"
    );
    larder(&["check-config", "--quiet", path], &[]).ok();

    for (bad, names) in [
        ("lisen = \"0.0.0.0:1\"\n", "lisen"),
        ("[[caches]]\nname = \"no spaces\"\n", "caches[0].name"),
        (
            "[[caches]]\nname = \"a\"\nsigning_key_file = \"keys/a\"\n",
            "caches[0].signing_key_file",
        ),
        (
            "[[tokens]]\nsub = \"x\"\nvalidity = \"1y\"\nfile = \"x.token\"\n",
            "grants nothing",
        ),
        (
            "[[tokens]]\nsub = \"x\"\nvalidity = \"soon\"\nfile = \"x\"\npull = [\"a\"]\n",
            "tokens[0].validity",
        ),
        (
            "[[s3_keys]]\nname = \"k\"\naccess_key_id_file = \"i\"\nsecret_access_key_file = \"s\"\nbuckets = [{ pattern = \"b\" }]\n",
            "grants nothing",
        ),
        ("[[s3_buckets]]\nname = \"Not_A_Bucket\"\n", "s3_buckets[0].name"),
    ] {
        setup.write_config(bad);
        let out = larder(&["check-config", path], &[]).fails();
        assert!(
            out.stderr.contains(names),
            "expected {names:?} in: {}",
            out.describe()
        );
    }
}

#[test]
fn tls_files_can_be_credentials() {
    let setup = Setup::new("bootstrap-tls");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    setup.credential("tls-cert", &cert.pem());
    setup.credential("tls-key", &key.serialize_pem());
    // Bare names: read from $CREDENTIALS_DIRECTORY, as LoadCredential= provides.
    // (A port of its own: `listen` is 127.0.0.1:0 too, and the two must differ.)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    setup.write_config(&format!(
        "[tls]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"tls-cert\"\nkey_file = \"tls-key\"\n"
    ));
    let mut server = setup.server();
    server.start_again();
    let line = server
        .wait_stdout(std::time::Duration::from_secs(30), |l| {
            l.starts_with("larder tls listening on https://")
        })
        .unwrap_or_else(|| panic!("no TLS listener: {:?}", server.stdout_lines()));
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
}
