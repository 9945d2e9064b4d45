"""Load test of `unisrec serve`: a bounded, loopback-only HTTP client; prints requests/s, latency and errors.

    .venv/bin/python benchmarks/load_test.py                      # 100k-item catalogue, 60 s, 16 connections
    .venv/bin/python benchmarks/load_test.py --duration 10 --concurrency 4 --items 20000

Without ``--run`` it builds (once) a synthetic run of ``--items`` items: the default model configuration
(hidden 300, 8 experts, 2 layers) over random 384-d text vectors (the size of the default MiniLM), saved with
``save_pretrained``; then it starts ``unisrec serve`` on a free loopback port, waits for /health, warms up,
and keeps ``--concurrency`` keep-alive connections busy for ``--duration`` seconds, each posting one history
(1..50 random item ids) with k=10 per request. ``--repeats N`` measures N times, each with a fresh server,
and reports medians (requests/s, latency percentiles) and the summed request and error counts. The client
speaks HTTP/1.1 on asyncio streams (a few microseconds per request), so it takes little CPU from the server it
measures. Results are one JSON object (each repetition's also goes to stderr).

Mixed traffic with persistence and auth (``--mixed``, or the separate options): the server runs with
``--token`` and every POST /items carries it; ``--items-share`` of the requests add ``--items-per-add`` new
items by their text (encoded by the run's language model, persisted to RUN/catalogue/ before the answer),
``--text-share`` ask for recommendations of text histories (by_text), the rest by item ids. Each measurement
then serves a fresh copy of the run, and the report gives requests, errors and latency per kind and the items
found persisted in the copy's RUN/catalogue/ afterwards (they must equal the additions answered 200).

    .venv/bin/python benchmarks/load_test.py --mixed --items 20000 --duration 10 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_run(folder: Path, n_items: int, seed: int = 0) -> Path:
    """A saved run of ``n_items`` synthetic items (random text vectors, untrained default model)."""
    import torch

    from unisrec.config import DEFAULT_TEXT_MODEL, ModelConfig
    from unisrec.model import UniSRec
    from unisrec.recommend import Catalogue, Recommender

    if (folder / "config.json").exists() and json.loads((folder / "config.json").read_text())["n_items"] == n_items:
        return folder
    torch.manual_seed(seed)
    text = torch.randn(n_items, 384)  # (N, D)
    model = UniSRec(ModelConfig(), n_items, text).eval()
    ids = [f"item-{i}" for i in range(n_items)]
    recommender = Recommender(model, Catalogue(ids, [f"synthetic item {i}" for i in range(n_items)]),
                              {"model": DEFAULT_TEXT_MODEL, "pooling": "mean", "max_length": 128})
    recommender.save_pretrained(folder)
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, server: subprocess.Popen[bytes], timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return dict(json.loads(response.read()))
        except OSError:
            time.sleep(0.5)
    raise SystemExit("server did not become healthy")


class Connection:
    """One HTTP/1.1 keep-alive connection posting JSON (responses must carry Content-Length)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, token: str | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n{auth}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


class Traffic:
    """What the workers send: recommendations by id, and with mixed traffic text histories and new items."""

    WORDS = ("red", "blue", "green", "camera", "lens", "microscope", "glass", "beaker", "tube", "lab", "kit",
             "digital", "optical", "steel", "small", "large", "set", "case", "cable", "adapter")

    def __init__(self, bodies: list[bytes], items_share: float = 0.0, text_share: float = 0.0,
                 items_per_add: int = 2, token: str | None = None) -> None:
        self.bodies, self.items_share, self.text_share = bodies, items_share, text_share
        self.items_per_add, self.token = items_per_add, token
        self.prefix = f"load-{secrets.token_hex(4)}"
        self.counter = 0
        self.added: list[str] = []  # ids whose addition was answered 200

    def next(self, rng: random.Random) -> tuple[str, str, bytes, list[str]]:
        """(kind, path, body, new ids) of the next request."""
        draw = rng.random()
        if draw < self.items_share:
            self.counter += 1
            ids = [f"{self.prefix}-{self.counter}-{j}" for j in range(self.items_per_add)]
            items = [{"item_id": i, "text": self._text(rng)} for i in ids]
            return "items", "/items", json.dumps({"items": items}).encode(), ids
        if draw < self.items_share + self.text_share:
            history = [self._text(rng) for _ in range(rng.randint(1, 10))]
            return "by_text", "/recommend", json.dumps({"histories": [history], "by_text": True}).encode(), []
        return "by_id", "/recommend", self.bodies[rng.randrange(len(self.bodies))], []

    def _text(self, rng: random.Random) -> str:
        return " ".join(rng.choice(self.WORDS) for _ in range(rng.randint(2, 8)))


