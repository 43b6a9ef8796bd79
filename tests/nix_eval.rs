//! The flake, the NixOS module, the appliance and its images, evaluated for real.
//!
//! nixpkgs cannot be fetched here, and Debian 12's Nix (2.8) is too old for it, so:
//! - nixpkgs is the snapshot in `../shared/nixpkgs/` (or `LARDER_NIXPKGS`: a
//!   nixpkgs directory or tarball), given to Nix with `--override-input`;
//! - Nix is Debian trixie's 2.26, unpacked by `tests/setup-eval-nix.sh` into the
//!   test cache (`LARDER_EVAL_NIX`, which `tests/run.sh` exports), with its store,
//!   its fetcher cache (the snapshot is unpacked once per machine) and its
//!   evaluation cache there too.
//!
//! Without a nixpkgs these tests say SKIPPED on the terminal (not only in captured
//! output) and pass; with one, every check fails for real. Evaluations run one at a
//! time (each needs up to 4 GB). Nothing is built: building NixOS needs the network
//! (docs/deploy.md, "What CI verifies").
//!
//! `tests/data/nix-eval/flake.nix` is what a user's flake would be: it imports
//! larder's flake (`--override-input larder git+file://<this checkout>`), makes a
//! machine with every section of the config turned on, and the misconfigurations
//! that must fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::support::process::{self, Output};
use crate::support::server::{larder, LARDER};
use crate::support::workdir::Workdir;

/// One evaluation at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Evaluations of one NixOS system take 5–15 s; `nix flake check` about a minute
/// (several on a loaded machine).
const EVAL_TIMEOUT: Duration = Duration::from_secs(900);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Writes to the real stderr: libtest captures `eprintln!`, not this.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The evaluating Nix and the nixpkgs it evaluates against.
struct Eval {
    nix: PathBuf,
    /// `--override-input nixpkgs` value.
    nixpkgs: String,
    /// Store, fetcher and evaluation caches, kept between runs.
    state: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

/// The nixpkgs to evaluate against, as a flake reference, or why there is none.
fn nixpkgs_ref() -> Result<String, String> {
    nixpkgs_ref_from(
        std::env::var_os("LARDER_NIXPKGS"),
        &repo().join("../shared/nixpkgs/nixpkgs-26.11pre-eval.tar.gz"),
    )
}

/// `LARDER_NIXPKGS` (a nixpkgs directory or tarball) when set, else the snapshot.
fn nixpkgs_ref_from(env: Option<std::ffi::OsString>, snapshot: &Path) -> Result<String, String> {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        let p = std::fs::canonicalize(&p)
            .unwrap_or_else(|e| panic!("LARDER_NIXPKGS={}: {e}", p.display()));
        return Ok(if p.is_dir() {
            format!("path:{}", p.display())
        } else {
            format!("tarball+file://{}", p.display())
        });
    }
    match std::fs::canonicalize(snapshot) {
        Ok(p) => Ok(format!("tarball+file://{}", p.display())),
        Err(_) => Err(format!(
            "no nixpkgs snapshot at {} and LARDER_NIXPKGS is unset",
            snapshot.display()
        )),
    }
}

/// The evaluation setup, or `None` (after saying SKIPPED) when there is no nixpkgs.
fn eval(test: &str) -> Option<Eval> {
    let nixpkgs = match nixpkgs_ref() {
        Ok(r) => r,
        Err(why) => {
            say(&format!(
                "SKIPPED {test}: {why}; NixOS evaluation not checked"
            ));
            return None;
        }
    };
    let nix = std::env::var_os("LARDER_EVAL_NIX")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::support::container::cache_dir().join("eval-nix/nix"));
    assert!(
        nix.exists(),
        "{} is missing: tests/setup-eval-nix.sh makes it (tests/run.sh runs it)",
        nix.display()
    );
    let state = crate::support::container::cache_dir().join("eval-state");
    let conf = state.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("nix.conf"),
        "experimental-features = nix-command flakes\n\
         allow-import-from-derivation = false\n\
         build-users-group =\n\
         sandbox = false\n\
         substituters =\n\
         warn-dirty = false\n",
    )
    .unwrap();
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Some(Eval {
        nix,
        nixpkgs,
        state,
        _serial: serial,
    })
}

