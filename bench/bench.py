#!/usr/bin/env python3
"""larder benchmark harness: larder against nginx and `nix copy --to file://`.

Builds its own corpus, starts its own servers on 127.0.0.1, measures, prints a
table of medians and ratios against larder's performance goals, and cleans up.
Run it through bench/run.sh, which installs the tools and builds larder.

Measurements (each with several repetitions; medians reported):
  download   one ~1 GiB NAR (raw upload of system libraries and binaries) fetched
             with 1 and 16 concurrent curl streams, larder vs nginx serving the
             very bytes larder serves as a static file (sendfile on)
  narinfo    wrk, 2 threads, 64 connections, GETs spread over every narinfo of a
             closure of several hundred paths, larder vs nginx serving copies
  ingest     raw 1 GiB NAR PUT + narinfo PUT (durable) into an empty server, and
             the same NAR pushed again into a second cache (all chunks known)
  nix-copy   `nix copy` of that closure to larder vs to file://, zstd both
  rss        larder's peak RSS while ingesting a ~4 GiB NAR with 16 concurrent
             downloads of the 1 GiB NAR running the whole time
"""

import argparse
import base64
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
MiB = 1 << 20
GiB = 1 << 30
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"

GOALS = {
    "download_1": ("NAR download, 1 stream, larder/nginx", ">=", 0.8),
    "download_16": ("NAR download, 16 streams, larder/nginx", ">=", 0.8),
    "narinfo": ("narinfo lookups (wrk -t2 -c64), larder/nginx", ">=", 0.6),
    "ingest": ("raw NAR ingest, durable, MB/s", ">=", 200.0),
    "nix_copy": ("nix copy throughput, larder/file://", ">=", 0.7),
    "rss": ("peak RSS, 4 GiB ingest + 16 downloads, MiB", "<=", 128.0),
}

NIX_CONF = """\
build-users-group =
sandbox = false
sandbox-paths = /bin /usr /lib /lib64
experimental-features = nix-command
substituters =
trusted-public-keys =
require-sigs = true
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
connect-timeout = 5
download-attempts = 2
stalled-download-timeout = 30
"""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, timeout=600, check=True, **kw):
    """Run a command, capturing output; raise with its stderr on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} exited {p.returncode}: "
            f"{(p.stderr or p.stdout).strip()[-2000:]}"
        )
    return p


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(xs):
    return statistics.median(xs) if xs else None


def nix32(digest):
    """Nix's base-32 spelling of a digest."""
    chars = []
    for i in range((len(digest) * 8 + 4) // 5 - 1, -1, -1):
        j, k = divmod(i * 5, 8)
        c = digest[j] >> k
        if j + 1 < len(digest):
            c |= digest[j + 1] << (8 - k)
        chars.append(NIX32[c & 0x1F])
    return "".join(chars)


def tiny_nar(text):
    """A NAR of one small regular file, with its nix32 sha256."""

    def s(b):
        return len(b).to_bytes(8, "little") + b + b"\0" * (-len(b) % 8)

    nar = b"".join(s(x) for x in (b"nix-archive-1", b"(", b"type", b"regular", b"contents", text, b")"))
    return nar, nix32(hashlib.sha256(nar).digest())


def random_store_hash(rng):
    return "".join(rng.choice(NIX32) for _ in range(32))


def busy_cores(seconds=2.0):
    """CPU cores busy system-wide over `seconds` (from /proc/stat); taken between
    phases, when nothing of the benchmark runs, it is other load on the machine."""

    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v[:8]) - idle, sum(v[:8])

    b0, t0 = snap()
    time.sleep(seconds)
    b1, t1 = snap()
    return (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1)


def proc_status(pid, field):
    """A kB field of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def proc_cpu_seconds(pids):
    """User + system CPU seconds of the given processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / tick


class Sampler:
    """Samples a process's per-thread CPU time and written bytes every `period` s,
    to tell a CPU-bound phase (one thread near 100 %, or every core busy) from
    waiting (on fsync, on the client)."""

    def __init__(self, pid, period=0.05):
        self.pid = pid
        self.period = period
        self.samples = []  # (t, {tid: (comm, cpu seconds)}, write_bytes)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.tick = os.sysconf("SC_CLK_TCK")

    def snapshot(self):
        threads = {}
        try:
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                try:
                    with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                        raw = f.read()
                    comm = raw[raw.index("(") + 1: raw.rindex(")")]
                    fields = raw.rsplit(")", 1)[1].split()
                    threads[tid] = (comm, (int(fields[11]) + int(fields[12])) / self.tick)
                except (FileNotFoundError, ProcessLookupError, ValueError):
                    pass
            wb = 0
            with open(f"/proc/{self.pid}/io") as f:
                for line in f:
                    if line.startswith("write_bytes:"):
                        wb = int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return None
        return (time.perf_counter(), threads, wb)

    def loop(self):
        while not self.done.is_set():
            s = self.snapshot()
            if s:
                self.samples.append(s)
            time.sleep(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(5)
        s = self.snapshot()
        if s:
            self.samples.append(s)

    def summary(self, buckets=10):
        """CPU per thread (top ones, as a fraction of wall time) and the process's
        CPU use (cores) over `buckets` equal slices of the run. A thread that exits
        keeps the CPU time it was last seen with."""
        if len(self.samples) < 2:
            return {}
        seen = {}  # tid -> (comm, first cpu, last cpu)
        totals = []  # (t, cumulative cpu of every thread seen so far)
        for t, threads, _ in self.samples:
            for tid, (comm, cpu) in threads.items():
                first = seen[tid][1] if tid in seen else (cpu if not totals else 0.0)
                seen[tid] = (comm, first, cpu)
            totals.append((t, sum(last - first for _, first, last in seen.values())))
        t0, w0 = self.samples[0][0], self.samples[0][2]
        t1, w1 = self.samples[-1][0], self.samples[-1][2]
        wall = t1 - t0
        per = sorted(
            ((last - first, comm, tid) for tid, (comm, first, last) in seen.items() if last - first > 0.005),
            reverse=True,
        )
        timeline = []
        for b in range(buckets):
            lo, hi = t0 + wall * b / buckets, t0 + wall * (b + 1) / buckets
            inside = [x for x in totals if lo <= x[0] <= hi]
            if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
                timeline.append(None)
                continue
            timeline.append(round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 2))
        return {
            "wall_seconds": round(wall, 2),
            "cpu_seconds": round(totals[-1][1], 2),
            "written_MB": round((w1 - w0) / 1e6, 1),
            "threads": [f"{comm}[{tid}] {used:.2f}s ({used / wall:.0%})" for used, comm, tid in per[:8]],
            "cores_by_tenth_of_run": timeline,
        }