async def _worker(host: str, port: int, traffic: Traffic, until: float, seed: int,
                  latencies: dict[str, list[float]], statuses: dict[str, dict[str, int]]) -> None:
    rng = random.Random(seed)
    connection = Connection(host, port)
    try:
        while time.perf_counter() < until:
            kind, path, body, new_ids = traffic.next(rng)
            counts = statuses.setdefault(kind, {})
            start = time.perf_counter()
            try:
                status, _payload = await connection.post(path, body, traffic.token if kind == "items" else None)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
                await connection.close()
                connection = Connection(host, port)
                continue
            latencies.setdefault(kind, []).append(time.perf_counter() - start)
            counts[str(status)] = counts.get(str(status), 0) + 1
            if status == 200:
                traffic.added.extend(new_ids)
    finally:
        await connection.close()


async def _load(host: str, port: int, traffic: Traffic, duration: float, concurrency: int
                ) -> tuple[dict[str, list[float]], dict[str, dict[str, int]], float]:
    latencies: dict[str, list[float]] = {}
    statuses: dict[str, dict[str, int]] = {}
    start = time.perf_counter()
    until = start + duration
    await asyncio.gather(*(_worker(host, port, traffic, until, i, latencies, statuses) for i in range(concurrency)))
    return latencies, statuses, time.perf_counter() - start


def _percentiles(seconds: list[float]) -> dict[str, float | None]:
    ms = np.asarray(seconds) * 1000
    return {name: round(float(np.percentile(ms, q)), 2) if len(ms) else None
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}


def _persisted_ids(folder: Path) -> list[str]:
    """Ids of the items written to RUN/catalogue/ by POST /items."""
    from safetensors import safe_open

    ids: list[str] = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="np") as handle:
            ids += json.loads((handle.metadata() or {})["ids"])
    return ids