impl Eval {
    /// `nix ARGS` with this setup's configuration, store and caches.
    fn nix(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.nix);
        cmd.args(args)
            .args(["--store", self.state.join("store").to_str().unwrap()])
            .current_dir(repo())
            .env("NIX_CONF_DIR", self.state.join("conf"))
            .env("XDG_CACHE_HOME", self.state.join("cache"))
            .env_remove("NIX_CONFIG")
            .env_remove("NIX_REMOTE")
            .env_remove("NIX_PATH");
        let start = Instant::now();
        let out = process::run(&mut cmd, EVAL_TIMEOUT);
        say(&format!(
            "nix {}: {:.0} s",
            args.iter()
                .find(|a| a.contains('#') || **a == "check")
                .unwrap_or(&""),
            start.elapsed().as_secs_f64()
        ));
        out
    }

    /// larder's own flake: this checkout (a git flake when it is a clone).
    fn larder_flake(&self) -> String {
        if repo().join(".git").exists() {
            format!("git+file://{}", repo().display())
        } else {
            format!("path:{}", repo().display())
        }
    }

    /// `nix eval --json tests/data/nix-eval#ATTR`.
    fn eval_attr(&self, attr: &str) -> Output {
        let flake = format!(
            "path:{}#{attr}",
            repo().join("tests/data/nix-eval").display()
        );
        let larder = self.larder_flake();
        self.nix(&[
            "eval",
            "--json",
            &flake,
            "--override-input",
            "nixpkgs",
            &self.nixpkgs,
            "--override-input",
            "larder",
            &larder,
            "--no-write-lock-file",
        ])
    }

    fn eval_json(&self, attr: &str) -> serde_json::Value {
        let out = self.eval_attr(attr).ok();
        serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{attr} is not JSON ({e}): {}", out.describe()))
    }
}

/// What the test flake's `facts.NAME` evaluates to, once per test run.
fn fact(e: &Eval, name: &str) -> serde_json::Value {
    static FACTS: OnceLock<Mutex<BTreeMap<String, serde_json::Value>>> = OnceLock::new();
    let facts = FACTS.get_or_init(Default::default);
    if let Some(v) = facts.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
        return v.clone();
    }
    let v = e.eval_json(&format!("facts.{name}"));
    facts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), v.clone());
    v
}

/// `nix flake check --no-build` of larder's flake, once per test run.
fn flake_check(e: &Eval) -> Output {
    static CHECK: OnceLock<Output> = OnceLock::new();
    CHECK
        .get_or_init(|| {
            let larder = e.larder_flake();
            e.nix(&[
                "flake",
                "check",
                "--no-build",
                "--option",
                "allow-import-from-derivation",
                "false",
                &larder,
                "--override-input",
                "nixpkgs",
                &e.nixpkgs,
                "--no-write-lock-file",
            ])
        })
        .clone()
}

/// The drvPaths `nix flake check` reported, by output (`packages.x86_64-linux.default`).
fn checked_drvs(out: &Output) -> BTreeMap<String, String> {
    let mut drvs = BTreeMap::new();
    let mut current = None;
    for line in out.stderr.lines() {
        if let Some(rest) = line.trim().strip_prefix("checking derivation ") {
            current = Some(rest.trim_end_matches("...").to_string());
        } else if let Some(drv) = line.trim().strip_prefix("derivation evaluated to ") {
            if let Some(name) = current.take() {
                drvs.insert(name, drv.trim().to_string());
            }
        }
    }
    drvs
}

/// Where the tests look for nixpkgs, and that a machine without one skips them
/// with a reason rather than failing or passing unnoticed.
#[test]
fn nix_eval_finds_nixpkgs_or_says_why_not() {
    let work = Workdir::new("nix-eval-ref");
    let absent = work.join("shared/nixpkgs/nixpkgs-26.11pre-eval.tar.gz");
    let why = nixpkgs_ref_from(None, &absent).unwrap_err();
    assert!(why.contains(absent.to_str().unwrap()), "{why}");
    assert!(why.contains("LARDER_NIXPKGS"), "{why}");
    assert!(nixpkgs_ref_from(Some("".into()), &absent).is_err());

    let tarball = work.join("nixpkgs.tar.gz");
    std::fs::write(&tarball, b"").unwrap();
    assert_eq!(
        nixpkgs_ref_from(None, &tarball).unwrap(),
        format!("tarball+file://{}", tarball.display())
    );
    let dir = work.join("nixpkgs");
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(
        nixpkgs_ref_from(Some(dir.clone().into()), &absent).unwrap(),
        format!("path:{}", dir.display())
    );
    assert_eq!(
        nixpkgs_ref_from(Some(tarball.clone().into()), &absent).unwrap(),
        format!("tarball+file://{}", tarball.display())
    );
    match nixpkgs_ref() {
        Ok(r) => say(&format!("nix_eval: evaluating against {r}")),
        Err(why) => say(&format!("nix_eval: SKIPPED, {why}")),
    }
}

