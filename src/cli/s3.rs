//! `larder s3 key ...`: S3 access keys, managed on the data dir's SQLite (fine while
//! the server runs; it reads keys per request, so changes apply at once).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use larder::config::{Config, FileConfig};
use larder::meta::{Meta, S3Grant, S3Key};
use larder::s3::keys;

#[derive(Subcommand, Debug)]
pub enum S3Command {
    /// Manage access keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// Where the keys live.
#[derive(Args, Debug, Clone)]
pub struct DataDir {
    /// Data dir [default: $XDG_DATA_HOME/larder].
    #[arg(long, env = "LARDER_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Config file (for its data_dir).
    #[arg(long, env = "LARDER_CONFIG", global = true)]
    config: Option<PathBuf>,
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
        dir: DataDir,
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
        dir: DataDir,
        #[arg(long)]
        json: bool,
    },
    /// List keys and their grants (never their secrets).
    List {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        json: bool,
    },
    /// Delete a key.
    Delete {
        name: String,
        #[command(flatten)]
        dir: DataDir,
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
        dir: DataDir,
    },
    /// Take rights away (all of them on the pattern when none is named).
    Deny {
        name: String,
        #[arg(long = "bucket")]
        bucket: String,
        #[command(flatten)]
        rights: Rights,
        #[command(flatten)]
        dir: DataDir,
    },
}

impl DataDir {
    fn open(&self) -> anyhow::Result<Meta> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let config = Config::resolve(file, self.data_dir.clone(), None)?;
        if !config.data_dir.join("larder.db").exists() {
            bail!(
                "no larder data in {} (start `larder serve` once, or pass --data-dir)",
                config.data_dir.display()
            );
        }
        Meta::open(&config.data_dir)
            .with_context(|| format!("opening the metadata in {}", config.data_dir.display()))
    }
}

fn rights_text(g: &S3Grant) -> String {
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

fn grant_json(g: &S3Grant) -> serde_json::Value {
    serde_json::json!({
        "bucket": g.pattern,
        "read": g.read,
        "write": g.write,
        "owner": g.owner,
    })
}

fn print_secret(k: &S3Key, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "access_key_id": k.id,
                "secret_access_key": k.secret,
            }))?
        );
    } else {
        println!("Key name: {}", k.name);
        println!("Access key id: {}", k.id);
        println!("Secret access key: {}", k.secret);
        println!("(the secret is not shown again)");
    }
    Ok(())
}

pub fn run(cmd: S3Command) -> anyhow::Result<ExitCode> {
    let S3Command::Key(cmd) = cmd;
    match cmd {
        KeyCommand::Create { name, dir, json } => {
            let meta = dir.open()?;
            let k = keys::create(&meta, &name)?;
            print_secret(&k, json)?;
        }
        KeyCommand::Import {
            access_key_id,
            secret_access_key,
            name,
            dir,
            json,
        } => {
            let meta = dir.open()?;
            let k = keys::import(&meta, &access_key_id, &secret_access_key, &name)?;
            if json {
                print_secret(&k, true)?;
            } else {
                println!("imported key {} ({})", k.name, k.id);
            }
        }
        KeyCommand::List { dir, json } => {
            let meta = dir.open()?;
            let all = meta.s3_keys()?;
            if json {
                let v: Vec<serde_json::Value> = all
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "name": k.name,
                            "access_key_id": k.id,
                            "created_at": k.created_at,
                            "grants": k.grants.iter().map(grant_json).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for k in &all {
                    let grants: Vec<String> = k
                        .grants
                        .iter()
                        .map(|g| format!("{}:{}", g.pattern, rights_text(g)))
                        .collect();
                    println!("{}\t{}\t{}", k.name, k.id, grants.join(" "));
                }
            }
        }
        KeyCommand::Delete { name, dir } => {
            let meta = dir.open()?;
            keys::delete(&meta, &name)?;
            println!("deleted key {name}");
        }
        KeyCommand::Allow {
            name,
            bucket,
            rights,
            dir,
        } => {
            let meta = dir.open()?;
            let g = keys::allow(
                &meta,
                &name,
                &bucket,
                rights.read,
                rights.write,
                rights.owner,
            )?;
            println!("key {name} on {}: {}", g.pattern, rights_text(&g));
        }
        KeyCommand::Deny {
            name,
            bucket,
            rights,
            dir,
        } => {
            let meta = dir.open()?;
            match keys::deny(
                &meta,
                &name,
                &bucket,
                rights.read,
                rights.write,
                rights.owner,
            )? {
                Some(g) => println!("key {name} on {}: {}", g.pattern, rights_text(&g)),
                None => println!("key {name} on {bucket}: no rights"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
