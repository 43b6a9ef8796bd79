//! `larder s3 key ...`: S3 access keys, over the management API (`--server URL
//! --token ADMIN`) or on the data dir's SQLite (fine while the server runs; it
//! reads keys per request, so changes apply at once), as every management command.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use larder::auth::Caller;
use larder::service::{S3GrantRequest, S3GrantView, S3KeyImport, S3KeySecret, S3KeyView};

use super::{svc, Session, Target};

#[derive(Subcommand, Debug)]
pub enum S3Command {
    /// Manage access keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// Rights named on the command line.
#[derive(Args, Debug, Clone, Copy)]
pub struct Rights {
    /// Read objects and list the bucket.
    #[arg(long)]
    read: bool,
    /// Put, copy and delete objects; multipart uploads.
    #[arg(long)]
    write: bool,
    /// Create and delete buckets (on `*`: any bucket, so the key may create buckets).
    #[arg(long)]
    owner: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Mint a key; its secret is printed once.
    Create {
        name: String,
        #[command(flatten)]
        target: Target,
        /// Print `{"access_key_id": ..., "secret_access_key": ...}`.
        #[arg(long)]
        json: bool,
    },
    /// Record a key with fixed credentials (idempotent).
    Import {
        access_key_id: String,
        secret_access_key: String,
        /// The key's name.
        #[arg(short = 'n', long = "name")]
        name: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// List keys and their grants (never their secrets).
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Delete a key.
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Grant rights on the buckets matching a pattern (`*` is any run of characters).
    Allow {
        name: String,
        /// Bucket name or pattern, e.g. `backups`, `team-*`, `*`.
        #[arg(long = "bucket")]
        bucket: String,
        #[command(flatten)]
        rights: Rights,
        #[command(flatten)]
        target: Target,
    },
    /// Take rights away (all of them on the pattern when none is named).
    Deny {
        name: String,
        #[arg(long = "bucket")]
        bucket: String,
        #[command(flatten)]
        rights: Rights,
        #[command(flatten)]
        target: Target,
    },
}

fn rights_text(g: &S3GrantView) -> String {
    let mut r = Vec::new();
    if g.read {
        r.push("read");
    }
    if g.write {
        r.push("write");
    }
    if g.owner {
        r.push("owner");
    }
    r.join(",")
}

fn print_secret(k: &S3KeySecret, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "access_key_id": k.access_key_id,
                "secret_access_key": k.secret_access_key,
            }))?
        );
    } else {
        println!("Key name: {}", k.name);
        println!("Access key id: {}", k.access_key_id);
        println!("Secret access key: {}", k.secret_access_key);
        println!("(the secret is not shown again)");
    }
    Ok(())
}

/// The API path of a key.
fn key_path(name: &str) -> String {
    format!(
        "/_api/v1/s3/keys/{}",
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
    )
}

fn grant(bucket: String, r: Rights) -> S3GrantRequest {
    S3GrantRequest {
        bucket,
        read: r.read,
        write: r.write,
        owner: r.owner,
    }
}

pub fn run(cmd: S3Command) -> anyhow::Result<ExitCode> {
    let S3Command::Key(cmd) = cmd;
    let admin = Caller::Admin;
    match cmd {
        KeyCommand::Create { name, target, json } => {
            let k: S3KeySecret = match target.session(false)? {
                Session::Remote(c) => c.call("POST", &key_path(&name), None)?,
                Session::Local(l) => svc(l.s3_key_create(&admin, &name))?,
            };
            print_secret(&k, json)?;
        }
        KeyCommand::Import {
            access_key_id,
            secret_access_key,
            name,
            target,
            json,
        } => {
            let req = S3KeyImport {
                access_key_id,
                secret_access_key,
            };
            let k: S3KeySecret = match target.session(false)? {
                Session::Remote(c) => c.call(
                    "POST",
                    &format!("{}/import", key_path(&name)),
                    Some(serde_json::to_value(&req)?),
                )?,
                Session::Local(l) => svc(l.s3_key_import(&admin, &name, &req))?,
            };
            if json {
                print_secret(&k, true)?;
            } else {
                println!("imported key {} ({})", k.name, k.access_key_id);
            }
        }
        KeyCommand::List { target, json } => {
            let all: Vec<S3KeyView> = match target.session(false)? {
                Session::Remote(c) => c.call("GET", "/_api/v1/s3/keys", None)?,
                Session::Local(l) => svc(l.s3_key_list(&admin))?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                eprintln!("no S3 keys (mint one with `larder s3 key create NAME`)");
            } else {
                for k in &all {
                    let grants: Vec<String> = k
                        .grants
                        .iter()
                        .map(|g| format!("{}:{}", g.bucket, rights_text(g)))
                        .collect();
                    println!("{}\t{}\t{}", k.name, k.access_key_id, grants.join(" "));
                }
            }
        }
        KeyCommand::Delete { name, target } => {
            match target.session(false)? {
                Session::Remote(c) => {
                    let _: serde_json::Value = c.call("DELETE", &key_path(&name), None)?;
                }
                Session::Local(l) => svc(l.s3_key_delete(&admin, &name))?,
            }
            println!("deleted key {name}");
        }
        KeyCommand::Allow {
            name,
            bucket,
            rights,
            target,
        } => {
            let req = grant(bucket, rights);
            let g: S3GrantView = match target.session(false)? {
                Session::Remote(c) => c.call(
                    "POST",
                    &format!("{}/allow", key_path(&name)),
                    Some(serde_json::to_value(&req)?),
                )?,
                Session::Local(l) => svc(l.s3_key_allow(&admin, &name, &req))?,
            };
            println!("key {name} on {}: {}", g.bucket, rights_text(&g));
        }
        KeyCommand::Deny {
            name,
            bucket,
            rights,
            target,
        } => {
            let req = grant(bucket.clone(), rights);
            let g: Option<S3GrantView> = match target.session(false)? {
                Session::Remote(c) => c.call(
                    "POST",
                    &format!("{}/deny", key_path(&name)),
                    Some(serde_json::to_value(&req)?),
                )?,
                Session::Local(l) => svc(l.s3_key_deny(&admin, &name, &req))?,
            };
            match g {
                Some(g) => println!("key {name} on {}: {}", g.bucket, rights_text(&g)),
                None => println!("key {name} on {bucket}: no rights"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