#[test]
fn nix_eval_flake_check_without_import_from_derivation() {
    let Some(e) = eval("nix_eval_flake_check_without_import_from_derivation") else {
        return;
    };
    let out = flake_check(&e).ok();
    // Every output was looked at, not just the first.
    for checked in [
        "checking NixOS configuration 'nixosConfigurations.appliance'",
        "checking NixOS module 'nixosModules.default'",
    ] {
        assert!(
            out.stderr.contains(checked),
            "`nix flake check` did not report {checked:?}: {}",
            out.describe()
        );
    }
    let drvs: BTreeSet<String> = checked_drvs(&out).into_keys().collect();
    let expected: BTreeSet<String> = [
        "packages.x86_64-linux.default",
        "packages.x86_64-linux.appliance-qcow2",
        "packages.x86_64-linux.appliance-raw-efi",
        "packages.x86_64-linux.appliance-iso",
        "checks.x86_64-linux.package",
        "checks.x86_64-linux.vm",
    ]
    .map(String::from)
    .into();
    assert_eq!(drvs, expected, "{}", out.describe());
    assert!(
        !out.stderr.contains("warning: unknown flake output"),
        "{}",
        out.describe()
    );
}

#[test]
fn nix_eval_drv_paths_of_the_system_images_package_and_vm_test() {
    let Some(e) = eval("nix_eval_drv_paths_of_the_system_images_package_and_vm_test") else {
        return;
    };
    // The images, the package and the VM test from `nix flake check`; the system
    // and the test driver (which the check does not print) evaluated on their own.
    let check = flake_check(&e).ok();
    let mut drvs: serde_json::Map<String, serde_json::Value> = checked_drvs(&check)
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("packages.x86_64-linux.")?;
            let name = if name == "default" { "package" } else { name };
            Some((name.to_string(), serde_json::Value::String(v)))
        })
        .collect();
    let own = fact(&e, "drvPaths");
    drvs.extend(own.as_object().unwrap().clone());
    let names: BTreeSet<&str> = drvs.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "toplevel",
            "appliance-qcow2",
            "appliance-raw-efi",
            "appliance-iso",
            "package",
            "vm-test-driver"
        ])
    );
    for (name, drv) in &drvs {
        let drv = drv.as_str().unwrap();
        assert!(
            drv.starts_with("/nix/store/") && drv.ends_with(".drv"),
            "{name}: {drv}"
        );
        // `nix eval` wrote it into the evaluation store (`nix flake check
        // --no-build` evaluates read-only and writes none).
        if own.get(name).is_some() {
            let file = e.state.join("store").join(drv.trim_start_matches('/'));
            assert!(file.exists(), "{name}: {} is missing", file.display());
        }
    }
    let has = |k: &str, part: &str| drvs[k].as_str().unwrap().contains(part);
    assert!(has("toplevel", "-nixos-system-larder-"), "{drvs:?}");
    assert!(has("package", "-larder-"), "{drvs:?}");
    assert!(has("appliance-iso", ".iso.drv"), "{drvs:?}");
    assert!(
        has("vm-test-driver", "nixos-test-driver-larder"),
        "{drvs:?}"
    );
}