def http(method, url, body=None, headers=None, timeout=120):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Larder:
    """One larder server with its own data directory, removed on stop."""

    def __init__(self, binary, work, name, env=None):
        self.data = os.path.join(work, f"larder-{name}")
        shutil.rmtree(self.data, ignore_errors=True)
        os.makedirs(self.data)
        self.out_path = os.path.join(work, f"larder-{name}.out")
        self.err_path = os.path.join(work, f"larder-{name}.log")
        self.binary = binary
        self.out = open(self.out_path, "w")
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", self.data, "--listen", "127.0.0.1:0"],
            stdout=self.out,
            stderr=self.err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        self.pid = self.proc.pid
        deadline = time.time() + 30
        self.url = None
        while time.time() < deadline:
            with open(self.out_path) as f:
                m = re.search(r"larder listening on (http://\S+)", f.read())
            if m:
                self.url = m.group(1).rstrip("/")
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not self.url:
            self.stop()
            raise RuntimeError(f"larder did not start; see {self.err_path}")
        with open(os.path.join(self.data, "admin.token")) as f:
            self.token = f.read().strip()

    def cli(self, *args):
        return run([self.binary, *args, "--server", self.url, "--token", self.token], timeout=60)

    def create_cache(self, name, public=True):
        self.cli("cache", "create", name, *(["--public"] if public else []))
        info = json.loads(self.cli("cache", "info", name, "--json").stdout)
        return info["public_key"]

    def stats(self):
        return json.loads(self.cli("stats", "--json").stdout)

    def auth(self):
        return {"Authorization": f"Bearer {self.token}"}

    def cpu(self):
        return proc_cpu_seconds([self.pid])

    def stop(self, keep_data=False):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()
        self.err.close()
        if not keep_data:
            shutil.rmtree(self.data, ignore_errors=True)


class Nginx:
    """Debian nginx-light serving a directory as static files."""

    def __init__(self, work):
        self.dir = os.path.join(work, "nginx")
        self.root = os.path.join(self.dir, "www")
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = os.path.join(self.dir, "nginx.conf")
        user = "user root;\n" if os.geteuid() == 0 else ""
        with open(conf, "w") as f:
            f.write(
                f"""daemon off;
{user}worker_processes auto;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {self.dir}/tmp;
    types {{
        text/x-nix-narinfo narinfo;
        text/x-nix-cache-info nix-cache-info;
        application/x-nix-nar nar zst;
    }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
    }}
}}
"""
            )
        self.proc = subprocess.Popen(
            ["nginx", "-p", self.dir + "/", "-c", conf, "-e", f"{self.dir}/error.log"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "stderr.log"), "w"),
        )
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx did not start; see {self.dir}/error.log")
                time.sleep(0.05)
        else:
            raise RuntimeError("nginx did not start listening")

    def pids(self):
        out = run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], check=False).stdout
        return [self.proc.pid] + [int(x) for x in out.split()]

    def cpu(self):
        return proc_cpu_seconds(self.pids())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def narinfo_text(store_path, url, nar_hash, nar_size, compression="none", refs=()):
    return (
        f"StorePath: {store_path}\nURL: {url}\nCompression: {compression}\n"
        f"NarHash: sha256:{nar_hash}\nNarSize: {nar_size}\n"
        f"References: {' '.join(refs)}\n"
    )


def put_nar(server, cache, nar_path, file_name):
    """PUT a raw NAR with curl (Content-Length, Expect: 100-continue, as Nix does)."""
    p = run(
        [
            "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
            "-H", f"Authorization: Bearer {server.token}",
            "-H", "Content-Type: application/x-nix-nar",
            "-T", nar_path, f"{server.url}/{cache}/nar/{file_name}",
        ],
        timeout=1800,
        check=False,
    )
    code = p.stdout.strip()
    if p.returncode != 0 or not code.startswith("2"):
        raise RuntimeError(f"NAR PUT answered {code or '-'} (curl rc {p.returncode}): {p.stderr.strip()}")


def put_narinfo(server, cache, store_hash, text):
    status, body = http(
        "PUT",
        f"{server.url}/{cache}/{store_hash}.narinfo",
        text.encode(),
        {**server.auth(), "Content-Type": "text/x-nix-narinfo"},
        timeout=600,
    )
    if status // 100 != 2:
        raise RuntimeError(f"narinfo PUT answered {status}: {body[:500]!r}")


def upload(server, cache, nar, store_hash, name, file_name):
    """Push one raw NAR the way the harness measures ingest: (total, nar PUT) seconds."""
    t0 = time.perf_counter()
    put_nar(server, cache, nar["path"], file_name)
    t1 = time.perf_counter()
    put_narinfo(
        server,
        cache,
        store_hash,
        narinfo_text(f"/nix/store/{store_hash}-{name}", f"nar/{file_name}", nar["hash"], nar["size"]),
    )
    t2 = time.perf_counter()
    return t2 - t0, t1 - t0


