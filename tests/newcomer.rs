//! What a newcomer meets in the first thirty minutes: exit codes, which of a flag
//! and an environment variable wins, errors for a wrong path, a busy port, a host
//! name to listen on or a data dir that cannot be one, the admin token (printed,
//! inspected), an empty token list, `login` checking its token, `larder doctor`,
//! and the completions and man page generated from the command definitions.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::nix::s;
use crate::support::process::{self, Output};
use crate::support::server::{larder, Launch, LARDER};
use crate::support::workdir::Workdir;
use crate::support::Server;

/// `larder ARGS` with a private `XDG_CONFIG_HOME` (no saved servers) and `env`.
fn run(home: &Workdir, args: &[&str], env: &[(&str, &str)]) -> Output {
    let xdg = home.join("xdg");
    let mut all: Vec<(&str, &str)> = vec![("XDG_CONFIG_HOME", s(&xdg))];
    all.extend_from_slice(env);
    larder(args, &all)
}

#[track_caller]
fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.code, Some(code), "{}", out.describe());
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let home = Workdir::new("exit-codes");
    // A usage error: clap's code.
    assert_code(&run(&home, &["cache", "list", "--no-such-flag"], &[]), 2);
    assert_code(&run(&home, &["cache", "create"], &[]), 2);
    // A command that ran and failed: nothing listens on port 1.
    let out = run(
        &home,
        &["cache", "list", "--server", "http://127.0.0.1:1"],
        &[],
    );
    assert_code(&out, 1);
    assert!(out.stderr.contains("could not reach"), "{}", out.describe());
    // A data dir with no larder data in it.
    let empty = home.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_code(&run(&home, &["stats", "--data-dir", s(&empty)], &[]), 1);
    // Both are documented.
    let help = run(&home, &["--help"], &[]).ok();
    assert!(
        help.stdout
            .contains("Exit codes: 0 success; 1 the command failed")
            && help.stdout.contains("2 a usage"),
        "{}",
        help.stdout
    );
}