#[test]
fn nix_eval_option_docs_of_services_larder_render() {
    let Some(e) = eval("nix_eval_option_docs_of_services_larder_render") else {
        return;
    };
    let docs = fact(&e, "optionDocs");
    let docs = docs.as_object().unwrap();
    let module = std::fs::read_to_string(repo().join("nixos-image/module.nix")).unwrap();
    for option in [
        "enable",
        "package",
        "openFirewall",
        "settings",
        "settings.listen",
        "settings.data_dir",
        "settings.s3_listen",
        "adminTokenFile",
        "tlsKeyFile",
        "acmeEabKidFile",
        "acmeEabHmacFile",
        "signingKeyFiles",
        "nixosProxy",
        "s3KeyFiles.<name>.accessKeyIdFile",
        "s3KeyFiles.<name>.secretAccessKeyFile",
    ] {
        let name = format!("services.larder.{option}");
        let doc = docs
            .get(&name)
            .unwrap_or_else(|| panic!("{name} is not in the option docs: {:?}", docs.keys()));
        let description = doc["description"].as_str().unwrap_or("");
        assert!(
            description.trim().len() > 10,
            "{name} has no description: {doc}"
        );
        assert!(doc["type"].as_str().is_some(), "{name} has no type: {doc}");
        assert!(doc["declarations"].is_array(), "{name}: {doc}");
    }
    // Internal options stay out of the manual.
    assert!(module.contains("finalSettings"));
    assert!(!docs.contains_key("services.larder.finalSettings"));
    let listen = &docs["services.larder.settings.listen"];
    assert!(
        listen["type"]
            .as_str()
            .unwrap()
            .contains("IP address and port"),
        "{listen}"
    );
}

/// (attribute of `bad` in tests/data/nix-eval/flake.nix, what the error must say).
const BAD_SETTINGS: &[(&str, &[&str])] = &[
    (
        "admin-token-in-store",
        &["services.larder.adminTokenFile", "outside the Nix store"],
    ),
    (
        "tls-key-path-literal",
        &["services.larder.tlsKeyFile", "outside the Nix store"],
    ),
    (
        "signing-key-in-store-via-settings",
        &[
            "services.larder.settings",
            "caches[0].signing_key_file",
            "Nix store",
            "signingKeyFiles",
        ],
    ),
    (
        "relative-signing-key",
        &[
            "services.larder.signingKeyFiles.default",
            "absolute path",
            "keys/default.sk",
        ],
    ),
    (
        "relative-data-dir",
        &["services.larder.settings.data_dir", "/var/lib/"],
    ),
    (
        "listen-host-name",
        &["services.larder.settings.listen", "IP address and port"],
    ),
    (
        "tls-listen-no-port",
        &["services.larder.settings.tls.listen", "IP address and port"],
    ),
    (
        "unknown-key",
        &["services.larder.settings", "no key `listen_addr`"],
    ),
    (
        "unknown-nested-key",
        &["services.larder.settings", "no key `tls.acme.domain`"],
    ),
    (
        "acme-without-domain",
        &[
            "services.larder.settings.tls.acme.domains",
            "at least one domain",
        ],
    ),
];

#[test]
fn nix_eval_settings_a_user_gets_wrong_fail_naming_the_option() {
    let Some(e) = eval("nix_eval_settings_a_user_gets_wrong_fail_naming_the_option") else {
        return;
    };
    // The flake defines exactly these cases (and the good machine evaluates, in
    // the facts).
    let flake = std::fs::read_to_string(repo().join("tests/data/nix-eval/flake.nix")).unwrap();
    for (case, _) in BAD_SETTINGS {
        assert!(
            flake.contains(&format!("        {case}.")),
            "{case} is not in the flake"
        );
    }
    for (case, expected) in BAD_SETTINGS {
        let out = e.eval_attr(&format!("bad.{case}")).fails();
        for fragment in *expected {
            assert!(
                out.stderr.contains(fragment),
                "{case}: the error does not say {fragment:?}: {}",
                out.describe()
            );
        }
    }
}

/// The config file as TOML, from the JSON the module generates it from.
fn write_toml(json: &str, path: &Path) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let t = toml::Value::try_from(v.clone()).unwrap();
    std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
    v
}

