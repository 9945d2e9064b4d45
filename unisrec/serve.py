"""HTTP service over a ``Recommender`` (a model and its catalogue; FastAPI; ``unisrec serve RUN_DIR``).

    POST /recommend  {"histories": [["item id", ...], ...], "k": 10, "exclude_seen": true, "by_text": false}
                     -> {"results": [[{"item_id": ..., "score": ..., "text": ...}, ...], ...]}
    POST /items      {"items": [{"item_id": ..., "text": ...}, ...]} -> {"added": M, "n_items": N}
    GET  /health     -> {"status": "ok", "n_items": N, ...}
    GET  /metrics    -> request counts and latency histograms (Prometheus text format)
    GET  /search?q=TEXT&limit=20 -> {"items": [{"item_id": ..., "text": ...}, ...]} (catalogue text search)
    GET  /           -> a page to explore recommendations (search, click a history, top k, add items)
    GET  /openapi.json, /docs

Bad input is a 4xx, never a 500: wrong types, missing or extra fields, empty or too long histories, k out of
range -> 422 (FastAPI's validation format); a body that is not JSON -> 400 or 422; unknown item ids -> 422
naming each one with its location; item ids already in the catalogue, or new items for a model that cannot
take them -> 409; a body over ``max_body_bytes`` -> 413. Strings must be valid UTF-8. Limits: the MAX_*
constants below. With ``token`` (``unisrec serve --token T`` or ``UNISREC_TOKEN``), POST /items needs
``Authorization: Bearer T`` (401 otherwise).

Work per request is bounded: a by_text request carries at most ``MAX_TEXTS`` texts in all its histories and
POST /items at most ``MAX_NEW_ITEMS`` items (422 beyond); texts are encoded in batches of ``ENCODE_BATCH``,
one language-model batch at a time over the whole service, by at most ``TEXT_WORKERS`` requests at once
(the others wait on the event loop, not on a thread); the catalogue grows to at most ``max_catalogue`` items
(``--max-catalogue``; 409 beyond). Every limit is stated in the OpenAPI schema (/openapi.json).

Speed: concurrent /recommend requests are scored together. One worker thread takes every request waiting
in its queue (up to ``max_batch`` histories), encodes the histories packed end to end (no padding; the last
layer only at each history's end) and ranks them with one pass over the cached scoring table (a bfloat16 scan
whose candidates are rescored in float32, exact: ``unisrec.topk``), so the item table is read once per batch
rather than once per request. /items encodes the new texts outside the catalogue lock, then appends them.
With ``unisrec[serve]`` uvicorn parses HTTP with httptools and runs on uvloop.
Items added by POST /items are written (atomically, fsynced) to ``RUN/catalogue/`` before the answer, and a
restarted ``unisrec serve RUN`` serves them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import queue
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from anyio import CapacityLimiter, to_thread
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from unisrec.checkpoint import read_model_config
from unisrec.errors import UnisrecError
from unisrec.recommend import (
    ADDED_DIR,
    ENCODE_BATCH,
    Backend,
    ItemConflictError,
    Recommendation,
    Recommender,
    UnknownItemError,
)
from unisrec.version import __version__

MAX_HISTORIES = 256  # histories per request
MAX_HISTORY = 1000  # items per history (only the last max_seq_len are encoded)
MAX_K = 1000
MAX_NEW_ITEMS = 1000  # items per POST /items
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 2000
MAX_SEARCH = 100  # items per GET /search
MAX_BODY_BYTES = 4 * 2**20  # request bodies over this are refused with 413 (``--max-body-bytes``)
MAX_TEXTS = 1000  # texts per by_text request, all histories together (each one is run through the language model)
MAX_CATALOGUE = 1_000_000  # items the catalogue may grow to through POST /items (``--max-catalogue``)
TEXT_WORKERS = 2  # requests that encode texts (by_text, POST /items) at once; more wait their turn


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text (no lone surrogates)") from None
    return value


Entry = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_utf8)]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_utf8)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_utf8)]
History = Annotated[list[Entry], Field(min_length=1, max_length=MAX_HISTORY)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class RecommendRequest(Strict):
    histories: list[History] = Field(
        min_length=1, max_length=MAX_HISTORIES,
        description=f"item ids (or, with by_text, item texts), oldest first: 1 to {MAX_HISTORIES} histories of "
                    f"1 to {MAX_HISTORY} entries (only the model's last max_seq_len are used)")
    k: int = Field(10, ge=1, le=MAX_K, description=f"recommendations per history (1 to {MAX_K})")
    exclude_seen: bool = Field(True, description="leave the history's own items out of its ranking")
    by_text: bool = Field(False, description="history entries are raw item texts (inductive models); at most "
                                             f"{MAX_TEXTS} texts in all histories together")

    @model_validator(mode="after")
    def _bounded_text_work(self) -> RecommendRequest:
        count = sum(len(history) for history in self.histories)
        if self.by_text and count > MAX_TEXTS:
            raise ValueError(f"a by_text request carries at most {MAX_TEXTS} texts in all its histories, got "
                             f"{count}; split it into several requests")
        return self


class Recommended(BaseModel):
    item_id: str
    score: float = Field(description="the model's logit: cosine / temperature (text models)")
    text: str


class RecommendResponse(BaseModel):
    results: list[list[Recommended]]


class NewItem(Strict):
    item_id: ItemId
    text: Text


class AddItemsRequest(Strict):
    items: list[NewItem] = Field(min_length=1, max_length=MAX_NEW_ITEMS,
                                 description=f"1 to {MAX_NEW_ITEMS} new items with ids unknown to the catalogue")


class AddItemsResponse(BaseModel):
    added: int
    n_items: int


class CatalogueItem(BaseModel):
    item_id: str
    text: str


class SearchResponse(BaseModel):
    items: list[CatalogueItem]


class Health(BaseModel):
    status: str
    n_items: int
    item_repr: str
    backend: str
    unisrec_version: str


class ErrorMessage(BaseModel):
    detail: Any


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped: any Python string (even a lone surrogate) encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


@dataclass
class _Job:
    rows: list[np.ndarray]  # catalogue rows of each history
    k: int
    exclude_seen: bool
    future: asyncio.Future[list[list[Recommendation]]]
    loop: asyncio.AbstractEventLoop


def _resolve(job: _Job, result: Any, error: BaseException | None) -> None:
    if job.future.done():  # the client went away
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


class Batcher:
    """One worker thread ranks the histories of all waiting requests together."""

    def __init__(self, recommender: Recommender, max_batch: int = 64) -> None:
        self.recommender, self.max_batch = recommender, max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="unisrec-batcher", daemon=True)
        self._thread.start()

    async def submit(self, rows: list[np.ndarray], k: int, exclude_seen: bool) -> list[list[Recommendation]]:
        loop = asyncio.get_running_loop()
        job = _Job(rows, k, exclude_seen, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            jobs, size = [job], len(job.rows)
            while size < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(more)
                size += len(more.rows)
            self._serve(jobs)

    def _serve(self, jobs: list[_Job]) -> None:
        rows = [r for job in jobs for r in job.rows]
        flags = [job.exclude_seen for job in jobs for _ in job.rows]
        try:
            results = self.recommender.recommend_rows(rows, max(job.k for job in jobs), flags)
        except Exception as exc:  # handed to each request (a bug shows as that request's 500)
            for job in jobs:
                job.loop.call_soon_threadsafe(_resolve, job, None, exc)
            return
        start = 0
        for job in jobs:
            part = [ranked[: job.k] for ranked in results[start : start + len(job.rows)]]
            start += len(job.rows)
            job.loop.call_soon_threadsafe(_resolve, job, part, None)


class RequestMetrics:
    """Request counts by endpoint and status and a latency histogram, in Prometheus text format (GET /metrics)."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, path, status)
            self.counts[key] = self.counts.get(key, 0) + 1
            cumulative = self.buckets.setdefault(path, [0] * (len(self.BUCKETS) + 1))
            for index, bound in enumerate(self.BUCKETS):
                if seconds <= bound:
                    cumulative[index] += 1
            cumulative[-1] += 1  # +Inf
            self.sums[path] = self.sums.get(path, 0.0) + seconds

    def render(self, n_items: int) -> str:
        lines = ["# HELP unisrec_requests_total HTTP requests by method, endpoint and status.",
                 "# TYPE unisrec_requests_total counter"]
        with self._lock:
            for (method, path, status), count in sorted(self.counts.items()):
                lines.append(f'unisrec_requests_total{{method="{method}",path="{path}",status="{status}"}} {count}')
            lines += ["# HELP unisrec_request_seconds Request latency by endpoint.",
                      "# TYPE unisrec_request_seconds histogram"]
            for path, cumulative in sorted(self.buckets.items()):
                for bound, count in zip((*map(str, self.BUCKETS), "+Inf"), cumulative, strict=True):
                    lines.append(f'unisrec_request_seconds_bucket{{path="{path}",le="{bound}"}} {count}')
                lines.append(f'unisrec_request_seconds_sum{{path="{path}"}} {self.sums[path]:.6f}')
                lines.append(f'unisrec_request_seconds_count{{path="{path}"}} {cumulative[-1]}')
        lines += ["# HELP unisrec_catalogue_items Items the service ranks.", "# TYPE unisrec_catalogue_items gauge",
                  f"unisrec_catalogue_items {n_items}"]
        return "\n".join(lines) + "\n"