def _bodies(n_items: int, k: int, count: int = 4096, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(count):
        history = [f"item-{i}" for i in rng.integers(0, n_items, size=int(rng.integers(1, 51)))]
        bodies.append(json.dumps({"histories": [history], "k": k}).encode())
    return bodies


def measure(args: argparse.Namespace, run: Path | None, url: str | None) -> dict[str, Any]:
    """One measurement: start a server (unless ``url``), warm up, load for ``args.duration`` seconds."""
    server = None
    copy: Path | None = None
    if url:
        host, _, port_text = url.removeprefix("http://").rstrip("/").rpartition(":")
        port = int(port_text)
    else:
        assert run is not None
        if args.items_share > 0:  # additions persist into the run: serve a fresh copy of it
            copy = Path(tempfile.mkdtemp(prefix="unisrec-load-run-")) / "run"
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("catalogue"))
            run = copy
        host, port = "127.0.0.1", _free_port()
        url = f"http://{host}:{port}"
        command = [sys.executable, "-m", "unisrec", "serve", str(run), "--host", host, "--port", str(port),
                   "--backend", args.backend, "--threads", str(args.threads)]
        if args.token:
            command += ["--token", args.token]
        server = subprocess.Popen(command)
    persisted: list[str] | None = None
    try:
        started = time.perf_counter()
        health = _wait_healthy(url, server) if server else {}
        startup = time.perf_counter() - started
        n_items = int(health.get("n_items", args.items))
        bodies = _bodies(n_items, args.k)
        warm = Traffic(bodies, args.items_share, args.text_share, args.items_per_add, args.token)
        if args.warmup:
            asyncio.run(_load(host, port, warm, args.warmup, args.concurrency))
        load_before = os.getloadavg()[0]
        traffic = Traffic(bodies, args.items_share, args.text_share, args.items_per_add, args.token)
        latencies, statuses, seconds = asyncio.run(_load(host, port, traffic, args.duration, args.concurrency))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        if copy is not None:
            persisted = _persisted_ids(copy / "catalogue")
            shutil.rmtree(copy.parent, ignore_errors=True)
    everything = [s for kind in latencies.values() for s in kind]
    total = {name: sum(kind.get(name, 0) for kind in statuses.values())
             for name in sorted({n for kind in statuses.values() for n in kind})}
    ok = total.get("200", 0)
    report: dict[str, Any] = {
        "url": url, "n_items": n_items, "duration_s": round(seconds, 2),
        "requests": len(everything), "ok": ok, "errors": int(sum(total.values()) - ok), "statuses": total,
        "requests_per_s": round(len(everything) / seconds, 1),
        "latency_ms": _percentiles(everything),
        "server_startup_s": round(startup, 1), "load_average_1min_at_start": round(load_before, 2),
    }
    if len(statuses) > 1 or "by_id" not in statuses:
        report["by_kind"] = {kind: {"requests": len(latencies.get(kind, [])), "statuses": statuses[kind],
                                    "latency_ms": _percentiles(latencies.get(kind, []))} for kind in sorted(statuses)}
    if persisted is not None:
        added = warm.added + traffic.added  # warm-up additions persist too
        report["items_added"] = len(added)
        report["items_persisted"] = len(persisted)
        report["persisted_equals_added"] = sorted(persisted) == sorted(added)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="run folder to serve (default: build a synthetic one)")
    parser.add_argument("--items", type=int, default=100_000, help="synthetic catalogue size")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unisrec-load-test")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load (at most 600)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load first")
    parser.add_argument("--concurrency", type=int, default=16, help="connections kept busy (at most 256)")
    parser.add_argument("--repeats", type=int, default=1, help="measurements, each with a fresh server; medians")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="server torch threads (0: torch default)")
    parser.add_argument("--backend", choices=("torch", "faiss"), default="torch")
    parser.add_argument("--url", default=None, help="measure an already running loopback server instead")
    parser.add_argument("--token", default=None, help="serve with --token TOKEN; POST /items sends it")
    parser.add_argument("--items-share", type=float, default=0.0,
                        help="fraction of requests that are POST /items (persisted to a copy of the run)")
    parser.add_argument("--items-per-add", type=int, default=2, help="new items per POST /items (1..1000)")
    parser.add_argument("--text-share", type=float, default=0.0, help="fraction of by_text recommendations")
    parser.add_argument("--mixed", action="store_true",
                        help="persistence and auth on, mixed traffic: a random --token, --items-share 0.1, "
                        "--text-share 0.1 (unless given)")
    args = parser.parse_args(argv)
    if args.mixed:
        args.token = args.token or secrets.token_urlsafe(16)
        args.items_share = args.items_share or 0.1
        args.text_share = args.text_share or 0.1
    if not 0 < args.duration <= 600 or not 0 < args.concurrency <= 256 or not 1 <= args.repeats <= 20:
        parser.error("--duration must be in (0, 600], --concurrency in [1, 256] and --repeats in [1, 20]")
    if not (0 <= args.items_share <= 1 and 0 <= args.text_share <= 1 and args.items_share + args.text_share <= 1):
        parser.error("--items-share and --text-share must be in [0, 1] and add up to at most 1")
    if not 1 <= args.items_per_add <= 1000:
        parser.error("--items-per-add must be in [1, 1000]")
    if args.items_share > 0 and args.url:
        parser.error("--items-share needs a server of this script (not --url): additions persist into the run")
    if args.url:
        host = args.url.removeprefix("http://").rstrip("/").rpartition(":")[0]
        if host.strip("[]") not in LOOPBACK:
            parser.error("--url must be a loopback address (127.0.0.1, localhost, ::1)")
        run = args.run
    else:
        run = args.run or build_run(args.work / f"run-{args.items}", args.items)
    runs = []
    for number in range(1, args.repeats + 1):
        runs.append(measure(args, run, args.url))
        if args.repeats > 1:  # progress: each repetition as it ends
            print(json.dumps({"repeat": number, **runs[-1]}), file=sys.stderr)

    def median(get: Any) -> float:
        return round(float(np.median([get(r) for r in runs])), 2)

    report = {
        "run": str(run) if run else None, "n_items": runs[0]["n_items"], "k": args.k,
        "history_length": "1..50 (uniform)", "duration_s": args.duration,
        "concurrency": args.concurrency, "backend": args.backend, "server_threads": args.threads or "default",
        "cpus": os.cpu_count(), "repeats": args.repeats, "auth": bool(args.token),
        "items_share": args.items_share, "text_share": args.text_share,
        "requests": sum(r["requests"] for r in runs), "ok": sum(r["ok"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "statuses": {name: sum(r["statuses"].get(name, 0) for r in runs)
                     for name in sorted({n for r in runs for n in r["statuses"]})},
        "requests_per_s": median(lambda r: r["requests_per_s"]),
        "latency_ms": {name: median(lambda r, name=name: r["latency_ms"][name])
                       for name in ("p50", "p90", "p99", "max")},
    }
    if args.repeats > 1:
        report["per_repeat"] = runs
    else:
        report.update({key: runs[0][key] for key in ("url", "server_startup_s", "load_average_1min_at_start",
                                                     "by_kind", "items_added", "items_persisted",
                                                     "persisted_equals_added") if key in runs[0]})
    lost = any(r.get("persisted_equals_added") is False for r in runs)
    print(json.dumps(report))
    return 0 if report["errors"] == 0 and not lost else 1


if __name__ == "__main__":
    raise SystemExit(main())