/// Which target a management command acts on, for each mix of flags, environment
/// variables and a saved default server. Server A is reachable and has cache
/// `on-a`; data dir B (its server stopped) has cache `on-b`; the saved default
/// server and `nowhere` are unreachable, so acting on them fails.
#[test]
fn a_flag_wins_over_the_environment_for_every_target() {
    let a = Server::start();
    a.create_cache("on-a", false);
    let mut b = Server::start();
    b.create_cache("on-b", false);
    b.stop();
    let b_dir = s(b.data_dir()).to_string();
    let a_url = a.url().to_string();
    let a_token = a.token().to_string();
    let nowhere = "http://127.0.0.1:1";
    let missing_dir = "/nonexistent/larder-data";

    let home = Workdir::new("precedence");
    // A saved default server that cannot be reached.
    run(
        &home,
        &["login", "saved", nowhere, "some-token", "--no-verify"],
        &[],
    )
    .ok();

    enum Expect {
        A,
        B,
        Fails,
    }
    use Expect::*;
    /// What, flags, environment, expected target.
    type Row<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, Expect);
    let table: Vec<Row> = vec![
        (
            "--data-dir over LARDER_SERVER",
            vec!["--data-dir", &b_dir],
            vec![("LARDER_SERVER", nowhere)],
            B,
        ),
        (
            "--server over LARDER_DATA_DIR",
            vec!["--server", &a_url, "--token", &a_token],
            vec![("LARDER_DATA_DIR", missing_dir)],
            A,
        ),
        (
            "--server over LARDER_SERVER",
            vec!["--server", &a_url],
            vec![("LARDER_SERVER", nowhere), ("LARDER_TOKEN", &a_token)],
            A,
        ),
        (
            "--token over LARDER_TOKEN",
            vec!["--token", &a_token],
            vec![("LARDER_SERVER", &a_url), ("LARDER_TOKEN", "wrong")],
            A,
        ),
        (
            "--data-dir over LARDER_DATA_DIR",
            vec!["--data-dir", &b_dir],
            vec![("LARDER_DATA_DIR", missing_dir)],
            B,
        ),
        (
            "LARDER_SERVER over LARDER_DATA_DIR",
            vec![],
            vec![
                ("LARDER_SERVER", &a_url),
                ("LARDER_TOKEN", &a_token),
                ("LARDER_DATA_DIR", missing_dir),
            ],
            A,
        ),
        (
            "LARDER_SERVER over the saved default",
            vec![],
            vec![("LARDER_SERVER", &a_url), ("LARDER_TOKEN", &a_token)],
            A,
        ),
        (
            "LARDER_DATA_DIR over the saved default",
            vec![],
            vec![("LARDER_DATA_DIR", &b_dir)],
            B,
        ),
        (
            "the saved default when nothing is said",
            vec![],
            vec![],
            Fails,
        ),
        (
            "--data-dir over the saved default",
            vec!["--data-dir", &b_dir],
            vec![],
            B,
        ),
    ];
    for (what, flags, env, expect) in table {
        let mut args = vec!["cache", "list"];
        args.extend(flags.iter().copied());
        let out = run(&home, &args, &env);
        match expect {
            A => assert!(
                out.success() && out.stdout.contains("on-a"),
                "{what}: should act on server A: {}",
                out.describe()
            ),
            B => assert!(
                out.success() && out.stdout.contains("on-b"),
                "{what}: should act on data dir B: {}",
                out.describe()
            ),
            Fails => {
                assert_code(&out, 1);
                assert!(
                    out.stderr.contains("127.0.0.1:1"),
                    "{what}: should try the saved server: {}",
                    out.describe()
                );
            }
        }
    }
    // Both flags: a usage error rather than a guess.
    assert_code(
        &run(
            &home,
            &["cache", "list", "--server", &a_url, "--data-dir", &b_dir],
            &[],
        ),
        2,
    );
    // The command from the report: verify on a data dir with LARDER_SERVER set.
    let out = run(
        &home,
        &["verify", "--data-dir", &b_dir],
        &[("LARDER_SERVER", nowhere)],
    )
    .ok();
    assert!(out.stdout.contains("checked 0 NARs"), "{}", out.describe());
}

#[test]
fn push_says_what_a_path_outside_the_store_is() {
    let server = Server::start();
    server.create_cache("demo", false);
    let home = Workdir::new("push-non-store");
    let file = home.join("hostname");
    std::fs::write(&file, "box\n").unwrap();
    let out = run(
        &home,
        &[
            "push",
            "demo",
            s(&file),
            "--server",
            server.url(),
            "--token",
            server.token(),
        ],
        &[],
    );
    assert_code(&out, 1);
    assert!(
        out.stderr.contains("is not a Nix store path")
            && out.stderr.contains("./result")
            && out.stderr.contains("nixpkgs#hello")
            && !out.stderr.contains("flake.nix"),
        "{}",
        out.describe()
    );
}

/// `larder serve ARGS`; returns the first `larder listening on` line, or the
/// whole output when the server exits first.
fn serve_until_listening(args: &[&str]) -> Result<String, Output> {
    let mut cmd = Command::new(LARDER);
    cmd.arg("serve").args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LARDER_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("starting larder serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if line.starts_with("larder listening on ") {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(line);
                }
                seen.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("larder serve {args:?} never listened: {seen:?}");
}

#[test]
fn serve_listens_on_a_host_name() {
    let work = Workdir::new("listen-host");
    let line = serve_until_listening(&[
        "--data-dir",
        s(&work.join("data")),
        "--listen",
        "localhost:0",
    ])
    .unwrap_or_else(|o| panic!("{}", o.describe()));
    assert!(
        line.starts_with("larder listening on http://127.0.0.1:")
            || line.starts_with("larder listening on http://[::1]:"),
        "{line}"
    );
    for (bad, says) in [
        ("no-such-host.invalid:8080", "cannot resolve"),
        ("localhost", "no port"),
        ("127.0.0.1:99999", "no port"),
    ] {
        let out = larder(
            &[
                "serve",
                "--data-dir",
                s(&work.join("data")),
                "--listen",
                bad,
            ],
            &[],
        );
        assert_code(&out, 1);
        assert!(
            out.stderr.contains("IP:PORT or HOST:PORT") && out.stderr.contains(says),
            "--listen {bad}: {}",
            out.describe()
        );
    }
}

