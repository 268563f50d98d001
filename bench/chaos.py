"""A chaos run: faults of every kind on a seeded schedule, and what the output survived.

A local Ray cluster (`cluster/local-cluster.sh`: a head with no CPUs and WORKERS worker
nodes of one CPU each) transcribes FILES real speech files from S3 (moto's S3 server on
loopback) into S3. Every S3 request of the driver and of every actor goes through a
fault-injecting proxy in this process. Two runs of the same files on the same cluster:

  clean  no fault, for the wall time and the transcripts every file must equal;
  chaos  the same command while, on a schedule drawn from SEED over MINUTES:
         - an actor in the middle of a shard is killed (SIGKILL);
         - a worker node's raylet is killed (SIGKILL): the node is lost without notice;
         - a worker node gets a preemption notice (SIGTERM to its raylet, as a spot VM's
           shutdown sends: Ray drains it);
         - a worker node leaves (`local-cluster.sh remove`) and nodes join (`add`), so
           that between 2 and WORKERS + 1 nodes run;
         - storage faults, in windows of 15-45 s, on a share of the requests: HTTP 503
           SlowDown (throttling), HTTP 500, a request stalled past the client's read
           timeout, a connection reset before the request is forwarded, an upload cut off
           halfway, listings slowed by 3-8 s, answers lost after the store acted, and
           writes that land past the lease's time to live;
         - once, the driver is killed (SIGKILL) and the same command is run again.

At the end: `bulkscribe verify` must be clean (every planned unit exactly once, no
duplicate segment, every part equal to its marker), and every file's transcript must
equal the clean run's. The figures printed: faults injected by kind, shards run more than
once and their units (transcribed twice, one result discarded), wall time against the
clean run, and files lost, duplicated or changed (the target is zero of each). Exit 1
unless all three are zero.

Two storage faults come after the store acted or would act: an answer lost after success
(the request is forwarded, then the connection dropped: the client retries a request that
already happened), and a write that lands late (the connection drops and the client
retries; the proxy holds its copy of the request past the lease's time to live,
LEASE_TTL_S, which the runs use, then sends it on: as a PUT stalled in a partition lands
after a takeover).
The folder is checked once every held write has landed.

Requests are faulted at random within each window (threads interleave), so which request
gets which fault differs between runs; the schedule itself, the corpus and the run
options are the seed's.

    python bench/chaos.py [--files 2000] [--minutes 20] [--workers 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import http.server
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLUSTER = ROOT / "cluster" / "local-cluster.sh"
CLIPS = [f"librispeech/{p.name}" for p in sorted((ROOT / "tests/data/speech/librispeech").iterdir())] + [
    "misc/LDC93S1.wav", "misc/jfk.flac"]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "chaos", "AWS_SECRET_ACCESS_KEY": "chaos", "AWS_DEFAULT_REGION": "us-east-1"}
READ_TIMEOUT_S = 10  # the clients' read timeout; a stalled request is held longer
# Shards of half a minute of audio, as on preemptible machines: a kill costs little work,
# and a shard is rarely hit three times (which stops a run: it is then resumed).
RUN_OPTIONS = ["--beam-size", "1", "--shard-minutes", "0.5", "--no-progress"]

# The lease's time to live in the runs (BULKSCRIBE_LEASE_TTL_S): a write held longer lands
# after the lease it was sent under could have been taken over.
LEASE_TTL_S = 30
ANSWER_LOST = "answer lost after success"
LANDS_LATE = "write landing past the lease TTL"
STORAGE_FAULTS = ("throttled (503 SlowDown)", "server error (500)", "stalled past the read timeout",
                  "connection reset", "upload cut off", "listing slowed", ANSWER_LOST, LANDS_LATE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the storage fault proxy ----------------------------------------------------------


class FaultProxy(http.server.ThreadingHTTPServer):
    """HTTP proxy to the S3 server that, while `share` > 0, faults that share of requests."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up (as the faults make them do) is no news

    def __init__(self, upstream_port: int, seed: int):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.share = 0.0
        self.counts: collections.Counter = collections.Counter()
        self.requests = 0
        # Writes held to land late, not landed yet; the folder is checked once none is left.
        self.in_flight = 0
        self.landed = threading.Condition(self.lock)

    def wait_for_late_writes(self) -> None:
        with self.landed:
            self.landed.wait_for(lambda: self.in_flight == 0)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def draw(self, method: str, path: str, has_body: bool) -> str | None:
        with self.lock:
            self.requests += 1
            listing = method == "GET" and ("list-type=" in path or "prefix=" in path)
            if self.share <= 0 or self.rng.random() >= self.share:
                return None
            kinds = [k for k in STORAGE_FAULTS
                     if (k != "upload cut off" or has_body) and (k != "listing slowed" or listing)
                     and (k != LANDS_LATE or method in ("PUT", "POST", "DELETE"))]
            fault = self.rng.choice(kinds)
            self.counts[fault] += 1
            return fault


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _error(self, status: int, code: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected by bench/chaos.py</Message></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        fault = self.server.draw(self.command, self.path, length > 0)
        if fault == "upload cut off":
            self.rfile.read(length // 2)
            return self._drop()
        body = self._body()
        if fault == "connection reset":
            return self._drop()
        if fault == "stalled past the read timeout":
            time.sleep(READ_TIMEOUT_S + 2)
            return self._drop()
        if fault == "throttled (503 SlowDown)":
            return self._error(503, "SlowDown")
        if fault == "server error (500)":
            return self._error(500, "InternalError")
        if fault == "listing slowed":
            time.sleep(random.uniform(3, 8))
        if fault == LANDS_LATE:
            # The connection drops and the client retries; this copy of the request is sent
            # on once the lease it was made under could have been taken over.
            with self.server.landed:
                self.server.in_flight += 1
            self._drop()
            try:
                time.sleep(LEASE_TTL_S + 10)
                self._forward(body)
            finally:
                with self.server.landed:
                    self.server.in_flight -= 1
                    self.server.landed.notify_all()
            return
        answer, data = self._forward(body)
        if fault == ANSWER_LOST:  # the store acted; its answer never reaches the client
            return self._drop()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "keep-alive", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", answer.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _forward(self, body: bytes):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "connection")}
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            return answer, answer.read()
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any


# -- the cluster ------------------------------------------------------------------------


class Cluster:
    """`cluster/local-cluster.sh` on ports of its own, its state in `folder`."""

    def __init__(self, folder: Path, env: dict[str, str], port_base: int):
        # Below the nodes' port ranges (PORT_BASE + 1000*N onwards): a port the system
        # hands out may lie inside one (the head's GCS took a worker port of its own node).
        head_port, dashboard_port = port_base - 100, port_base - 98  # the head's client server takes head + 1
        self.env = {**os.environ, **env, "BULKSCRIBE_CLUSTER_DIR": str(folder), "RAY_HEAD_PORT": str(head_port),
                    "RAY_DASHBOARD_PORT": str(dashboard_port), "RAY_NODE_PORT_BASE": str(port_base)}
        self.address = f"127.0.0.1:{head_port}"
        self.folder = folder

    def __call__(self, *args: str) -> str:
        done = subprocess.run([str(CLUSTER), *args], env=self.env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"local-cluster.sh {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def workers(self) -> list[str]:
        alive = []
        for pid_file in sorted(self.folder.glob("worker-*.pid")):
            try:
                os.kill(int(pid_file.read_text()), 0)
                alive.append(pid_file.stem)
            except (OSError, ValueError):
                pass
        return alive

    def clear(self, worker: str) -> None:
        """What is left of a lost node goes (its `ray start` and pid file), as its VM would."""
        try:
            self("remove", worker)
        except RuntimeError:
            (self.folder / f"{worker}.pid").unlink(missing_ok=True)

    def raylet(self, worker: str) -> int | None:
        """The pid of `worker`'s raylet (in the node's process group)."""
        group = int((self.folder / f"{worker}.pid").read_text())
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if os.getpgid(int(proc.name)) == group and b"/raylet" in (proc / "cmdline").read_bytes()[:300]:
                        return int(proc.name)
                except OSError:
                    continue
        return None


def busy_actor_pids(cluster: Cluster) -> list[int]:
    """This cluster's actors in the middle of a shard (Ray titles them
    `ray::ShardWorker.process`): descendants of its nodes, never another Ray's."""
    nodes = set()
    for pid_file in cluster.folder.glob("*.pid"):
        try:
            nodes.add(int(pid_file.read_text()))
        except ValueError:
            pass
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"ShardWorker.process" in (proc / "cmdline").read_bytes() and _descends(int(proc.name), nodes):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _descends(pid: int, ancestors: set[int]) -> bool:
    while pid > 1:
        if pid in ancestors:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


# -- the runs ---------------------------------------------------------------------------


def start_run(cluster: Cluster, proxy: FaultProxy, out: str, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline.cli", "run", "s3://audio/in", "--output", out,
               "--address", cluster.address, "--storage-option", f"endpoint_url={proxy.endpoint}",
               "--storage-option", "config_kwargs=" + json.dumps({"read_timeout": READ_TIMEOUT_S, "connect_timeout": 5}),
               *RUN_OPTIONS]
    return subprocess.Popen(command, stdout=open(log, "a"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**cluster.env, "PYTHONPATH": str(ROOT), "BULKSCRIBE_LEASE_TTL_S": str(LEASE_TTL_S)},
                            start_new_session=True)


def chaos(cluster: Cluster, proxy: FaultProxy, out: str, log: Path, seed: int, minutes: float,
          workers: int, direct: str) -> tuple[collections.Counter, float, int]:
    """The chaos run; returns the faults injected by kind, its wall time and its last exit code.
    The driver is killed once, at its drawn time once a shard is committed, or as soon as
    two are (a fast machine may finish a short run before the drawn time)."""
    import s3fs

    store = s3fs.S3FileSystem(endpoint_url=direct)

    def committed() -> int:
        store.invalidate_cache()
        try:
            return len(store.ls(out.removeprefix("s3://") + "/_commits"))
        except FileNotFoundError:
            return 0

    rng = random.Random(seed)
    span = minutes * 60
    events = sorted((rng.uniform(10, span), kind) for kind in
                    ["actor killed"] * max(3, int(minutes * 1.5)) + ["storage faults"] * max(3, int(minutes))
                    + ["raylet killed", "preemption notice", "node removed", "node added"] * max(1, int(minutes / 4)))
    driver_kill_at = rng.uniform(0.25, 0.5) * span
    faults: collections.Counter = collections.Counter()
    resumed: collections.Counter = collections.Counter()
    started = time.monotonic()
    run = start_run(cluster, proxy, out, log)
    window_ends = 0.0
    lost: list[str] = []  # nodes whose raylet was killed or drained, not yet cleared away
    while True:
        code = run.poll()
        now = time.monotonic() - started
        if code is not None:
            if code == -signal.SIGKILL and faults["driver killed"] == 1 and not resumed["after the driver kill"]:
                resumed["after the driver kill"] += 1
                run = start_run(cluster, proxy, out, log)
                continue
            if code == 1 and resumed["after exit 1"] < 3:
                # The run stopped itself (a shard whose actor died three times): what is
                # committed stays, and the same command goes on, as a scheduler would.
                resumed["after exit 1"] += 1
                run = start_run(cluster, proxy, out, log)
                continue
            break
        if proxy.share and now > window_ends:
            proxy.share = 0.0
        if driver_kill_at and busy_actor_pids(cluster) and (now >= driver_kill_at or committed() >= 2):
            if committed():
                driver_kill_at = 0
                os.killpg(run.pid, signal.SIGKILL)
                faults["driver killed"] += 1
                continue
        if events and now >= events[0][0]:
            _, kind = events.pop(0)
            alive = cluster.workers()
            if kind == "actor killed":
                pids = busy_actor_pids(cluster)
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    faults[kind] += 1
            elif kind == "storage faults":
                proxy.share = rng.uniform(0.1, 0.3)
                window_ends = now + rng.uniform(15, 45)
                faults["storage fault windows"] += 1
            elif kind in ("raylet killed", "preemption notice", "node removed") and len(alive) - len(lost) >= 2:
                worker = rng.choice([w for w in alive if w not in lost])
                if kind == "node removed":
                    cluster("remove", worker)
                else:
                    raylet = cluster.raylet(worker)
                    if raylet is None:
                        continue
                    os.kill(raylet, signal.SIGKILL if kind == "raylet killed" else signal.SIGTERM)
                    lost.append(worker)
                faults[kind] += 1
                # A node lost is replaced after a while, as an autoscaler would.
                events.append((now + rng.uniform(10, 30), "node added"))
                events.sort()
            elif kind == "node added" and len(alive) - len(lost) <= workers:
                dead = {p.stem for p in cluster.folder.glob("worker-*.pid")} - set(alive)  # failed to start
                for worker in sorted(set(lost) | dead):
                    cluster.clear(worker)
                lost.clear()
                try:
                    cluster("add", "1")
                    faults[kind] += 1
                except RuntimeError as exc:  # a node that did not come up is a fault of the bench's own
                    print(f"a node did not join: {exc}")
        time.sleep(0.2)
    proxy.share = 0.0
    for why, n in resumed.items():
        print(f"the run was started again {n} time(s) {why}")
    return faults, time.monotonic() - started, code


def transcripts(out: str, options: dict) -> dict[str, str]:
    from pipeline.query import open_output

    rows = open_output(out, options).sql(
        "select f.uri, coalesce(string_agg(s.text, '' order by s.segment), '') from files f "
        "left join segments s using (unit_id) group by 1").fetchall()
    return dict(rows)


def upload(endpoint: str, files: int, seed: int) -> dict[str, str]:
    """FILES copies of the bundled clips to s3://audio/in/; returns the clip of each key."""
    import s3fs

    rng = random.Random(seed)
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    fs.mkdir("audio")
    data = {clip: (ROOT / "tests/data/speech" / clip).read_bytes() for clip in CLIPS}
    clip_of = {}
    for i in range(files):
        clip = rng.choice(CLIPS)
        key = f"audio/in/{i % 40:02d}/{i:05d}-{Path(clip).name}"
        clip_of[f"s3://{key}"] = clip
    keys = list(clip_of)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: fs.pipe_file(k[len("s3://"):], data[clip_of[k]]), keys))
    return clip_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=20, help="span of the fault schedule (default 20)")
    parser.add_argument("--workers", type=int, default=3, help="worker nodes of 1 CPU at the start (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "chaos")
    parser.add_argument("--port-base", type=int, default=12000,
                        help="node N's ports start at PORT_BASE + 1000*N (default 12000: below the system's ephemeral "
                             "ports, 32768 and up, where the free ports of moto and the proxy come from; another chaos "
                             "run at once needs another)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ.update(CREDENTIALS)
    moto_port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    direct = f"http://127.0.0.1:{moto_port}"
    proxy = FaultProxy(moto_port, args.seed)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="bulkscribe-chaos-")), {**CREDENTIALS, "RAY_AUTH_MODE": "token"},
                      args.port_base)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", moto_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        clip_of = upload(direct, args.files, args.seed)
        print(f"{args.files} files ({len(set(clip_of.values()))} distinct real clips) on S3; "
              f"cluster: a head and {args.workers} worker node(s) of 1 CPU")
        cluster("start", *["1"] * args.workers)

        started = time.monotonic()
        clean = start_run(cluster, proxy, "s3://audio/out-clean", args.work / "clean.log")
        if clean.wait() != 0:
            print((args.work / "clean.log").read_text()[-3000:])
            print("the clean run failed")
            return 1
        clean_s = time.monotonic() - started
        clean_requests = proxy.requests
        print(f"clean run: {clean_s:.0f} s, {clean_requests} storage requests")

        faults, chaos_s, code = chaos(cluster, proxy, "s3://audio/out-chaos", args.work / "chaos.log",
                                      args.seed, args.minutes, args.workers, direct)
        print(f"chaos run: {chaos_s:.0f} s ({chaos_s / clean_s:.2f}x the clean run), exit {code}, "
              f"{proxy.requests - clean_requests} storage requests")
        if code not in (0, 3):
            print((args.work / "chaos.log").read_text()[-4000:])
        return report(args, direct, faults, proxy, clip_of, code)
    finally:
        try:
            cluster("stop")
        finally:
            proxy.shutdown()
            moto.terminate()
            moto.wait()


