//! The GC benchmark's data (`bench/gc.sh`, results in docs/benchmarks.md).
//!
//!   cargo run --release --example gc_synth -- fill DIR CHUNKS PER_NAR DELETE_PERCENT
//!       A data dir with CHUNKS tiny chunks in NARs of PER_NAR chunks each, one
//!       store path per NAR in cache `bench` (public), then DELETE_PERCENT of the
//!       paths deleted. Writes DIR/paths.txt: the path hashes still served.
//!   cargo run --release --example gc_synth -- churn DIR ROUNDS
//!       Steady-state churn with real chunking: each round pushes 8 NARs of 1 MiB
//!       of random bytes, deletes the oldest 8 once 48 are stored, and runs a GC
//!       pass; prints stored ÷ live bytes after each pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use larder::auth::Caller;
use larder::config::{Config, FileConfig};
use larder::meta::StagedNar;
use larder::nix::base32;
use larder::service::gc::GcOptions;
use larder::service::{CacheCreate, KeypairSpec, Larder};
use larder::store::Manifest;

fn open(dir: &PathBuf) -> Larder {
    std::fs::create_dir_all(dir).unwrap();
    let config = Config::resolve(FileConfig::default(), Some(dir.clone()), None).unwrap();
    Larder::open(config, "http://127.0.0.1:0".into(), None).unwrap()
}

fn cache(l: &Larder) -> i64 {
    let req = CacheCreate {
        keypair: KeypairSpec::Generate,
        is_public: true,
        store_dir: "/nix/store".into(),
        priority: 41,
        upstream_cache_key_names: Vec::new(),
        upstreams: Vec::new(),
    };
    l.create_cache(&Caller::Admin, "bench", &req).unwrap();
    l.meta.cache_by_name("bench").unwrap().unwrap().id
}

/// A store path hash (32 nix32 characters) made from `i`.
fn path_hash(i: u64) -> String {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b[8..16].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    base32::encode(&b)
}

fn commit(l: &Larder, cache_id: i64, i: u64, m: &Manifest, nar_size: u64) -> String {
    let mut nar_hash = [0u8; 32];
    nar_hash[..8].copy_from_slice(&i.to_le_bytes());
    nar_hash[8] = 0xa5;
    let staged = StagedNar {
        nar_hash,
        nar_size,
        file_size: m.frames_len(),
        chunk_count: m.chunks.len() as u64,
        manifest: m.encode(),
    };
    let h = path_hash(i);
    let store_path = format!("/nix/store/{h}-synthetic-{i}");
    let narinfo = format!(
        "StorePath: {store_path}\nURL: nar/{h}.nar.zst\nCompression: zstd\nNarHash: sha256:{}\nNarSize: {nar_size}\nReferences: \n",
        base32::encode(&nar_hash)
    );
    l.meta
        .commit_object(cache_id, &staged, None, &h, &store_path, &narinfo)
        .unwrap();
    h
}

fn fill(dir: PathBuf, chunks: u64, per_nar: u64, delete_pct: u64) {
    let l = open(&dir);
    let cache_id = cache(&l);
    let store = l.store().unwrap();
    let nars = chunks / per_nar;
    let started = Instant::now();
    let mut hashes = Vec::new();
    for i in 0..nars {
        let data: Vec<Vec<u8>> = (0..per_nar)
            .map(|j| format!("synthetic chunk {i} {j} ").repeat(3).into_bytes())
            .collect();
        let raw: u64 = data.iter().map(|d| d.len() as u64).sum();
        let outcome = store.ingest_chunks(data).unwrap();
        hashes.push(commit(&l, cache_id, i, &outcome.manifest, raw));
    }
    eprintln!(
        "stored {chunks} chunks in {nars} NARs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let doomed: Vec<(i64, String)> = hashes
        .iter()
        .enumerate()
        .filter(|(i, _)| (*i as u64 * 100 / nars.max(1)) % 100 < delete_pct)
        .map(|(_, h)| (cache_id, h.clone()))
        .collect();
    let gone: std::collections::HashSet<&str> = doomed.iter().map(|(_, h)| h.as_str()).collect();
    l.meta.remove_objects(&doomed).unwrap();
    let mut f = std::fs::File::create(dir.join("paths.txt")).unwrap();
    for h in hashes.iter().filter(|h| !gone.contains(h.as_str())) {
        writeln!(f, "{h}").unwrap();
    }
    eprintln!("deleted {} of {nars} paths", doomed.len());
}

fn churn(dir: PathBuf, rounds: u64) {
    let l = open(&dir);
    let cache_id = cache(&l);
    let store = l.store().unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut live: std::collections::VecDeque<String> = Default::default();
    let mut worst: f64 = 0.0;
    let mut moved = 0u64;
    let mut compact_ms = 0u64;
    let mut next = 0u64;
    for round in 0..rounds {
        for _ in 0..8 {
            let data: Vec<u8> = (0..1 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            let outcome = store.ingest(&data[..]).unwrap();
            live.push_back(commit(
                &l,
                cache_id,
                next,
                &outcome.manifest,
                data.len() as u64,
            ));
            next += 1;
        }
        if live.len() > 40 {
            let doomed: Vec<(i64, String)> = (0..8)
                .filter_map(|_| live.pop_front())
                .map(|h| (cache_id, h))
                .collect();
            l.meta.remove_objects(&doomed).unwrap();
        }
        let r = l.gc(&Caller::Admin, GcOptions::default()).unwrap();
        let ratio = r.stored_bytes_after as f64 / r.live_bytes.max(1) as f64;
        moved += r.bytes_moved;
        compact_ms += r.compact_ms;
        if round >= 5 {
            worst = worst.max(ratio);
        }
        println!(
            "round {round}: stored {} live {} ratio {ratio:.3} moved {} in {} ms",
            r.stored_bytes_after, r.live_bytes, r.bytes_moved, r.compact_ms
        );
    }
    println!(
        "steady state (rounds 5+): worst stored/live {worst:.3}; compaction moved {moved} bytes in {compact_ms} ms ({:.0} MB/s)",
        moved as f64 / 1e6 / (compact_ms.max(1) as f64 / 1e3)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    match args.first().map(String::as_str) {
        Some("fill") if args.len() == 5 => fill(PathBuf::from(&args[1]), num(2), num(3), num(4)),
        Some("churn") if args.len() == 3 => churn(PathBuf::from(&args[1]), num(2)),
        _ => {
            eprintln!("usage: gc_synth fill DIR CHUNKS PER_NAR DELETE_PERCENT | churn DIR ROUNDS");
            std::process::exit(2);
        }
    }
}