#[test]
fn nix_eval_generated_config_passes_check_config() {
    let Some(e) = eval("nix_eval_generated_config_passes_check_config") else {
        return;
    };
    let f = serde_json::json!({ "appliance": fact(&e, "appliance"), "every": fact(&e, "every") });
    let work = Workdir::new("nix-eval-config");

    let appliance = work.join("appliance.toml");
    let a = write_toml(f["appliance"]["settings"].as_str().unwrap(), &appliance);
    let out = larder(&["check-config", appliance.to_str().unwrap()], &[]).ok();
    assert!(out.stdout.contains("valid"), "{}", out.describe());
    assert_eq!(a["admin_token_file"], "admin-token");
    assert_eq!(a["caches"][0]["signing_key_file"], "signing-key-default");

    let every = work.join("every.toml");
    let v = write_toml(f["every"]["settings"].as_str().unwrap(), &every);
    let out = larder(&["check-config", every.to_str().unwrap()], &[]).ok();
    // Every section is there, each secret named by its credential.
    for key in [
        "listen",
        "s3_listen",
        "public_url",
        "s3_region",
        "s3_host",
        "allowed_hosts",
        "trusted_upload_keys",
        "admin_token_file",
        "tls",
        "caches",
        "tokens",
        "s3_keys",
        "s3_buckets",
        "gc",
    ] {
        assert!(v.get(key).is_some(), "the config has no {key}: {v}");
    }
    assert!(
        out.stdout.contains("budget 80% of the disk"),
        "{}",
        out.describe()
    );
    assert_eq!(v["tls"]["acme"]["eab_kid_file"], "acme-eab-kid");
    assert_eq!(v["tls"]["acme"]["eab_hmac_file"], "acme-eab-hmac");
    assert_eq!(v["caches"][1]["signing_key_file"], "signing-key-team");
    assert_eq!(
        v["s3_keys"][0]["secret_access_key_file"],
        "s3-restic-secret-access-key"
    );
    for shown in ["tls listen", "s3 region", "credential admin-token"] {
        assert!(out.stdout.contains(shown), "{shown}: {}", out.describe());
    }
    // Each credential the config names is loaded by the unit.
    let unit = unit_service(f["every"]["unit"].as_str().unwrap());
    let creds = &unit["LoadCredential"];
    for name in [
        "admin-token",
        "acme-eab-kid",
        "acme-eab-hmac",
        "signing-key-team",
        "s3-restic-access-key-id",
        "s3-restic-secret-access-key",
    ] {
        assert!(
            creds
                .iter()
                .any(|c| c.starts_with(&format!("{name}:/run/secrets/"))),
            "no LoadCredential for {name}: {creds:?}"
        );
    }
    let firewall: Vec<u64> = f["every"]["firewall"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(firewall, [80, 443, 9000]);
    let toplevel = f["every"]["toplevel"].as_str().unwrap();
    assert!(toplevel.ends_with(".drv"), "{toplevel}");

    // Static TLS: the key file as a credential.
    let static_tls = fact(&e, "staticTls");
    let path = work.join("static-tls.toml");
    let v = write_toml(static_tls["settings"].as_str().unwrap(), &path);
    let out = larder(&["check-config", path.to_str().unwrap()], &[]).ok();
    assert!(out.stdout.contains("tls listen"), "{}", out.describe());
    assert_eq!(v["tls"]["key_file"], "tls-key");
    let unit = unit_service(static_tls["unit"].as_str().unwrap());
    assert!(
        unit["LoadCredential"].contains(&"tls-key:/run/secrets/larder-tls.key".to_string()),
        "{unit:?}"
    );
}

/// The `[Service]` settings of a unit file: key -> values. Lists are split into
/// words (`~` spread over each), booleans written `yes`/`no`, an empty
/// assignment resets the key.
fn unit_service(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    merge_service(&mut out, text);
    out
}

fn merge_service(out: &mut BTreeMap<String, Vec<String>>, text: &str) {
    let mut in_service = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        let entry = out.entry(k.trim().to_string()).or_default();
        if v.is_empty() {
            entry.clear();
            continue;
        }
        let (neg, rest) = match v.strip_prefix('~') {
            Some(r) => ("~", r),
            None => ("", v),
        };
        let words: Vec<String> = if k == "Environment" || k == "ExecStart" {
            vec![v.to_string()]
        } else {
            rest.split_whitespace()
                .map(|w| match w {
                    "yes" | "true" | "on" => "yes".to_string(),
                    "no" | "false" | "off" => "no".to_string(),
                    w => format!("{neg}{w}"),
                })
                .collect()
        };
        entry.extend(words);
        entry.sort();
        entry.dedup();
    }
}