def report(args, direct: str, faults: collections.Counter, proxy: FaultProxy, clip_of: dict[str, str],
           code: int) -> int:
    options = {"endpoint_url": direct}
    proxy.wait_for_late_writes()  # the folder as it is once every held write has landed
    verify = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", "s3://audio/out-chaos",
                             "--reparse", "--storage-option", f"endpoint_url={direct}"],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    clean = transcripts("s3://audio/out-clean", options)
    chaotic = transcripts("s3://audio/out-chaos", options)
    from pipeline.query import open_output

    out = open_output("s3://audio/out-chaos", options)
    rows = out.sql("select uri, count(*) from files group by 1").fetchall()
    shards_redone, units_redone = out.sql(
        "select count(distinct shard), count(*) from files where attempts > 1").fetchall()[0]
    lost = sorted(set(clip_of) - {uri for uri, _ in rows})
    duplicated = sorted(uri for uri, n in rows if n > 1)
    changed = sorted(uri for uri in clip_of if uri in chaotic and chaotic[uri] != clean.get(uri))
    # Files of one clip must all read alike too (the same bytes give the same transcript).
    by_clip = collections.defaultdict(set)
    for uri, clip in clip_of.items():
        by_clip[clip].add(clean.get(uri))
    storage = {k: proxy.counts[k] for k in STORAGE_FAULTS}
    all_faults = {**{k: v for k, v in faults.items() if k != "storage fault windows"}, **storage}
    kinds = sum(1 for v in all_faults.values() if v)
    print("\nfaults injected:")
    for kind, n in all_faults.items():
        print(f"  {kind:<32} {n:>6}")
    print(f"  {'in all':<32} {sum(all_faults.values()):>6} of {kinds} kinds "
          f"(storage faults in {faults['storage fault windows']} windows)")
    print(f"\nshards run more than once: {shards_redone}, holding {units_redone} file(s) transcribed "
          "again (the earlier attempt's result discarded)")
    print(f"verify --reparse: exit {verify.returncode}; {verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else ''}")
    print(f"files lost: {len(lost)}")
    print(f"files duplicated: {len(duplicated)}")
    print(f"transcripts changed against the clean run: {len(changed)} of {len(clip_of)}")
    print(f"clips whose copies read differently in the clean run: {sum(1 for t in by_clip.values() if len(t) > 1)}")
    for label, items in (("lost", lost), ("duplicated", duplicated), ("changed", changed)):
        for uri in items[:5]:
            print(f"  {label}: {uri}")
    ok = code in (0, 3) and verify.returncode == 0 and not (lost or duplicated or changed)
    if verify.returncode != 0:
        print(verify.stdout[-3000:] + verify.stderr[-3000:])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