KNOWN_PATHS = ("/", "/recommend", "/items", "/search", "/health", "/metrics", "/docs", "/openapi.json")


def _records(results: list[list[Recommendation]]) -> dict[str, Any]:
    return {"results": [[asdict(r) for r in ranked] for ranked in results]}


def check_limits(*, max_batch: int, token: str | None, max_body_bytes: int, max_catalogue: int) -> None:
    """Raise ``UnisrecError`` naming the first setting of the service out of its range."""
    if token is not None and not token.strip():
        raise UnisrecError("--token (or UNISREC_TOKEN) must not be empty: an empty token would let anyone in")
    for name, value in (("--max-batch", max_batch), ("--max-body-bytes", max_body_bytes),
                        ("--max-catalogue", max_catalogue)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UnisrecError(f"{name} must be a positive integer, got {value!r}")


def limits_text(max_body_bytes: int, max_catalogue: int) -> str:
    """The limits of the service, as stated in its OpenAPI description."""
    return (
        "Limits (refused with the status shown):\n\n"
        f"- request bodies: at most {max_body_bytes} bytes (413)\n"
        f"- POST /recommend: 1 to {MAX_HISTORIES} histories of 1 to {MAX_HISTORY} entries, k from 1 to {MAX_K} "
        f"(422); with by_text at most {MAX_TEXTS} texts in all histories together (422)\n"
        f"- POST /items: 1 to {MAX_NEW_ITEMS} items (422), ids up to {MAX_ID_CHARS} and texts up to "
        f"{MAX_TEXT_CHARS} characters (422); the catalogue holds at most {max_catalogue} items (409)\n"
        f"- GET /search: at most {MAX_SEARCH} items\n"
        f"- texts (by_text histories, new items) are encoded in batches of {ENCODE_BATCH}, one batch at a time, "
        f"by at most {TEXT_WORKERS} requests at once; further ones wait their turn\n"
    )


def create_app(source: Recommender | str | Path, *, max_batch: int = 64, token: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, access_log: bool = False,
               max_catalogue: int = MAX_CATALOGUE, run_dir: str | Path | None = None) -> FastAPI:
    """The FastAPI application serving the recommender ``source`` (e.g. ``Recommender.from_pretrained(RUN)``), or
    the run folder given instead (loaded on CPU, and then also the ``run_dir`` that POST /items persists to).

    ``token``: mutating endpoints (POST /items) require ``Authorization: Bearer <token>`` (401 otherwise).
    ``max_body_bytes``: larger request bodies are refused with 413 before they are parsed.
    ``access_log``: one line per request on stderr (client, method, path, status, milliseconds).
    ``max_catalogue``: POST /items may grow the catalogue to this many items (409 beyond).
    ``run_dir``: the run folder the recommender was loaded from; items added by POST /items are then written to
    ``RUN/catalogue/`` before the answer (``Recommender.from_pretrained(RUN)`` serves them again).
    """
    check_limits(max_batch=max_batch, token=token, max_body_bytes=max_body_bytes, max_catalogue=max_catalogue)
    if isinstance(source, Recommender):
        recommender = source
    else:
        recommender = Recommender.from_pretrained(source)
        run_dir = source if run_dir is None else run_dir
    model = recommender.model
    recommender.max_items = max_catalogue
    if run_dir is not None:
        recommender.persist_dir = Path(run_dir) / ADDED_DIR  # POST /items survives a restart (and kill -9)
    batcher = Batcher(recommender, max_batch)
    text_workers = CapacityLimiter(TEXT_WORKERS)  # requests encoding texts at once

    async def encoding(function: Any, *args: Any) -> Any:
        """Run ``function(*args)`` (it encodes texts) on a thread, at most TEXT_WORKERS of them at once."""
        return await to_thread.run_sync(functools.partial(function, *args), limiter=text_workers)

    bearer = HTTPBearer(auto_error=False, description="the token given to `unisrec serve --token`")

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(
        title="unisrec",
        version=__version__,
        summary="Sequential recommendations from item texts (UniSRec).",
        description=limits_text(max_body_bytes, max_catalogue),
        default_response_class=AsciiJSONResponse,
        lifespan=lifespan,
    )
    app.state.recommender = recommender

    metrics = RequestMetrics()

    # registered before measure, so inside it: a refused body (413) is counted and logged like every answer
    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        too_big = {"detail": f"request body over {max_body_bytes} bytes"}
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return AsciiJSONResponse(too_big, status_code=413)
        if request.method == "POST" and declared is None:  # chunked: count what arrives, stop past the limit
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body_bytes:  # never more than the limit plus one chunk in memory
                    return AsciiJSONResponse(too_big, status_code=413)
                chunks.append(chunk)
            request._body = b"".join(chunks)  # as request.body() keeps it: the route below is handed this body
        return await call_next(request)

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        seconds = time.perf_counter() - started
        path = request.url.path if request.url.path in KNOWN_PATHS else "other"  # bounded label set
        metrics.observe(request.method, path, response.status_code, seconds)
        if access_log:
            client = request.client.host if request.client else "-"
            print(f'{client} "{request.method} {request.url.path}" {response.status_code} {seconds * 1000:.1f}ms',
                  file=sys.stderr, flush=True)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        return AsciiJSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(UnknownItemError)
    async def unknown(request: Request, exc: UnknownItemError) -> JSONResponse:
        detail = [{"type": "unknown_item", "loc": ["body", "histories", h, p], "msg": f"unknown item id {item!r}"}
                  for h, p, item in exc.unknown]
        return AsciiJSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(ItemConflictError)
    async def conflict(request: Request, exc: ItemConflictError) -> JSONResponse:
        return AsciiJSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(UnisrecError)
    async def bad_input(request: Request, exc: UnisrecError) -> JSONResponse:
        return AsciiJSONResponse({"detail": str(exc)}, status_code=422)

    too_big = {"model": ErrorMessage, "description": f"request body over {max_body_bytes} bytes"}
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorMessage, "description": "unreadable body (not JSON)"},
        413: too_big,
        422: {"model": ErrorMessage, "description": "invalid input: types, unknown item ids, or over a limit: "
              f"{MAX_HISTORIES} histories, {MAX_HISTORY} entries per history, k {MAX_K}, with by_text "
              f"{MAX_TEXTS} texts in all"},
    }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        """A page to explore recommendations: search, build a history, see the top k, add items."""
        return (resources.files("unisrec") / "web" / "index.html").read_text(encoding="utf-8")

    @app.get("/search", response_model=SearchResponse)
    def search(q: Annotated[str, Query(max_length=MAX_TEXT_CHARS)] = "",
               limit: Annotated[int, Query(ge=1, le=MAX_SEARCH)] = 20) -> dict[str, Any]:
        """Catalogue items whose text or id contains ``q`` (case-insensitive), in catalogue order. Not async:
        the scan and the wait for the catalogue's lock (held while items are added, taken here only to read the
        catalogue's length) run in a worker thread, not on the event loop that serves every other request."""
        with recommender._lock:  # only for the length: the scan must not stall the rankings that take the lock
            catalogue = recommender.catalogue
            length = len(catalogue)
        rows = catalogue.search(q, limit, upto=length)  # rows < length stay as they are (items are only appended)
        return {"items": [{"item_id": catalogue.item_ids[r], "text": catalogue.texts[r]} for r in rows]}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        """Request counts and latency histograms (Prometheus text format)."""
        return metrics.render(len(recommender.catalogue))

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "n_items": len(recommender.catalogue), "item_repr": model.config.item_repr,
                "backend": recommender.backend, "unisrec_version": __version__}

    @app.post("/recommend", response_model=RecommendResponse,
              responses={**errors, 409: {"model": ErrorMessage, "description": "by_text for a model that cannot "
                                                                                "encode item texts"}})
    async def post_recommend(request: RecommendRequest) -> dict[str, Any]:
        """Top-k items for each history; unknown item ids are a 422 naming each one.

        With by_text the entries are item texts: at most MAX_TEXTS of them per request, encoded in batches of
        ENCODE_BATCH, one batch at a time over the service, by at most TEXT_WORKERS requests at once.
        """
        if len(recommender.catalogue) == 0:
            if not request.by_text:  # every id is unknown to an empty catalogue: a 422 naming them, as always
                recommender.resolve(request.histories)
            return {"results": [[] for _ in request.histories]}
        if request.by_text:
            results = await encoding(recommender.recommend_lists, request.histories, request.k,
                                     request.exclude_seen, True)
            return _records(results)
        rows = recommender.resolve(request.histories)
        return _records(await batcher.submit(rows, request.k, request.exclude_seen))

    conflicts = {**errors,
                 409: {"model": ErrorMessage, "description": "id already in the catalogue, a model that cannot add "
                       f"items by text, or a full catalogue (at most {max_catalogue} items: --max-catalogue)"},
                 422: {"model": ErrorMessage, "description": f"invalid input: types, 1 to {MAX_NEW_ITEMS} items, "
                       f"ids up to {MAX_ID_CHARS} and texts up to {MAX_TEXT_CHARS} characters"}}
    if token is not None:
        conflicts[401] = {"model": ErrorMessage, "description": "missing or wrong bearer token"}

    @app.post("/items", response_model=AddItemsResponse, responses=conflicts,
              dependencies=[Depends(authorised)] if token is not None else [])
    async def post_items(request: AddItemsRequest) -> dict[str, Any]:
        """New items join the catalogue by their text (encoded by the run's language model); no retraining.

        At most MAX_NEW_ITEMS items per request, encoded like by_text histories (batches of ENCODE_BATCH, at
        most TEXT_WORKERS requests at once); the catalogue grows to at most max_catalogue items (409 beyond).
        """
        ids = [item.item_id for item in request.items]
        n_items = await encoding(recommender.add_items, [item.text for item in request.items], ids)
        return {"added": len(ids), "n_items": n_items}

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, *, backend: Backend = "torch",
          threads: int = 1, max_batch: int = 64, token: str | None = None,
          max_body_bytes: int = MAX_BODY_BYTES, access_log: bool = False, max_catalogue: int = MAX_CATALOGUE) -> None:
    """Load ``run_dir`` and serve it with uvicorn until interrupted (``unisrec serve``, the same defaults:
    ``threads`` torch CPU threads, 1 by default, 0 for torch's own choice)."""

    import torch
    import uvicorn

    check_limits(max_batch=max_batch, token=token, max_body_bytes=max_body_bytes, max_catalogue=max_catalogue)
    if not 0 <= port <= 65535:
        raise UnisrecError(f"--port must be in 0..65535, got {port}")
    if threads < 0:
        raise UnisrecError(f"--threads must be >= 0, got {threads}")
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"unisrec serve: warning: listening on {host} without --token: anyone who reaches it can change "
              "the catalogue (POST /items)", file=sys.stderr)
    if threads:
        torch.set_num_threads(threads)
    read_model_config(run_dir)  # a missing or foreign run folder: its own error, before any port is taken
    listeners = listen_on(host, port)  # then the port: taken, a one-line error before minutes of loading
    try:
        recommender = Recommender.from_pretrained(run_dir, backend=backend)
        if len(recommender.catalogue) > max_catalogue:
            raise UnisrecError(f"--max-catalogue {max_catalogue} is below the {len(recommender.catalogue)} items the "
                               "catalogue holds already; give a larger cap")
        recommender.scoring_table()  # build it before the first request
        app = create_app(recommender, max_batch=max_batch, token=token, max_body_bytes=max_body_bytes,
                         access_log=access_log, max_catalogue=max_catalogue, run_dir=run_dir)
        shown = f"[{host}]" if ":" in host else host or "0.0.0.0"
        print(f"unisrec serve: http://{shown}:{listeners[0].getsockname()[1]} (docs at /docs)", file=sys.stderr,
              flush=True)  # the port the system chose for --port 0
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn stops gracefully, then re-raises it
            uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=listeners)
    finally:
        for listener in listeners:
            listener.close()


def listen_on(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (``""``: every interface) at ``port`` (0: a free port, the
    same for all), as uvicorn would open them; a one-line error naming host and port where one is taken, no such
    address exists or it is not permitted. Listening at once, not only bound: a second server on the same port is
    refused here, before it loads its model (two sockets may bind one port while neither listens)."""
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UnisrecError(f"--host {host!r}: {exc.strerror or exc}") from None
    listeners: list[socket.socket] = []
    chosen = port  # with port 0 the first socket's port, then the same for the others
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):  # each address once
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a stop binds
            if family == socket.AF_INET6:  # as asyncio: the IPv4 addresses have sockets of their own
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind((address[0], chosen, *address[2:]))
            chosen = listener.getsockname()[1]
            listener.listen(2048)  # uvicorn's backlog; connections made while the model loads wait
    except OSError as exc:
        for listener in listeners:
            listener.close()
        raise UnisrecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listeners