/// Keys whose differences between the module's unit and the installer's are by
/// design; each is named in docs/deploy.md ("The module's unit and the
/// installer's").
fn documented_differences() -> String {
    let doc = std::fs::read_to_string(repo().join("docs/deploy.md")).unwrap();
    let start = doc
        .find("### The module's unit and the installer's")
        .expect("docs/deploy.md has no section \"The module's unit and the installer's\"");
    let rest = &doc[start + 4..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    rest[..end].to_string()
}

fn compare_units(
    label: &str,
    module: &BTreeMap<String, Vec<String>>,
    installer: &BTreeMap<String, Vec<String>>,
) {
    let documented = documented_differences();
    let keys: BTreeSet<&String> = module.keys().chain(installer.keys()).collect();
    let mut undocumented = Vec::new();
    for k in keys {
        let (m, i) = (module.get(k), installer.get(k));
        let same = match (m, i) {
            (Some(m), Some(i)) => m == i,
            (None, Some(v)) | (Some(v), None) => v.is_empty(),
            (None, None) => true,
        };
        if !same && !documented.contains(&format!("`{k}=`")) {
            undocumented.push(format!("{k}: module {m:?}, installer {i:?}"));
        }
    }
    assert!(
        undocumented.is_empty(),
        "{label}: the module's unit and the installer's differ, and docs/deploy.md does \
         not name it as intended:\n  {}",
        undocumented.join("\n  ")
    );
}

#[test]
fn nix_eval_module_unit_has_the_installers_hardening() {
    let Some(e) = eval("nix_eval_module_unit_has_the_installers_hardening") else {
        return;
    };
    let f = serde_json::json!({ "appliance": fact(&e, "appliance"), "every": fact(&e, "every") });
    let installer_text = std::fs::read_to_string(repo().join("appliance/larder.service")).unwrap();
    let installer = unit_service(&installer_text);
    // The hardening itself is there on both sides (a parse that found nothing
    // would compare equal).
    for k in [
        "CapabilityBoundingSet",
        "ProtectSystem",
        "SystemCallFilter",
        "RestrictAddressFamilies",
        "PrivateUsers",
        "NoNewPrivileges",
    ] {
        assert!(installer.contains_key(k), "installer unit: no {k}");
    }
    // The appliance listens on 8080: the installer's unit as it is.
    let appliance = unit_service(f["appliance"]["unit"].as_str().unwrap());
    assert_eq!(appliance["PrivateUsers"], ["yes"]);
    assert!(appliance["CapabilityBoundingSet"].is_empty());
    compare_units("port 8080", &appliance, &installer);

    // Ports 80 and 443: the installer's unit with its low-ports drop-in.
    let mut low = installer.clone();
    let dropin = std::fs::read_to_string(repo().join("appliance/low-ports.conf")).unwrap();
    for line in dropin.lines().filter(|l| l.contains('=')) {
        if let Some((k, _)) = line.split_once('=') {
            low.remove(k.trim());
        }
    }
    merge_service(&mut low, &dropin);
    let every = unit_service(f["every"]["unit"].as_str().unwrap());
    assert_eq!(every["AmbientCapabilities"], ["CAP_NET_BIND_SERVICE"]);
    compare_units("ports below 1024", &every, &low);
}

/// A `larder serve` on `data` with `config`, credentials from `creds`; returns the
/// process and its URL.
fn serve(config: &Path, data: &Path, creds: &Path, log: &Path) -> (std::process::Child, String) {
    let mut child = Command::new(LARDER)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .env("CREDENTIALS_DIRECTORY", creds)
        .env_remove("LARDER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("larder listening on ") {
            return (child, url.trim().trim_end_matches('/').to_string());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "larder serve ended before listening: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn nix_eval_appliance_first_boot_makes_the_keys_once() {
    let Some(e) = eval("nix_eval_appliance_first_boot_makes_the_keys_once") else {
        return;
    };
    let f = serde_json::json!({ "appliance": fact(&e, "appliance") });
    let script = f["appliance"]["keysScript"].as_str().unwrap();
    let unit = f["appliance"]["keysUnit"].as_str().unwrap();
    let console = f["appliance"]["consoleScript"].as_str().unwrap();
    const KEYS: &str = "/var/lib/larder-keys";
    // What systemd does around the script, from the unit the system gets.
    for line in [
        "ConditionPathExists=!/var/lib/larder-keys/default.sk",
        "StateDirectory=larder-keys",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "Type=oneshot",
        "Before=larder.service",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "no {line} in:\n{unit}"
        );
    }
    assert!(script.contains(KEYS), "{script}");

    let work = Workdir::new("nix-eval-first-boot");
    let keys = work.join("var/lib/larder-keys");
    let scripted = work.join("larder-keys.sh");
    std::fs::write(&scripted, script.replace(KEYS, keys.to_str().unwrap())).unwrap();
    let boot = || -> bool {
        // ConditionPathExists=!…/default.sk
        if keys.join("default.sk").exists() {
            return false;
        }
        // StateDirectory= with its mode, then the script under UMask=0077 with
        // `set -e`, as NixOS runs a unit's script. nix-store is Debian's (the
        // appliance runs its own Nix's; the command is the same).
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
        process::run(
            Command::new("bash")
                .arg("-c")
                .arg(format!("umask 0077 && set -e && . {}", scripted.display())),
            Duration::from_secs(60),
        )
        .ok();
        true
    };
    assert!(boot(), "the first boot must run the script");
    let files = ["admin.token", "default.sk", "default.pk"];
    for name in ["admin.token", "default.sk"] {
        let p = keys.join(name);
        assert_eq!(mode(&p), 0o600, "{} mode {:o}", p.display(), mode(&p));
    }
    // The public key: as Nix writes it (0644, Nix sets its own umask), in the 0700
    // directory; never writable by others.
    let pk_mode = mode(&keys.join("default.pk"));
    assert_eq!(pk_mode & 0o022, 0, "default.pk mode {pk_mode:o}");
    assert_eq!(mode(&keys), 0o700);
    assert!(!keys.join("default.sk.new").exists());
    let token = std::fs::read_to_string(keys.join("admin.token")).unwrap();
    assert_eq!(token.len(), 64, "{token:?}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token:?}");
    let pk = std::fs::read_to_string(keys.join("default.pk")).unwrap();
    assert!(pk.starts_with("larder-default-1:"), "{pk:?}");
    let before: Vec<(Vec<u8>, std::time::SystemTime)> = files
        .iter()
        .map(|n| {
            let p = keys.join(n);
            (
                std::fs::read(&p).unwrap(),
                std::fs::metadata(&p).unwrap().modified().unwrap(),
            )
        })
        .collect();

    // larder, as the appliance runs it: its config, the keys as credentials.
    let config = work.join("larder.toml");
    write_toml(f["appliance"]["settings"].as_str().unwrap(), &config);
    let creds = work.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::copy(keys.join("admin.token"), creds.join("admin-token")).unwrap();
    std::fs::copy(keys.join("default.sk"), creds.join("signing-key-default")).unwrap();
    let data = work.join("var/lib/larder");
    let check = |label: &str| {
        let (mut child, url) = serve(&config, &data, &creds, &work.join(format!("{label}.log")));
        let out = larder(
            &[
                "cache",
                "info",
                "default",
                "--json",
                "--server",
                &url,
                "--token",
                token.trim(),
            ],
            &[],
        );
        let _ = child.kill();
        let _ = child.wait();
        let info: serde_json::Value = serde_json::from_str(out.ok().stdout.trim()).unwrap();
        assert_eq!(info["public_key"].as_str().unwrap(), pk.trim(), "{label}");
        assert!(
            data.join("tokens/push.token").exists(),
            "{label}: no push token"
        );
    };
    check("first-boot");
    let push_token = std::fs::read(data.join("tokens/push.token")).unwrap();

    // The console message shows the URL and the key.
    let issue = work.join("run/issue.d");
    let console = console
        .replace(KEYS, keys.to_str().unwrap())
        .replace("/run/issue.d", issue.to_str().unwrap());
    let out = process::run(
        Command::new("bash")
            .arg("-c")
            .arg(format!("set -e\n{console}")),
        Duration::from_secs(60),
    )
    .ok();
    assert!(out.stdout.contains(pk.trim()), "{}", out.describe());
    assert!(out.stdout.contains(":8080/default"), "{}", out.describe());
    let shown = std::fs::read_to_string(issue.join("50-larder.issue")).unwrap();
    assert!(shown.contains(pk.trim()), "{shown}");

    // Second boot: nothing is made again, larder keeps the same key.
    std::thread::sleep(Duration::from_millis(20));
    assert!(!boot(), "the second boot must skip larder-keys.service");
    for (n, (content, mtime)) in files.iter().zip(&before) {
        let p = keys.join(n);
        assert_eq!(&std::fs::read(&p).unwrap(), content, "{n} changed");
        assert_eq!(
            &std::fs::metadata(&p).unwrap().modified().unwrap(),
            mtime,
            "{n} was rewritten"
        );
    }
    check("second-boot");
    assert_eq!(
        std::fs::read(data.join("tokens/push.token")).unwrap(),
        push_token,
        "the push token was minted again"
    );
}