#[test]
fn a_data_dir_that_cannot_be_one_is_named() {
    let work = Workdir::new("data-dir-errors");
    let file = work.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = larder(
        &["serve", "--data-dir", s(&file), "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_code(&out, 1);
    assert!(
        out.stderr.contains("is not a directory") && out.stderr.contains(s(&file)),
        "{}",
        out.describe()
    );
    let out = larder(
        &[
            "serve",
            "--data-dir",
            "/proc/larder-test/data",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_code(&out, 1);
    assert!(
        out.stderr.contains("cannot be created") && out.stderr.contains("/proc/larder-test/data"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_failed_first_start_leaves_no_unseen_admin_token() {
    let work = Workdir::new("busy-port");
    let data = work.join("data");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let out = larder(&["serve", "--data-dir", s(&data), "--listen", &port], &[]);
    assert_code(&out, 1);
    assert!(out.stderr.contains(&port), "{}", out.describe());
    assert!(
        !data.join("admin.token").exists(),
        "a start that never served wrote an admin token nobody saw"
    );
    drop(busy);

    // The next start mints and prints it; the one after says where it is.
    let mut server = Server::new_stopped(Launch::Flags);
    server.start_again();
    let token = server.token().to_string();
    assert!(
        server
            .stdout_lines()
            .iter()
            .any(|l| l == &format!("admin token: {token}")),
        "{:?}",
        server.stdout_lines()
    );
    server.restart();
    let where_line = server
        .wait_stdout(Duration::from_secs(5), |l| l.contains("admin.token"))
        .unwrap_or_else(|| panic!("no admin.token line: {:?}", server.stdout_lines()));
    assert!(
        where_line.contains(s(&server.data_dir().join("admin.token"))),
        "{where_line}"
    );
    assert!(
        !server.stdout_lines().iter().any(|l| l.contains(&token)),
        "a later start printed the token itself: {:?}",
        server.stdout_lines()
    );
}

#[test]
fn token_inspect_explains_the_admin_token_and_list_says_when_empty() {
    let mut server = Server::start();
    let admin = server.token().to_string();
    for out in [
        server.remote(&["token", "inspect", &admin]),
        server.remote(&["token", "inspect", "--json", &admin]),
    ] {
        let out = out.ok();
        assert!(
            out.stdout.contains("admin token") || out.stdout.contains("\"admin\": true"),
            "{}",
            out.describe()
        );
    }
    let impostor = "ab".repeat(32);
    let out = server.remote(&["token", "inspect", &impostor]);
    assert_code(&out, 1);
    assert!(
        out.stderr.contains("not a larder token"),
        "{}",
        out.describe()
    );

    let out = server.remote(&["token", "list"]).ok();
    assert!(
        out.stdout.is_empty() && out.stderr.contains("no tokens"),
        "{}",
        out.describe()
    );
    server.stop();
    let out = server.local(&["token", "inspect", &admin]).ok();
    assert!(out.stdout.contains("admin token"), "{}", out.describe());
    let out = server.local(&["token", "inspect", &impostor]);
    assert_code(&out, 1);
}

#[test]
fn login_checks_the_token_before_saving_it() {
    let server = Server::start();
    server.create_cache("team-dev", false);
    let home = Workdir::new("login-verify");
    let config = home.join("xdg/larder/config.toml");

    let out = run(&home, &["login", "work", server.url(), "not-a-token"], &[]);
    assert_code(&out, 1);
    assert!(
        out.stderr.contains("401") && out.stderr.contains("--no-verify"),
        "{}",
        out.describe()
    );
    assert!(!config.exists(), "a refused token was saved");

    let out = run(&home, &["login", "work", "http://127.0.0.1:1", "x"], &[]);
    assert_code(&out, 1);
    assert!(!config.exists(), "an unreachable server was saved");

    let out = run(&home, &["login", "work", server.url(), server.token()], &[]).ok();
    assert!(out.stderr.contains("admin token"), "{}", out.describe());
    assert!(config.exists());

    let scoped = crate::tokens::mint(
        &server,
        "dev",
        3600,
        serde_json::json!({"team-*": ["pull"]}),
    );
    let out = run(&home, &["login", "dev", server.url(), &scoped], &[]).ok();
    assert!(
        out.stderr.contains("1 cache(s): team-dev"),
        "{}",
        out.describe()
    );

    let out = run(
        &home,
        &["login", "later", "http://127.0.0.1:1", "x", "--no-verify"],
        &[],
    )
    .ok();
    assert!(out.stderr.contains("later"), "{}", out.describe());
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("later") && text.contains("dev"), "{text}");
}

#[test]
fn doctor_finds_what_is_missing_and_passes_once_it_is_fixed() {
    let server = Server::start();
    server.create_cache("demo", false);
    let home = Workdir::new("doctor");
    let nix_conf = home.join("etc-nix/nix.conf");
    let netrc = home.join("etc-nix/netrc");
    std::fs::create_dir_all(home.join("etc-nix")).unwrap();
    std::fs::write(&nix_conf, "substituters =\n").unwrap();
    let etc_nix = home.join("etc-nix");
    let none_conf = home.join("none.conf");
    let env = [
        ("NIX_CONF_DIR", s(&etc_nix)),
        ("NIX_USER_CONF_FILES", s(&none_conf)),
        ("LARDER_SERVER", server.url()),
        ("LARDER_TOKEN", server.token()),
    ];

    let out = run(&home, &["doctor", "demo"], &env);
    assert_code(&out, 1);
    assert!(
        out.stdout.contains("ok       http://")
            && out
                .stdout
                .contains("the token is accepted (the admin token)")
            && out.stdout.contains("cache demo exists (private)")
            && out.stdout.contains("does not list")
            && out.stdout.contains("does not trust")
            && out.stdout.contains("larder use demo --write"),
        "{}",
        out.describe()
    );

    run(
        &home,
        &[
            "use",
            "demo",
            "--write",
            "--nix-conf",
            s(&nix_conf),
            "--netrc",
            s(&netrc),
        ],
        &env,
    )
    .ok();
    let out = run(&home, &["doctor", "demo"], &env);
    assert!(
        out.success() && out.stdout.contains("no problems found"),
        "{}",
        out.describe()
    );

    let out = run(
        &home,
        &["doctor", "demo", "--token", "v4.local.wrong"],
        &env,
    );
    assert_code(&out, 1);
    assert!(
        out.stdout.contains("the token is refused"),
        "{}",
        out.describe()
    );
    let out = run(&home, &["doctor", "nope"], &env);
    assert_code(&out, 1);
    assert!(
        out.stdout.contains("larder cache create"),
        "{}",
        out.describe()
    );
    let out = run(&home, &["doctor", "--server", "http://127.0.0.1:1"], &env);
    assert_code(&out, 1);
    assert!(out.stdout.contains("does not answer"), "{}", out.describe());
}

#[test]
fn help_completions_and_man_page_cover_every_command() {
    let home = Workdir::new("help");
    let help = run(&home, &["--help"], &[]).ok().stdout;
    for cmd in [
        "serve",
        "cache",
        "token",
        "tls",
        "s3",
        "push",
        "use",
        "doctor",
        "completions",
        "man",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "--help lacks {cmd}: {help}"
        );
    }
    let serve = run(&home, &["serve", "--help"], &[]).ok().stdout;
    assert!(
        serve.contains("~/.local/share/larder") && serve.contains("--s3-listen"),
        "{serve}"
    );
    let stats = run(&home, &["stats", "--help"], &[]).ok().stdout;
    assert!(stats.contains("~/.local/share/larder"), "{stats}");

    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef larder"),
        ("fish", "complete -c larder"),
    ] {
        let out = run(&home, &["completions", shell], &[]).ok().stdout;
        assert!(
            out.contains(marker) && out.contains("watch-store") && out.contains("--data-dir"),
            "{shell} completions: {}",
            &out[..out.len().min(400)]
        );
    }
    // bash accepts the script.
    let script = home.join("larder.bash");
    std::fs::write(
        &script,
        run(&home, &["completions", "bash"], &[]).ok().stdout,
    )
    .unwrap();
    process::run(
        Command::new("bash").args(["-n", s(&script)]),
        Duration::from_secs(30),
    )
    .ok();

    let man = run(&home, &["man"], &[]).ok().stdout;
    for page in [
        ".TH larder ",
        ".TH larder-serve ",
        ".TH larder-cache-create ",
        ".TH larder-s3-key-allow ",
    ] {
        assert!(man.contains(page), "man lacks {page}");
    }
    assert!(man.contains("Exit codes"), "man lacks the exit codes");
    assert_code(&run(&home, &["completions", "tcsh"], &[]), 2);
}

#[test]
fn s3_keys_are_managed_over_the_api_too() {
    let server = Server::start();
    let created = crate::support::server::parse_json(
        &server.remote(&["s3", "key", "create", "ci", "--json"]).ok(),
    );
    let id = created["access_key_id"].as_str().unwrap().to_string();
    let secret = created["secret_access_key"].as_str().unwrap().to_string();
    server
        .remote(&[
            "s3", "key", "allow", "ci", "--bucket", "team-*", "--read", "--write",
        ])
        .ok();
    // What the API did is on the data dir, and the other way round.
    let local =
        crate::support::server::parse_json(&server.local(&["s3", "key", "list", "--json"]).ok());
    assert_eq!(local[0]["access_key_id"], id.as_str(), "{local}");
    assert_eq!(local[0]["grants"][0]["bucket"], "team-*", "{local}");
    assert_eq!(local[0]["grants"][0]["write"], true, "{local}");
    assert!(!local.to_string().contains(&secret));
    server
        .local(&[
            "s3",
            "key",
            "import",
            "GK0123456789abcdef01234567",
            &"c".repeat(64),
            "-n",
            "boot",
        ])
        .ok();
    let remote = server.remote(&["s3", "key", "list"]).ok();
    assert!(
        remote.stdout.contains("ci\t") && remote.stdout.contains("boot\t"),
        "{}",
        remote.describe()
    );
    let out = server
        .remote(&["s3", "key", "deny", "ci", "--bucket", "team-*", "--write"])
        .ok();
    assert!(out.stdout.contains("team-*: read"), "{}", out.describe());
    // Refusals say why, with a 4xx.
    let out = server.remote(&["s3", "key", "create", "ci"]);
    assert_code(&out, 1);
    assert!(
        out.stderr.contains("400") && out.stderr.contains("already exists"),
        "{}",
        out.describe()
    );
    let out = server.remote(&["s3", "key", "allow", "nobody", "--bucket", "*", "--read"]);
    assert!(
        out.stderr.contains("404") && out.stderr.contains("nobody"),
        "{}",
        out.describe()
    );
    let scoped = crate::tokens::mint(&server, "dev", 3600, serde_json::json!({"*": ["pull"]}));
    let out = larder(
        &[
            "s3",
            "key",
            "list",
            "--server",
            server.url(),
            "--token",
            &scoped,
        ],
        &[],
    );
    assert!(
        out.stderr.contains("403") && out.stderr.contains("admin"),
        "{}",
        out.describe()
    );
    server.remote(&["s3", "key", "delete", "ci"]).ok();
    server.remote(&["s3", "key", "delete", "boot"]).ok();
    let out = server.remote(&["s3", "key", "list"]).ok();
    assert!(
        out.stdout.is_empty() && out.stderr.contains("no S3 keys"),
        "{}",
        out.describe()
    );
}
