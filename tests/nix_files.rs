//! The Nix files (flake, NixOS module, appliance image, VM test), checked with
//! Debian's Nix 2.8 and no nixpkgs (the evaluation against nixpkgs is in
//! tests/nix_eval.rs): every `.nix` file parses, passes `deadnix --fail` and
//! `nixpkgs-fmt --check`, the module's options and the config keys they write match
//! what the binary accepts (`larder check-config`), and the module's list of config
//! keys is the binary's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::process::{self, Output};
use crate::support::server::larder;
use crate::support::workdir::Workdir;
use crate::support::Nix;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.nix` file of the repository (not under `target/` or hidden dirs).
fn nix_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&p, out),
                Ok(t) if t.is_file() && name.ends_with(".nix") => out.push(p),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(repo(), &mut out);
    out.sort();
    for must in [
        "flake.nix",
        "nixos-image/module.nix",
        "nixos-image/configuration.nix",
    ] {
        assert!(out.contains(&repo().join(must)), "{must} is missing");
    }
    out
}

/// A tool installed by tests/run.sh (`cargo install --locked`): on PATH, or in the
/// test cache's tools directory.
fn tool(name: &str) -> PathBuf {
    let cached = crate::support::container::cache_dir()
        .join("tools/bin")
        .join(name);
    if cached.exists() {
        return cached;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: tests/run.sh installs it with cargo install --locked")
    })
}

fn run(cmd: &mut Command) -> Output {
    process::run(cmd, Duration::from_secs(120))
}

#[test]
fn every_nix_file_parses() {
    let nix = Nix::new("nix-parse");
    for f in nix_files() {
        let out = process::run(
            nix.cmd("nix-instantiate").arg("--parse").arg(&f),
            Duration::from_secs(60),
        );
        assert!(
            out.success(),
            "{} does not parse: {}",
            f.display(),
            out.describe()
        );
    }
}

#[test]
fn nix_files_pass_deadnix_and_nixpkgs_fmt() {
    let files = nix_files();
    run(Command::new(tool("deadnix")).arg("--fail").args(&files)).ok();
    run(Command::new(tool("nixpkgs-fmt"))
        .arg("--check")
        .args(&files))
    .ok();
}

/// `nix-instantiate --eval --strict --json EXPR` in a private Nix environment.
fn eval_json(nix: &Nix, expr: &str) -> serde_json::Value {
    let out = process::run(
        nix.cmd("nix-instantiate")
            .args(["--eval", "--strict", "--json", "-E", expr])
            .current_dir(repo()),
        Duration::from_secs(60),
    )
    .ok();
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.describe()))
}

/// The option names `module.nix` declares (`NAME = mkOption`, `= lib.mkEnableOption`,
/// `= nullOrSecret`).
fn declared_options(module: &str) -> BTreeSet<String> {
    module
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(" = ")?;
            let declares = ["mkOption", "lib.mkEnableOption", "nullOrSecret"]
                .iter()
                .any(|d| rest.starts_with(d));
            let ident =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (declares && ident).then(|| name.to_string())
        })
        .collect()
}

/// Leaves of `optionKeys`: (option name, config key).
fn option_keys(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    if let Some(m) = v.as_object() {
        for (k, v) in m {
            match v.as_str() {
                Some(key) => out.push((k.clone(), key.to_string())),
                None => option_keys(v, out),
            }
        }
    }
}

/// Follows a key like `tls.acme.eab_kid_file` or `caches[].signing_key_file`.
fn lookup<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    key.split('.')
        .try_fold(v, |v, part| match part.strip_suffix("[]") {
            Some(list) => v.get(list)?.get(0),
            None => v.get(part),
        })
}

#[test]
fn module_options_match_the_config_keys_larder_accepts() {
    let module = std::fs::read_to_string(repo().join("nixos-image/module.nix")).unwrap();
    assert!(
        !module.contains("with lib;"),
        "module.nix must not use `with lib;`"
    );
    let nix = Nix::new("module-keys");
    let mapping = eval_json(&nix, "(import ./nixos-image/settings.nix).optionKeys");
    let mut pairs = Vec::new();
    option_keys(&mapping, &mut pairs);

    // Both ways: every option the module declares is module-only or maps to a key,
    // and every mapped option is declared.
    let module_only: BTreeSet<String> = [
        "enable",
        "package",
        "openFirewall",
        "settings",
        "finalSettings",
        // A whole [[caches]] entry (public, upstreams), checked below.
        "nixosProxy",
    ]
    .map(String::from)
    .into();
    let declared = declared_options(&module);
    // Options with sub-options (`s3KeyFiles.<name>.accessKeyIdFile`) count too.
    let mut mapped: BTreeSet<String> = pairs.iter().map(|(o, _)| o.clone()).collect();
    if let Some(m) = mapping.as_object() {
        mapped.extend(
            m.iter()
                .filter(|(k, v)| v.is_object() && k.as_str() != "settings")
                .map(|(k, _)| k.clone()),
        );
    }
    let unexplained: Vec<&String> = declared
        .iter()
        .filter(|o| !module_only.contains(*o) && !mapped.contains(*o))
        .collect();
    assert!(
        unexplained.is_empty(),
        "options with no config key in settings.nix: {unexplained:?}"
    );
    let undeclared: Vec<&String> = mapped.iter().filter(|o| !declared.contains(*o)).collect();
    assert!(
        undeclared.is_empty(),
        "settings.nix maps options module.nix does not declare: {undeclared:?}"
    );

    // Render with every secret option set (static TLS and ACME cannot go together,
    // so twice) and have the binary check the result.
    let common = r#"
        nixosProxy = "nixos";
        adminTokenFile = "/run/secrets/admin";
        signingKeyFiles = { default = "/run/secrets/sk"; team = "/run/secrets/team-sk"; };
        s3KeyFiles = { restic = {
          accessKeyIdFile = "/run/secrets/id"; secretAccessKeyFile = "/run/secrets/secret"; }; };
    "#;
    let settings = r#"listen = "[::]:8080"; data_dir = "/var/lib/larder"; s3_listen = "[::]:9000";
        caches = [ { name = "default"; public = true; } ];
        s3_keys = [ { name = "restic"; buckets = [ { pattern = "b"; read = true; } ]; } ];"#;
    let renders = [
        format!(
            r#"(import ./nixos-image/settings.nix).render {{ {common}
                tlsKeyFile = "/run/secrets/tls-key";
                settings = {{ {settings} tls = {{ cert_file = "/etc/larder/cert.pem"; }}; }}; }}"#
        ),
        format!(
            r#"(import ./nixos-image/settings.nix).render {{ {common}
                acmeEabKidFile = "/run/secrets/kid"; acmeEabHmacFile = "/run/secrets/hmac";
                settings = {{ {settings} tls = {{ acme = {{ domains = [ "cache.example.com" ]; }}; }}; }}; }}"#
        ),
    ];
    let work = Workdir::new("module-keys");
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for (i, expr) in renders.iter().enumerate() {
        let r = eval_json(&nix, expr);
        let settings = &r["settings"];
        let proxy = settings["caches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "nixos")
            .unwrap_or_else(|| panic!("nixosProxy declared no cache: {settings}"));
        assert_eq!(proxy["public"], true, "{proxy}");
        assert_eq!(
            proxy["upstreams"][0]["url"], "https://cache.nixos.org",
            "{proxy}"
        );
        for (option, key) in &pairs {
            if let Some(v) = lookup(settings, key) {
                seen.insert(option.clone());
                assert!(v.is_string(), "{key} is not a string: {v}");
            }
        }
        // Every credential named in the config is loaded, from the file given.
        let creds: Vec<&str> = r["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for (_, key) in pairs.iter().filter(|(_, k)| k.ends_with("_file")) {
            if let Some(name) = lookup(settings, key).and_then(|v| v.as_str()) {
                assert!(
                    creds
                        .iter()
                        .any(|c| c.starts_with(&format!("{name}:/run/secrets/"))),
                    "{key} = {name:?} has no LoadCredential entry in {creds:?}"
                );
            }
        }
        let toml_value = toml::Value::try_from(settings.clone()).unwrap();
        let path = work.join(format!("rendered-{i}.toml"));
        std::fs::write(&path, toml::to_string(&toml_value).unwrap()).unwrap();
        larder(&["check-config", path.to_str().unwrap()], &[]).ok();
    }
    let missing: Vec<&String> = pairs
        .iter()
        .map(|(o, _)| o)
        .filter(|o| !seen.contains(*o))
        .collect();
    assert!(
        missing.is_empty(),
        "the rendered config lacks the keys of {missing:?}"
    );
}

/// Every `*_file` setting of the config file that holds a secret has a module
/// option; the others (certificates, CA bundles) are named here.
#[test]
fn every_secret_setting_has_a_module_option() {
    const NOT_SECRET: &[&str] = &["cert_file", "directory_ca_file"];
    let nix = Nix::new("secret-keys");
    let mapping = eval_json(&nix, "(import ./nixos-image/settings.nix).optionKeys");
    let mut pairs = Vec::new();
    option_keys(&mapping, &mut pairs);
    let covered: BTreeSet<String> = pairs
        .iter()
        .filter_map(|(_, k)| k.rsplit('.').next().map(String::from))
        .collect();
    let mut file_keys = BTreeSet::new();
    for src in [
        "src/config.rs",
        "src/bootstrap/declared.rs",
        "src/tls/config.rs",
    ] {
        let text = std::fs::read_to_string(repo().join(src)).unwrap();
        // Fields of the structs serde reads from the file (derive Deserialize).
        let (mut deserialized, mut inside) = (false, false);
        for l in text.lines() {
            let t = l.trim();
            if t.starts_with("#[derive(") {
                deserialized = t.contains("Deserialize");
            } else if t.starts_with("pub struct") || t.starts_with("struct") {
                inside = deserialized && t.ends_with('{');
                deserialized = false;
            } else if t == "}" {
                inside = false;
            }
            if !inside {
                continue;
            }
            if let Some(rest) = t.strip_prefix("pub ") {
                if let Some((name, _)) = rest.split_once(':') {
                    if name.ends_with("_file") {
                        file_keys.insert(name.to_string());
                    }
                }
            }
        }
    }
    assert!(file_keys.contains("admin_token_file"), "{file_keys:?}");
    let uncovered: Vec<&String> = file_keys
        .iter()
        .filter(|k| !covered.contains(*k) && !NOT_SECRET.contains(&k.as_str()))
        .collect();
    assert!(
        uncovered.is_empty(),
        "secret settings without a services.larder *File option: {uncovered:?}"
    );
}

/// `tables` in settings.nix (the keys the module lets through `settings`) against
/// the fields of the structs larder reads its config file into.
#[test]
fn module_knows_every_config_key_larder_has() {
    let nix = Nix::new("config-tables");
    let tables = eval_json(&nix, "(import ./nixos-image/settings.nix).tables");
    let structs = [
        ("src/config.rs", "FileConfig", ""),
        ("src/tls/config.rs", "TlsFileConfig", "tls"),
        ("src/tls/config.rs", "AcmeFileConfig", "tls.acme"),
        ("src/bootstrap/declared.rs", "CacheDecl", "caches[]"),
        ("src/bootstrap/declared.rs", "TokenDecl", "tokens[]"),
        ("src/bootstrap/declared.rs", "S3KeyDecl", "s3_keys[]"),
        (
            "src/bootstrap/declared.rs",
            "S3GrantDecl",
            "s3_keys[].buckets[]",
        ),
        ("src/bootstrap/declared.rs", "S3BucketDecl", "s3_buckets[]"),
        ("src/service/gc/settings.rs", "GcFileConfig", "gc"),
        ("src/config.rs", "LogFileConfig", "log"),
        (
            "src/service/upstream/settings.rs",
            "UpstreamFileConfig",
            "upstreams",
        ),
        ("src/meta/caches.rs", "Upstream", "caches[].upstreams[]"),
    ];
    let mut all_tables = BTreeSet::new();
    for (src, name, table) in structs {
        all_tables.insert(table.to_string());
        let text = std::fs::read_to_string(repo().join(src)).unwrap();
        let start = text
            .find(&format!("pub struct {name} {{"))
            .unwrap_or_else(|| panic!("{src} has no struct {name}"));
        let body = &text[start..];
        let body = &body[..body.find("\n}").unwrap()];
        let mut fields = BTreeSet::new();
        for l in body.lines().map(str::trim) {
            if let Some((f, _)) = l.strip_prefix("pub ").and_then(|r| r.split_once(':')) {
                fields.insert(f.trim().to_string());
            }
            if let Some(rest) = l.strip_prefix("#[serde(alias = \"") {
                fields.insert(rest.split('"').next().unwrap().to_string());
            }
        }
        let known: BTreeSet<String> = tables[table]
            .as_array()
            .unwrap_or_else(|| panic!("settings.nix tables has no {table:?}"))
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            known, fields,
            "settings.nix tables.{table:?} and {src}'s {name} disagree"
        );
    }
    let listed: BTreeSet<String> = tables.as_object().unwrap().keys().cloned().collect();
    assert_eq!(listed, all_tables);
}

/// flake.lock pins the branch flake.nix names, to one revision with its hash, and
/// has no other input.
#[test]
fn flake_lock_pins_nixos_25_11() {
    let flake = std::fs::read_to_string(repo().join("flake.nix")).unwrap();
    assert!(flake.contains(r#"inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";"#));
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("flake.lock")).unwrap()).unwrap();
    assert_eq!(lock["version"], 7);
    let nodes = lock["nodes"].as_object().unwrap();
    assert_eq!(
        nodes.keys().collect::<Vec<_>>(),
        ["nixpkgs", "root"],
        "{lock}"
    );
    assert_eq!(lock["nodes"]["root"]["inputs"]["nixpkgs"], "nixpkgs");
    let n = &lock["nodes"]["nixpkgs"];
    assert_eq!(n["original"]["ref"], "nixos-25.11");
    assert_eq!(n["original"]["type"], "github");
    assert_eq!(n["locked"]["type"], "github");
    assert_eq!(n["locked"]["owner"], "NixOS");
    assert_eq!(n["locked"]["repo"], "nixpkgs");
    let rev = n["locked"]["rev"].as_str().unwrap();
    assert!(
        rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()),
        "{rev}"
    );
    let nar_hash = n["locked"]["narHash"].as_str().unwrap();
    assert!(
        nar_hash.starts_with("sha256-") && nar_hash.len() == 51,
        "{nar_hash}"
    );
    assert!(n["locked"]["lastModified"].as_u64().unwrap() > 1_750_000_000);
}

/// The script that sets up the evaluating Nix (tests/nix_eval.rs) passes shellcheck.
#[test]
fn setup_eval_nix_passes_shellcheck() {
    run(Command::new("shellcheck")
        .arg("-x")
        .arg(repo().join("tests/setup-eval-nix.sh")))
    .ok();
}