def served_nar_url(server, cache, store_hash):
    status, body = http("GET", f"{server.url}/{cache}/{store_hash}.narinfo")
    if status != 200:
        raise RuntimeError(f"GET narinfo answered {status}")
    fields = dict(
        line.split(": ", 1) for line in body.decode().splitlines() if ": " in line
    )
    return fields["URL"], fields


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.work = os.path.abspath(args.work)
        self.binary = os.path.abspath(args.larder)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.results_dir = os.path.join(self.work, "results", stamp)
        os.makedirs(self.results_dir, exist_ok=True)
        self.rng = random.Random(args.seed)
        self.salt = f"bench-{stamp}-{os.getpid()}"
        self.results = {"mode": "quick" if self.quick else "full", "failures": {}}
        self.servers = []
        # Sizes and repetitions.
        q = self.quick
        self.corpus_bytes = (256 if q else 1024) * MiB
        self.big_parts = 4  # the RSS NAR is this many transformed copies of the corpus NAR
        self.ingest_reps = 2 if q else 3
        self.download_runs = 3 if q else 5
        self.closure_files = 120 if q else 400
        self.copy_reps = 2 if q else 3
        self.wrk_seconds = 5 if q else 10
        self.wrk_reps = 2 if q else 3
        self.nar = None
        self.closure = None
        self.server_env = dict(kv.split("=", 1) for kv in args.server_env)
        self.results["server_env"] = self.server_env

    # ---------------------------------------------------------------- plumbing

    def path(self, *p):
        return os.path.join(self.work, *p)

    def start_larder(self, name):
        s = Larder(self.binary, self.work, name, self.server_env)
        self.servers.append(s)
        return s

    def stop(self, server, keep_data=False):
        server.stop(keep_data)
        if os.path.exists(server.err_path):
            shutil.move(server.err_path, os.path.join(self.results_dir, os.path.basename(server.err_path)))
        if server in self.servers:
            self.servers.remove(server)

    def cleanup(self):
        for s in list(self.servers):
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001 - best effort at exit
                log(f"stopping {s}: {e}")
        self.servers = []

    def quiet(self, name):
        """Record other load on the machine before a phase; with --wait-idle, wait
        (bounded) for it to drop."""
        deadline = time.time() + self.args.wait_idle * 60
        while True:
            other = busy_cores()
            if other <= 0.25 or time.time() >= deadline:
                break
            log(f"machine busy ({other:.2f} cores used by other processes); waiting")
            time.sleep(20)
        self.results.setdefault("background_cores", {})[name] = round(other, 2)
        if other > 0.25:
            log(f"WARNING: {other:.2f} cores busy with other work before {name}; results are disturbed")

    def phase(self, name, fn):
        log(f"== {name}")
        if name not in ("corpus", "closure"):
            self.quiet(name)
        t0 = time.time()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a failed phase is recorded, not fatal
            msg = f"{type(e).__name__}: {e}"
            log(f"!! {name} FAILED: {msg}")
            self.results["failures"][name] = msg
        finally:
            self.results.setdefault("phase_seconds", {})[name] = round(time.time() - t0, 1)
            self.save()

    def save(self):
        with open(os.path.join(self.results_dir, "results.json"), "w") as f:
            json.dump(self.results, f, indent=2)

    # ------------------------------------------------------------------ corpus

    def build_corpus(self):
        """A directory of system libraries and binaries, dumped to one NAR."""
        corpus = self.path("corpus")
        shutil.rmtree(corpus, ignore_errors=True)
        os.makedirs(corpus)
        sources = [
            "/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/libexec", "/usr/sbin",
            "/usr/lib", "/usr/share", "/usr/local", "/opt",
        ]
        seen = set()
        total = 0
        files = 0
        for src in sources:
            if total >= self.corpus_bytes or not os.path.isdir(src):
                continue
            for dirpath, dirnames, filenames in os.walk(src):
                dirnames.sort()
                real = os.path.realpath(dirpath)
                if real in seen:
                    dirnames[:] = []
                    continue
                seen.add(real)
                for fn in sorted(filenames):
                    if total >= self.corpus_bytes:
                        break
                    p = os.path.join(dirpath, fn)
                    if os.path.islink(p) or not os.path.isfile(p):
                        continue
                    dest = os.path.join(corpus, src.strip("/").replace("/", "_"), os.path.relpath(p, src))
                    try:
                        os.makedirs(os.path.dirname(dest), exist_ok=True)
                        shutil.copyfile(p, dest)
                        os.chmod(dest, 0o755 if os.access(p, os.X_OK) else 0o644)
                    except OSError:
                        continue
                    total += os.path.getsize(dest)
                    files += 1
                if total >= self.corpus_bytes:
                    break
        nar_path = self.path("big.nar")
        with open(nar_path, "wb") as out:
            subprocess.run(["nix-store", "--dump", corpus], stdout=out, check=True, timeout=600)
        shutil.rmtree(corpus, ignore_errors=True)
        nar_hash = run(["nix-hash", "--type", "sha256", "--flat", "--base32", nar_path]).stdout.strip()
        size = os.path.getsize(nar_path)
        zst = run(["sh", "-c", f"zstd -3 -T0 -c {nar_path} | wc -c"], timeout=600).stdout.strip()
        self.nar = {"path": nar_path, "hash": nar_hash, "size": size}
        self.results["corpus"] = {
            "files": files,
            "nar_bytes": size,
            "nar_hash": f"sha256:{nar_hash}",
            "zstd3_bytes": int(zst),
            "sources": [s for s in sources if os.path.isdir(s)],
        }
        log(f"corpus NAR: {size / MiB:.0f} MiB, {files} files, zstd -3 ratio {size / int(zst):.2f}")

    def build_big_nar(self):
        """A NAR of `big_parts` files, each the corpus NAR with its bytes rotated by
        k+1: as compressible as the corpus, but sharing no chunk with it."""
        path = self.path("huge.nar")

        def s(b):
            return len(b).to_bytes(8, "little") + b + b"\0" * (-len(b) % 8)

        size = self.nar["size"]
        with open(path, "wb") as out:
            out.write(s(b"nix-archive-1") + s(b"(") + s(b"type") + s(b"directory"))
            for k in range(self.big_parts):
                table = bytes((i + k + 1) % 256 for i in range(256))
                out.write(s(b"entry") + s(b"(") + s(b"name") + s(f"part{k}".encode()) + s(b"node"))
                out.write(s(b"(") + s(b"type") + s(b"regular") + s(b"contents"))
                out.write(size.to_bytes(8, "little"))
                with open(self.nar["path"], "rb") as src:
                    while True:
                        block = src.read(16 * MiB)
                        if not block:
                            break
                        out.write(block.translate(table))
                out.write(b"\0" * (-size % 8))
                out.write(s(b")") + s(b")"))
            out.write(s(b")"))
        nar_hash = run(["nix-hash", "--type", "sha256", "--flat", "--base32", path]).stdout.strip()
        return {"path": path, "hash": nar_hash, "size": os.path.getsize(path)}

    def build_closure(self):
        """Several hundred small store paths in a private store."""
        d = "/usr/lib/x86_64-linux-gnu"
        names = []
        for fn in sorted(os.listdir(d)):
            p = os.path.join(d, fn)
            if (
                re.fullmatch(r"[A-Za-z0-9._+-]+", fn)
                and not os.path.islink(p)
                and os.path.isfile(p)
                and 2048 <= os.path.getsize(p) <= 4 * MiB
            ):
                names.append(p)
        if len(names) < self.closure_files:
            for extra in ("/usr/bin", "/usr/lib/x86_64-linux-gnu/perl-base", "/usr/share/perl5"):
                if os.path.isdir(extra):
                    for fn in sorted(os.listdir(extra)):
                        p = os.path.join(extra, fn)
                        if re.fullmatch(r"[A-Za-z0-9._+-]+", fn) and not os.path.islink(p) and os.path.isfile(p):
                            names.append(p)
        # Spread the pick over the sorted list rather than taking a prefix.
        step = max(1, len(names) // self.closure_files)
        files = names[::step][: self.closure_files]
        files_json = self.path("closure-files.json")
        with open(files_json, "w") as f:
            json.dump(files, f)
        store = self.path("client-store")
        shutil.rmtree(store, ignore_errors=True)
        env = self.nix_env("build")
        top = run(
            [
                "nix-build", os.path.join(BENCH, "closure.nix"), "--store", store,
                "--argstr", "filesJson", files_json, "--argstr", "salt", self.salt,
                "--no-out-link", "--max-jobs", "4", "--quiet",
            ],
            timeout=1200,
            env=env,
        ).stdout.strip().splitlines()[-1]
        paths = run(["nix-store", "--store", store, "-qR", top], env=env).stdout.split()
        nar_bytes = 0
        info = json.loads(run(["nix", "path-info", "--store", store, "--json", "-r", top], env=env).stdout)
        for entry in info:
            nar_bytes += entry.get("narSize", 0)
        self.closure = {"store": store, "top": top, "paths": paths, "nar_bytes": nar_bytes}
        self.results["closure"] = {"paths": len(paths), "nar_bytes": nar_bytes, "files": len(files)}
        log(f"closure: {len(paths)} paths, {nar_bytes / MiB:.0f} MiB of NAR")

    def nix_env(self, tag):
        xdg = self.path("xdg", tag)
        shutil.rmtree(xdg, ignore_errors=True)
        os.makedirs(xdg)
        env = dict(os.environ)
        env.pop("NIX_REMOTE", None)
        env["NIX_CONFIG"] = NIX_CONF
        env["XDG_CACHE_HOME"] = xdg
        return env

    def fill_narinfos(self, server, cache):
        """One tiny NAR + narinfo per closure path hash; returns the wrk path list file."""
        listing = self.path(f"narinfo-{server.pid}.txt")
        with open(listing, "w") as lst:
            for i, p in enumerate(self.closure["paths"]):
                hh = os.path.basename(p)[:32]
                nar, nar_hash = tiny_nar(f"path {i} {self.salt}\n".encode())
                status, body = http("PUT", f"{server.url}/{cache}/nar/p{i}.nar", nar,
                                    {**server.auth(), "Content-Type": "application/x-nix-nar"})
                if status // 100 != 2:
                    raise RuntimeError(f"NAR PUT answered {status}: {body[:300]!r}")
                put_narinfo(server, cache, hh, narinfo_text(f"/nix/store/{hh}-p{i}", f"nar/p{i}.nar",
                                                            nar_hash, len(nar)))
                lst.write(f"/{cache}/{hh}.narinfo\n")
        return listing

    # ------------------------------------------------------------- measurements

    def measure_ingest(self):
        """Raw NAR PUT + narinfo PUT into an empty server; then the same NAR again."""
        fresh, fresh_nar_put, dedup, cpu_fresh, stats = [], [], [], [], None
        timelines, dedup_timelines = [], []
        for rep in range(self.ingest_reps):
            server = self.start_larder(f"ingest{rep}")
            try:
                server.create_cache("bench")
                server.create_cache("again")
                h = random_store_hash(self.rng)
                c0 = server.cpu()
                with Sampler(server.pid) as sampler:
                    total, nar_put = upload(server, "bench", self.nar, h, "corpus", "corpus.nar")
                cpu_fresh.append(server.cpu() - c0)
                timelines.append(sampler.summary())
                fresh.append(total)
                fresh_nar_put.append(nar_put)
                with Sampler(server.pid) as sampler:
                    total2, _ = upload(server, "again", self.nar, h, "corpus", "corpus.nar")
                dedup_timelines.append(sampler.summary())
                dedup.append(total2)
                stats = server.stats()
                log(
                    f"ingest rep {rep}: {self.nar['size'] / total / 1e6:.0f} MB/s "
                    f"({total:.2f} s, NAR PUT {nar_put:.2f} s, larder CPU {cpu_fresh[-1]:.1f} s); "
                    f"dedup re-upload {total2:.2f} s"
                )
            finally:
                self.stop(server)
        size = self.nar["size"]
        self.results["ingest"] = {
            "nar_bytes": size,
            "seconds": fresh,
            "nar_put_seconds": fresh_nar_put,
            "larder_cpu_seconds": cpu_fresh,
            "median_seconds": median(fresh),
            "median_MBps": size / median(fresh) / 1e6,
            "median_cpu_cores": median(cpu_fresh) / median(fresh),
            "dedup_seconds": dedup,
            "dedup_median_seconds": median(dedup),
            "dedup_median_MBps": size / median(dedup) / 1e6,
            "store_stats": stats,
            "timelines": timelines,
            "dedup_timelines": dedup_timelines,
        }

    def hyperfine(self, name, command, runs, pids_fn):
        out = os.path.join(self.results_dir, f"hyperfine-{name}.json")
        c0 = proc_cpu_seconds(pids_fn())
        run(
            ["hyperfine", "--style", "none", "--warmup", "1", "--runs", str(runs),
             "--export-json", out, "-n", name, command],
            timeout=1800,
        )
        cpu = proc_cpu_seconds(pids_fn()) - c0
        with open(out) as f:
            r = json.load(f)["results"][0]
        return r["median"], r["times"], cpu / (runs + 1)

    def measure_download(self):
        """1 and 16 concurrent downloads of the corpus NAR, larder vs nginx."""
        server = self.start_larder("download")
        try:
            server.create_cache("bench")
            h = random_store_hash(self.rng)
            upload(server, "bench", self.nar, h, "corpus", "corpus.nar")
            url, fields = served_nar_url(server, "bench", h)
            larder_url = f"{server.url}/bench/{url}"
            nginx = Nginx(self.work)
            try:
                dest = os.path.join(nginx.root, "bench", url)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                run(["curl", "-sS", "--fail", "-o", dest, larder_url], timeout=600)
                file_size = os.path.getsize(dest)
                # The served frames must decompress to the very NAR uploaded.
                got = run(
                    ["sh", "-c", f"zstd -dc {dest} | nix-hash --type sha256 --flat --base32 /dev/stdin"],
                    timeout=600,
                ).stdout.strip()
                if got != self.nar["hash"]:
                    raise RuntimeError(f"served NAR decompresses to sha256:{got}, expected {self.nar['hash']}")
                nginx_url = f"{nginx.url}/bench/{url}"
                res = {"file_bytes": file_size, "compression_ratio": self.nar["size"] / file_size,
                       "larder_url": url, "narinfo_FileSize": fields.get("FileSize")}
                for streams in (1, 16):
                    cmd = (
                        f"curl -sS --fail -o /dev/null {{}}" if streams == 1
                        else f"{os.path.join(BENCH, 'fetch-many.sh')} {streams} {{}}"
                    )
                    runs = self.download_runs if streams == 1 else max(3, self.download_runs - 2)
                    row = {}
                    for who, u, pids in (
                        ("larder", larder_url, lambda: [server.pid]),
                        ("nginx", nginx_url, nginx.pids),
                    ):
                        med, times, cpu = self.hyperfine(f"download{streams}-{who}", cmd.format(u), runs, pids)
                        mbps = file_size * streams / med / 1e6
                        row[who] = {
                            "median_seconds": med, "times": times, "MBps": mbps,
                            "server_cpu_seconds_per_run": cpu,
                            "server_cpu_seconds_per_GB": cpu / (file_size * streams / 1e9),
                        }
                        log(f"download x{streams} {who}: {mbps:.0f} MB/s (median {med:.3f} s, server CPU {cpu:.2f} s/run)")
                    row["ratio"] = row["larder"]["MBps"] / row["nginx"]["MBps"]
                    res[f"streams_{streams}"] = row
                self.results["download"] = res
            finally:
                nginx.stop()
                shutil.rmtree(nginx.root, ignore_errors=True)
        finally:
            self.stop(server)

    def measure_nix_copy(self):
        """`nix copy` of the closure to a fresh larder and to a fresh file:// dir."""
        c = self.closure
        larder_t, file_t, cpu, timelines = [], [], [], []
        last = None
        for rep in range(self.copy_reps):
            # file:// first, then larder, alternating per repetition.
            fdir = self.path(f"file-cache-{rep}")
            shutil.rmtree(fdir, ignore_errors=True)
            env = self.nix_env(f"copy-file-{rep}")
            t0 = time.perf_counter()
            run(["nix", "copy", "--from", c["store"], "--to", f"file://{fdir}?compression=zstd", c["top"]],
                timeout=1200, env=env)
            file_t.append(time.perf_counter() - t0)
            n_file = len([f for f in os.listdir(fdir) if f.endswith(".narinfo")])
            shutil.rmtree(fdir, ignore_errors=True)

            server = self.start_larder(f"copy{rep}")
            keep = rep == self.copy_reps - 1
            try:
                key = server.create_cache("bench")
                netrc = self.path(f"netrc-{rep}")
                with open(netrc, "w") as f:
                    f.write(f"machine 127.0.0.1 password {server.token}\n")
                env = self.nix_env(f"copy-larder-{rep}")
                c0 = server.cpu()
                t0 = time.perf_counter()
                with Sampler(server.pid) as sampler:
                    run(["nix", "copy", "--from", c["store"], "--to", f"{server.url}/bench?compression=zstd",
                         "--option", "netrc-file", netrc, c["top"]], timeout=1200, env=env)
                larder_t.append(time.perf_counter() - t0)
                timelines.append(sampler.summary())
                cpu.append(server.cpu() - c0)
                n_larder = server.stats().get("store_paths")
                log(f"nix copy rep {rep}: file:// {file_t[-1]:.2f} s ({n_file} narinfos), "
                    f"larder {larder_t[-1]:.2f} s ({n_larder} paths, larder CPU {cpu[-1]:.1f} s)")
                if n_file != len(c["paths"]) or n_larder != len(c["paths"]):
                    raise RuntimeError(f"expected {len(c['paths'])} paths, file:// has {n_file}, larder {n_larder}")
                if keep:
                    last = (server, key)
            finally:
                if not keep:
                    self.stop(server)
        self.results["nix_copy"] = {
            "paths": len(c["paths"]),
            "nar_bytes": c["nar_bytes"],
            "larder_seconds": larder_t,
            "file_seconds": file_t,
            "larder_cpu_seconds": cpu,
            "larder_median": median(larder_t),
            "file_median": median(file_t),
            "ratio": median(file_t) / median(larder_t),
            "timelines": timelines,
        }
        return last

    def measure_narinfo(self, server):
        """wrk against every narinfo of the closure, larder vs nginx copies."""
        hashes = [os.path.basename(p)[:32] for p in self.closure["paths"]]
        nginx = Nginx(self.work)
        try:
            listing = self.path("narinfo-paths.txt")
            os.makedirs(os.path.join(nginx.root, "bench"), exist_ok=True)
            with open(listing, "w") as lst:
                for h in hashes:
                    status, body = http("GET", f"{server.url}/bench/{h}.narinfo")
                    if status != 200:
                        raise RuntimeError(f"GET {h}.narinfo answered {status}")
                    with open(os.path.join(nginx.root, "bench", f"{h}.narinfo"), "wb") as f:
                        f.write(body)
                    lst.write(f"/bench/{h}.narinfo\n")
            rows = {"larder": [], "nginx": []}
            cpu = {"larder": [], "nginx": []}
            errors = {"larder": 0, "nginx": 0}
            lat = {"larder": [], "nginx": []}
            for rep in range(self.wrk_reps):
                for who, base, pids in (("larder", server.url, lambda: [server.pid]), ("nginx", nginx.url, nginx.pids)):
                    c0 = proc_cpu_seconds(pids())
                    p = run(
                        ["wrk", "-t2", "-c64", f"-d{self.wrk_seconds}s", "--latency",
                         "-s", os.path.join(BENCH, "narinfo.lua"), base, "--", listing],
                        timeout=self.wrk_seconds + 60,
                    )
                    cpu[who].append((proc_cpu_seconds(pids()) - c0) / self.wrk_seconds)
                    with open(os.path.join(self.results_dir, f"wrk-{who}-{rep}.txt"), "w") as f:
                        f.write(p.stdout)
                    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", p.stdout).group(1))
                    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", p.stdout)
                    errors[who] += int(m.group(1)) if m else 0
                    m = re.search(r"Socket errors:.*", p.stdout)
                    if m:
                        errors[who] += sum(int(x) for x in re.findall(r"\d+", m.group(0)))
                    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", p.stdout)
                    if m:
                        lat[who].append(float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)])
                    rows[who].append(rps)
                    log(f"narinfo wrk rep {rep} {who}: {rps:.0f} req/s, server CPU {cpu[who][-1]:.2f} cores")
            self.results["narinfo"] = {
                "paths": len(hashes),
                "wrk": f"wrk -t2 -c64 -d{self.wrk_seconds}s",
                **{f"{w}_rps": rows[w] for w in rows},
                **{f"{w}_median_rps": median(rows[w]) for w in rows},
                **{f"{w}_server_cores": median(cpu[w]) for w in cpu},
                **{f"{w}_p99_ms": median(lat[w]) for w in lat},
                "errors": errors,
                "ratio": median(rows["larder"]) / median(rows["nginx"]),
            }
            if any(errors.values()):
                raise RuntimeError(f"wrk saw failed requests: {errors}")
        finally:
            nginx.stop()
            shutil.rmtree(nginx.root, ignore_errors=True)

    def measure_rss(self):
        """Peak RSS while a ~4 GiB NAR is ingested and 16 streams download the corpus NAR."""
        big = self.build_big_nar()
        log(f"RSS NAR: {big['size'] / GiB:.2f} GiB")
        server = self.start_larder("rss")
        stop_file = self.path("rss.stop")
        loops = []
        try:
            server.create_cache("bench")
            h = random_store_hash(self.rng)
            upload(server, "bench", self.nar, h, "corpus", "corpus.nar")
            url, _ = served_nar_url(server, "bench", h)
            hwm_before = proc_status(server.pid, "VmHWM")
            idle_rss = proc_status(server.pid, "VmRSS")
            # Reset the peak so it covers only what follows.
            with open(f"/proc/{server.pid}/clear_refs", "w") as f:
                f.write("5")
            samples = []
            done = threading.Event()

            def sample():
                while not done.is_set():
                    try:
                        samples.append(proc_status(server.pid, "VmRSS"))
                    except (FileNotFoundError, ProcessLookupError):
                        return
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            if os.path.exists(stop_file):
                os.remove(stop_file)
            count_dir = self.path("rss-counts")
            shutil.rmtree(count_dir, ignore_errors=True)
            os.makedirs(count_dir)
            for i in range(16):
                script = (
                    f'while [ ! -e "{stop_file}" ]; do '
                    f'if curl -sS --fail -o /dev/null "{server.url}/bench/{url}"; '
                    f'then echo ok >> "{count_dir}/{i}"; else echo fail >> "{count_dir}/{i}"; sleep 0.2; fi; done'
                )
                loops.append(subprocess.Popen(["bash", "-c", script], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            # 16 downloads alone first, then the ingest on top of them.
            time.sleep(3.0 if self.quick else 6.0)
            hwm_downloads = proc_status(server.pid, "VmHWM")
            with open(f"/proc/{server.pid}/clear_refs", "w") as f:
                f.write("5")
            h2 = random_store_hash(self.rng)
            c0 = server.cpu()
            with Sampler(server.pid, period=0.2) as tl:
                total, nar_put = upload(server, "bench", big, h2, "huge", "huge.nar")
            cpu = server.cpu() - c0
            hwm_ingest = proc_status(server.pid, "VmHWM")
            hwm = max(hwm_ingest, hwm_downloads)
            done.set()
            with open(stop_file, "w"):
                pass
            for p in loops:
                try:
                    p.wait(120)
                except subprocess.TimeoutExpired:
                    p.kill()
            loops = []
            sampler.join(5)
            ok = fail = 0
            for fn in os.listdir(count_dir):
                with open(os.path.join(count_dir, fn)) as f:
                    words = f.read().split()
                ok += words.count("ok")
                fail += words.count("fail")
            self.results["rss"] = {
                "big_nar_bytes": big["size"],
                "peak_rss_MiB": hwm / MiB,
                "peak_rss_16_downloads_alone_MiB": hwm_downloads / MiB,
                "peak_rss_ingest_plus_downloads_MiB": hwm_ingest / MiB,
                "max_sampled_rss_MiB": max(samples) / MiB if samples else None,
                "idle_rss_before_MiB": idle_rss / MiB,
                "peak_rss_during_1GiB_ingest_MiB": hwm_before / MiB,
                "ingest_seconds": total,
                "ingest_MBps_under_load": big["size"] / total / 1e6,
                "larder_cpu_seconds": cpu,
                "downloads_completed": ok,
                "downloads_failed": fail,
                "timeline": tl.summary(),
            }
            log(f"RSS: peak {hwm / MiB:.1f} MiB (4 GiB ingest {total:.1f} s under load, "
                f"{ok} downloads done, {fail} failed)")
            if fail:
                raise RuntimeError(f"{fail} downloads failed during the RSS run")
        finally:
            with open(stop_file, "w"):
                pass
            for p in loops:
                p.kill()
            self.stop(server)
            try:
                os.remove(big["path"])
            except OSError:
                pass

    def profile(self):
        """perf profiles (cpu-clock) of larder during ingest, 16-stream download and wrk."""
        server = self.start_larder("profile")
        try:
            server.create_cache("bench")
            h = random_store_hash(self.rng)
            out = {}

            def record(name, action):
                data = os.path.join(self.results_dir, f"perf-{name}.data")
                perf = subprocess.Popen(
                    ["perf", "record", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384",
                     "-p", str(server.pid), "-o", data],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                action()
                perf.send_signal(signal.SIGINT)
                perf.wait(120)
                flat = run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol",
                            "-g", "none", "--percent-limit", "0.5"], timeout=900, check=False).stdout
                tree = run(["perf", "report", "-i", data, "--stdio", "--children", "--sort", "symbol",
                            "-g", "none", "--percent-limit", "0.5"], timeout=900, check=False).stdout
                with open(os.path.join(self.results_dir, f"perf-{name}.txt"), "w") as f:
                    f.write(flat + "\n\n# inclusive (children)\n" + tree)

                def rows(text, keep=lambda ln: True, n=25):
                    out_rows = []
                    for ln in text.splitlines():
                        if ln.strip() and not ln.startswith("#") and keep(ln):
                            ln = re.sub(r"(\s+-)+\s*$", "", ln)
                            out_rows.append(re.sub(r"\s{2,}", "  ", ln).strip()[:160])
                    return out_rows[:n]

                out[name] = {
                    "self": rows(flat),
                    "inclusive_larder": rows(tree, lambda ln: "larder::" in ln and "{{closure}}" not in ln),
                }
                os.remove(data)

            record("ingest", lambda: upload(server, "bench", self.nar, h, "corpus", "corpus.nar"))
            url, _ = served_nar_url(server, "bench", h)
            record("download16", lambda: run([os.path.join(BENCH, "fetch-many.sh"), "16",
                                               f"{server.url}/bench/{url}"], timeout=600))
            if self.closure:
                listing = self.fill_narinfos(server, "bench")
                record("narinfo", lambda: run(["wrk", "-t2", "-c64", "-d5s", "-s",
                                               os.path.join(BENCH, "narinfo.lua"), server.url, "--", listing],
                                              timeout=60))
            self.results["profile"] = out
        finally:
            self.stop(server)

    # -------------------------------------------------------------- reporting

    def machine(self):
        cpu = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = proc_meminfo_total()
        fs = run(["findmnt", "-no", "FSTYPE,SOURCE", "-T", self.work], check=False).stdout.strip()
        self.results["machine"] = {
            "nproc": os.cpu_count(),
            "cpu": cpu,
            "mem_GiB": round(mem / GiB, 1),
            "fs": fs,
            "kernel": os.uname().release,
            "larder": run([self.binary, "--version"], check=False).stdout.strip(),
            "source": self.args.rev_label or "unknown (--larder given)",
            "nginx": run(["nginx", "-v"], check=False).stderr.strip(),
            "nix": run(["nix", "--version"], check=False).stdout.strip(),
            "wrk": (run(["wrk", "-v"], check=False).stdout.strip().splitlines() or ["?"])[0],
            "curl": run(["curl", "--version"], check=False).stdout.splitlines()[0],
        }

    def report(self):
        r = self.results
        rows = []

        def add(key, value, shown):
            label, op, goal = GOALS[key]
            if value is None:
                rows.append((label, "FAILED", f"{op} {goal:g}", "not measured"))
                return
            ok = value >= goal if op == ">=" else value <= goal
            rows.append((label, shown, f"{op} {goal:g}", ("met" if ok else "MISSED") + f" ({value / goal:.2f}x goal)"))

        d = r.get("download", {})
        for s in (1, 16):
            row = d.get(f"streams_{s}")
            add(f"download_{s}", row and row["ratio"],
                row and f"{row['ratio']:.2f}x ({row['larder']['MBps']:.0f} vs {row['nginx']['MBps']:.0f} MB/s)")
        n = r.get("narinfo")
        add("narinfo", n and n["ratio"],
            n and f"{n['ratio']:.2f}x ({n['larder_median_rps']:.0f} vs {n['nginx_median_rps']:.0f} req/s)")
        i = r.get("ingest")
        add("ingest", i and i["median_MBps"],
            i and f"{i['median_MBps']:.0f} MB/s ({i['median_seconds']:.2f} s; dedup re-upload {i['dedup_median_seconds']:.2f} s)")
        c = r.get("nix_copy")
        add("nix_copy", c and c["ratio"],
            c and f"{c['ratio']:.2f}x ({c['larder_median']:.2f} s vs {c['file_median']:.2f} s)")
        m = r.get("rss")
        add("rss", m and m["peak_rss_MiB"], m and f"{m['peak_rss_MiB']:.1f} MiB")
        r["summary"] = [dict(zip(("measure", "median", "goal", "verdict"), row)) for row in rows]
        self.save()
        widths = [max(len(str(x[k])) for x in rows + [("measure", "median", "goal", "verdict")]) for k in range(4)]
        lines = []
        for row in [("measure", "median", "goal", "verdict")] + rows:
            lines.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
        text = "\n".join(lines)
        with open(os.path.join(self.results_dir, "summary.txt"), "w") as f:
            f.write(text + "\n")
        print("\n" + text)
        busy = {k: v for k, v in r.get("background_cores", {}).items() if v > 0.25}
        if busy:
            print(f"\nWARNING: other processes kept the CPU busy before these phases (cores): {busy}")
        if r["failures"]:
            print("\nFailures:")
            for k, v in r["failures"].items():
                print(f"  {k}: {v}")
        print(f"\nFull results: {self.results_dir}/results.json")

    def wanted(self, name):
        return not self.args.only or name in self.args.only.split(",")

    def main(self):
        self.machine()
        self.phase("corpus", self.build_corpus)
        if not self.nar:
            self.report()
            return 1
        if any(self.wanted(p) for p in ("nix_copy", "narinfo", "profile")):
            self.phase("closure", self.build_closure)
        if self.wanted("ingest"):
            self.phase("ingest", self.measure_ingest)
        if self.wanted("download"):
            self.phase("download", self.measure_download)
        last = None
        if self.closure and self.wanted("nix_copy"):

            def copy():
                nonlocal last
                last = self.measure_nix_copy()

            self.phase("nix_copy", copy)
        if last and self.wanted("narinfo"):
            server, _ = last
            self.phase("narinfo", lambda: self.measure_narinfo(server))
        elif self.closure and self.wanted("narinfo"):
            # No server from `nix copy`: fill a cache with narinfos by hand.
            def fallback():
                server = self.start_larder("narinfo")
                try:
                    server.create_cache("bench")
                    self.fill_narinfos(server, "bench")
                    self.measure_narinfo(server)
                finally:
                    self.stop(server)

            self.phase("narinfo", fallback)
        if last:
            self.stop(last[0])
        if self.wanted("rss"):
            self.phase("rss", self.measure_rss)
        if self.args.profile:
            self.phase("profile", self.profile)
        self.report()
        return 0


def proc_meminfo_total():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller corpus, fewer repetitions (~5 min)")
    ap.add_argument("--profile", action="store_true", help="also record perf profiles of larder")
    ap.add_argument("--larder", default=os.path.join(REPO, "target", "release", "larder"))
    ap.add_argument("--work", default=os.path.join(BENCH, ".work", "run"))
    ap.add_argument("--keep", action="store_true", help="keep the corpus and client store afterwards")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for larder (experiments, e.g. MALLOC_ARENA_MAX=2)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="MIN",
                    help="before each phase, wait up to MIN minutes for other CPU load to stop")
    ap.add_argument("--rev-label", help="which larder source was built (recorded in the results)")
    ap.add_argument("--only", help="comma-separated phases: ingest,download,nix_copy,narinfo,rss")
    args = ap.parse_args()
    os.environ.pop("NIX_REMOTE", None)
    b = Bench(args)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return b.main()
    finally:
        b.cleanup()
        if not args.keep:
            for name in ("big.nar", "huge.nar", "corpus", "client-store", "xdg", "nginx", "rss-counts"):
                p = b.path(name)
                if os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                elif os.path.exists(p):
                    os.remove(p)
            for name in os.listdir(b.work):
                if name.startswith(("larder-", "file-cache-", "netrc-")) or name.endswith(".txt"):
                    p = b.path(name)
                    if os.path.isdir(p):
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        os.remove(p)
            for name in ("closure-files.json", "rss.stop"):
                if os.path.exists(b.path(name)):
                    os.remove(b.path(name))


if __name__ == "__main__":
    sys.exit(main())
