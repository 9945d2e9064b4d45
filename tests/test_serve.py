"""The HTTP service: answers equal the Python API, bad input is a clear 4xx, fuzzing finds no 5xx."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TypedDict

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unisrec.config import ModelConfig, TextConfig
from unisrec.model import UniSRec
from unisrec.recommend import Catalogue, Recommender
from unisrec.serve import MAX_HISTORY, create_app
from unisrec.text_encoder import TextEncoder

WORDS = ["red", "blue", "green", "camera", "lens", "microscope", "glass", "beaker", "tube", "lab", "kit"]
N_ITEMS = 40


class _RecommendBody(TypedDict):
    """A POST /recommend request body."""

    histories: list[list[str]]
    k: int
    exclude_seen: bool


def _model(tiny_lm_dir: Path, item_repr: str = "text", repeat_bias: bool = False) -> Recommender:
    spec = TextConfig(model=str(tiny_lm_dir), pooling="mean")
    encoder = TextEncoder(spec)
    texts = [f"{WORDS[i % 11]} {WORDS[i // 11]} {WORDS[(i * 5 + 1) % 11]}" for i in range(N_ITEMS)]  # all different
    torch.manual_seed(0)
    config = ModelConfig(item_repr=item_repr, hidden_size=16, inner_size=16, max_seq_len=8,  # type: ignore[arg-type]
                         n_experts=2, repeat_bias=repeat_bias)
    model = UniSRec(config, N_ITEMS, torch.from_numpy(encoder.encode(texts))).eval()
    recorded = {"model": spec.model, "pooling": spec.pooling, "max_length": spec.max_length,
                "fingerprint": encoder.fingerprint()["digest"]}
    return Recommender(model, Catalogue([f"item-{i}" for i in range(N_ITEMS)], texts), recorded)


@pytest.fixture
def recommender(tiny_lm_dir: Path) -> Recommender:
    return _model(tiny_lm_dir)


@pytest.fixture
def client(recommender: Recommender) -> Any:
    with TestClient(create_app(recommender)) as test_client:
        yield test_client


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "n_items": N_ITEMS, "item_repr": "text",
                                            "backend": "torch", "unisrec_version": "0.1.0"}
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/items", "/health"} <= set(schema["paths"])
    assert "409" in schema["paths"]["/items"]["post"]["responses"]


def test_recommend_matches_the_python_api(client: TestClient, recommender: Recommender) -> None:
    histories = [["item-1", "item-2"], ["item-30"], ["item-5"] * 20]
    response = client.post("/recommend", json={"histories": histories, "k": 5, "exclude_seen": False})
    assert response.status_code == 200
    expected = recommender.recommend_histories(histories, k=5, exclude_seen=False)
    got = [(h, r["item_id"], r["score"]) for h, ranked in enumerate(response.json()["results"]) for r in ranked]
    assert [(h, i) for h, i, _ in got] == list(zip(expected.user_id, expected.item_id, strict=True))
    assert [s for _, _, s in got] == pytest.approx(expected.score.tolist(), rel=1e-6)
    default = client.post("/recommend", json={"histories": [["item-1", "item-2"]]}).json()["results"][0]
    assert len(default) == 10 and {"item-1", "item-2"}.isdisjoint(r["item_id"] for r in default)


def test_text_histories(client: TestClient, recommender: Recommender) -> None:
    texts = [recommender.catalogue.texts[3]]
    response = client.post("/recommend", json={"histories": [texts], "k": 3, "by_text": True})
    assert response.status_code == 200
    assert [r["item_id"] for r in response.json()["results"][0]] == [
        r.item_id for r in recommender.recommend_lists([["item-3"]], k=3)[0]]


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        ({"histories": [["item-1", "nope"], ["gone"]]}, 422,
         [["body", "histories", 0, 1], ["body", "histories", 1, 0]]),
        ({"histories": []}, 422, [["body", "histories"]]),
        ({"histories": [[]]}, 422, [["body", "histories", 0]]),
        ({"histories": [["item-1"] * (MAX_HISTORY + 1)]}, 422, [["body", "histories", 0]]),
        ({"histories": [["item-1"]], "k": 0}, 422, [["body", "k"]]),
        ({"histories": [["item-1"]], "k": 1001}, 422, [["body", "k"]]),
        ({"histories": [["item-1"]], "k": "10"}, 422, [["body", "k"]]),
        ({"histories": [["item-1"]], "exclude_seen": "yes"}, 422, [["body", "exclude_seen"]]),
        ({"histories": [[1, 2]]}, 422, [["body", "histories", 0, 0], ["body", "histories", 0, 1]]),
        ({"histories": "item-1"}, 422, [["body", "histories"]]),
        ({"histories": [["item-1"]], "user": "x"}, 422, [["body", "user"]]),
        ({}, 422, [["body", "histories"]]),
    ],
)
def test_bad_recommend_requests_are_422(client: TestClient, body: Any, status: int, where: list[Any]) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code == status, response.text
    assert [e["loc"] for e in response.json()["detail"]] == where


def test_an_empty_catalogue_still_names_unknown_ids(tiny_lm_dir: Path) -> None:
    full = _model(tiny_lm_dir)
    empty = UniSRec.without_catalogue(full.model.config, full.model.text_dim).eval()  # a pre-trained run's
    with TestClient(create_app(Recommender(empty, Catalogue([], []), full.text_encoder_info))) as client:
        response = client.post("/recommend", json={"histories": [["item-1", "nope"]]})
        assert response.status_code == 422, response.text
        assert [e["loc"] for e in response.json()["detail"]] == [["body", "histories", 0, 0],
                                                                 ["body", "histories", 0, 1]]
        by_text = client.post("/recommend", json={"histories": [["red lens kit"]], "by_text": True})
        assert by_text.status_code == 200 and by_text.json() == {"results": [[]]}


def test_malformed_json_and_bad_unicode_are_422(client: TestClient) -> None:
    for raw in (b"{not json", b'{"histories": [["\\ud800"]]}', b"\xff\xfe"):
        response = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, (raw, response.text)


def test_added_items_are_recommended(client: TestClient) -> None:
    items = [{"item_id": "fresh-1", "text": "red lens kit"}, {"item_id": "fresh-2", "text": "blue beaker"}]
    response = client.post("/items", json={"items": items})
    assert response.status_code == 200 and response.json() == {"added": 2, "n_items": N_ITEMS + 2}
    assert client.get("/health").json()["n_items"] == N_ITEMS + 2
    response = client.post("/recommend", json={"histories": [["fresh-1", "fresh-2"]], "k": N_ITEMS + 2,
                                               "exclude_seen": False})
    assert {"fresh-1", "fresh-2"} <= {r["item_id"] for r in response.json()["results"][0]}
    again = client.post("/items", json={"items": [{"item_id": "fresh-1", "text": "x"}]})
    assert again.status_code == 409 and again.json() == {"detail": "item id 'fresh-1' is already in the catalogue"}
    twice = client.post("/items", json={"items": [{"item_id": "z", "text": "a"}, {"item_id": "z", "text": "b"}]})
    assert twice.status_code == 409
    bad_bodies: tuple[dict[str, list[dict[str, object]]], ...] = (
        {"items": []}, {"items": [{"item_id": "", "text": "x"}]}, {"items": [{"item_id": "q"}]},
        {"items": [{"item_id": "q", "text": 3}]})
    for bad in bad_bodies:
        assert client.post("/items", json=bad).status_code == 422, bad


def test_transductive_model_refuses_new_items(tiny_lm_dir: Path) -> None:
    with TestClient(create_app(_model(tiny_lm_dir, "text+id"))) as test_client:
        response = test_client.post("/items", json={"items": [{"item_id": "n", "text": "red"}]})
        assert response.status_code == 409 and "inductive (text-only) model" in response.json()["detail"]
        response = test_client.post("/recommend", json={"histories": [["red"]], "by_text": True})
        assert response.status_code == 409


def test_concurrent_requests_are_batched_with_the_same_answers(recommender: Recommender) -> None:
    app = create_app(recommender)
    bodies: list[_RecommendBody] = [
        {"histories": [[f"item-{i}", f"item-{(i * 3) % N_ITEMS}"]], "k": 1 + i % 7, "exclude_seen": i % 2 == 0}
        for i in range(24)]

    async def send_all() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(*(http.post("/recommend", json=b) for b in bodies))
        return [r.json()["results"][0] for r in responses]

    for body, got in zip(bodies, asyncio.run(send_all()), strict=True):
        expected = recommender.recommend_lists(body["histories"], k=body["k"], exclude_seen=body["exclude_seen"])[0]
        assert [r["item_id"] for r in got] == [r.item_id for r in expected]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_valid_random_requests_succeed(data: st.DataObject, tiny_lm_dir: Path) -> None:
    """Any well-formed request over known ids is a 200 with k or fewer results per history."""
    client = _fuzz_client(tiny_lm_dir)
    ids = st.sampled_from([f"item-{i}" for i in range(N_ITEMS)])
    body: _RecommendBody = {
        "histories": data.draw(st.lists(st.lists(ids, min_size=1, max_size=60), min_size=1, max_size=5)),
        "k": data.draw(st.integers(1, 1000)), "exclude_seen": data.draw(st.booleans())}
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    assert all(len(r) <= min(body["k"], N_ITEMS) for r in response.json()["results"])


_CLIENTS: dict[str, TestClient] = {}


def _fuzz_client(tiny_lm_dir: Path) -> TestClient:
    if "client" not in _CLIENTS:
        _CLIENTS["client"] = TestClient(create_app(_model(tiny_lm_dir)))
    return _CLIENTS["client"]


def test_schemathesis_fuzzing_finds_no_server_error(tiny_lm_dir: Path) -> None:
    """Schema-driven fuzzing (valid and invalid bodies) of every operation: no 5xx, every response documented."""
    schemathesis = pytest.importorskip("schemathesis")
    app = create_app(_model(tiny_lm_dir))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen: dict[int, int] = {}
    both = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for path, method, modes in (("/recommend", "POST", both), ("/items", "POST", both), ("/health", "GET", both[:1])):
        operation = schema[path][method]
        for mode in modes:

            _fuzz(operation, mode, seen)
    assert set(seen) <= {200, 400, 409, 422} and seen.get(200, 0) > 0, seen
    print(f"schemathesis: {sum(seen.values())} requests, status codes {dict(sorted(seen.items()))}")


def _fuzz(operation: Any, mode: Any, seen: dict[int, int]) -> None:
    """40 generated requests for one operation: no 5xx, and every status code is in its OpenAPI responses."""
    documented = set(operation.definition.raw["responses"])

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call()
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.body, response.text)
        assert str(response.status_code) in documented, response.status_code

    check()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(run: Path, port: int, *extra: str) -> tuple[subprocess.Popen[bytes], httpx.Response]:
    command = [sys.executable, "-m", "unisrec", "serve", str(run), "--port", str(port), "--threads", "1", *extra]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120  # a loaded machine (a training run beside the tests) starts it slowly
    while True:
        try:
            return server, httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        except httpx.TransportError:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            if time.monotonic() >= deadline:  # not left running past the test (it held its port and memory)
                server.kill()
                server.wait()
                raise AssertionError("server did not start within 120 s") from None
            time.sleep(0.2)


def test_added_items_survive_kill_9_of_the_server(recommender: Recommender, tmp_path: Path) -> None:
    recommender.save_pretrained(tmp_path / "run")
    port = _free_port()
    server, _ = _start_server(tmp_path / "run", port, "--token", "t")
    try:
        new = {"items": [{"item_id": "kept-1", "text": "red lens kit"}, {"item_id": "kept-2", "text": "blue tube"}]}
        answer = httpx.post(f"http://127.0.0.1:{port}/items", json=new, headers={"Authorization": "Bearer t"},
                            timeout=60)  # the first addition loads the language model
        assert answer.status_code == 200 and answer.json()["n_items"] == N_ITEMS + 2
        before = httpx.post(f"http://127.0.0.1:{port}/recommend",
                            json={"histories": [["kept-1", "item-3"]], "k": 5, "exclude_seen": False},
                            timeout=60).json()
    finally:
        server.kill()  # SIGKILL right after the 200
        server.wait(timeout=30)
    reloaded = Recommender.from_pretrained(tmp_path / "run")
    assert reloaded.model.n_items == len(reloaded.catalogue) == N_ITEMS + 2
    ranked = reloaded.recommend_lists([["kept-1", "item-3"]], k=5, exclude_seen=False)[0]
    assert [r.item_id for r in ranked] == [r["item_id"] for r in before["results"][0]]
    server, health = _start_server(tmp_path / "run", port)  # a restarted server serves them too
    try:
        assert health.json()["n_items"] == N_ITEMS + 2
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_cli_serve_answers_over_http(recommender: Recommender, tmp_path: Path) -> None:
    recommender.save_pretrained(tmp_path / "run")
    port = _free_port()
    server, health = _start_server(tmp_path / "run", port)
    try:
        assert health.json()["n_items"] == N_ITEMS
        response = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"histories": [["item-1"]], "k": 2})
        assert response.status_code == 200 and len(json.loads(response.text)["results"][0]) == 2
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_token_guards_items_and_the_body_cap_gives_413(tiny_lm_dir: Path) -> None:
    app = create_app(_model(tiny_lm_dir), token="s3cret", max_body_bytes=2000)
    new = {"items": [{"item_id": "guarded", "text": "red lens"}]}
    with TestClient(app) as guarded:
        assert guarded.post("/items", json=new).status_code == 401
        wrong = guarded.post("/items", json=new, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert guarded.get("/health").json()["n_items"] == N_ITEMS  # nothing added
        ok = guarded.post("/items", json=new, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == {"added": 1, "n_items": N_ITEMS + 1}
        assert guarded.post("/recommend", json={"histories": [["item-1"]], "k": 3}).status_code == 200  # reads: open
        big = {"histories": [["item-1"] * 900], "k": 3}  # ~9 kB of JSON
        too_big = guarded.post("/recommend", json=big)
        assert too_big.status_code == 413 and "over 2000 bytes" in too_big.json()["detail"]
        schema = guarded.get("/openapi.json").json()
        items = schema["paths"]["/items"]["post"]
        assert {"401", "413"} <= set(items["responses"]) and items["security"] == [{"HTTPBearer": []}]


def test_a_chunked_body_is_cut_at_the_cap_and_passed_on_below_it(tiny_lm_dir: Path) -> None:
    app = create_app(_model(tiny_lm_dir), max_body_bytes=2000)
    consumed = 0

    async def receive() -> dict[str, Any]:  # a chunked upload of 1,000 messages of 100 bytes
        nonlocal consumed
        consumed += 1
        return {"type": "http.request", "body": b" " * 100, "more_body": consumed < 1000}

    sent: list[dict[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/recommend", "raw_path": b"/recommend", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=30))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert consumed == 21  # 2,000 bytes, then the chunk that goes past them: nothing more is read
    assert b"over 2000 bytes" in b"".join(m.get("body", b"") for m in sent[1:])

    def pieces(payload: bytes) -> Any:  # no Content-Length: httpx sends it chunked
        yield from (payload[i : i + 7] for i in range(0, len(payload), 7))

    with TestClient(app) as chunked:
        body = json.dumps({"histories": [["item-1"]], "k": 2}).encode()
        response = chunked.post("/recommend", content=pieces(body), headers={"content-type": "application/json"})
        assert response.status_code == 200 and len(response.json()["results"][0]) == 2
        big = json.dumps({"histories": [["item-1"] * 900], "k": 3}).encode()
        assert chunked.post("/recommend", content=pieces(big)).status_code == 413


def test_new_texts_with_seen_items_kept_by_a_model_with_repeat_offsets(tiny_lm_dir: Path) -> None:
    """Once an HTTP 500: no catalogue item has the history's text, so no item gets a repeat offset."""
    with TestClient(create_app(_model(tiny_lm_dir, repeat_bias=True))) as test_client:
        asked = {"histories": [["violet prism nowhere in the catalogue"], ["item-3"]], "k": 4, "by_text": True}
        kept = test_client.post("/recommend", json={**asked, "exclude_seen": False})
        left = test_client.post("/recommend", json={**asked, "exclude_seen": True})
        assert kept.status_code == left.status_code == 200
        assert len(kept.json()["results"][0]) == 4 and kept.json()["results"][0] == left.json()["results"][0]


def test_search_and_the_explorer_page(client: TestClient) -> None:
    found = client.get("/search", params={"q": "MICROSCOPE", "limit": 5}).json()["items"]
    assert 0 < len(found) <= 5 and all("microscope" in item["text"] for item in found)
    everything = client.get("/search", params={"q": "", "limit": 100}).json()["items"]
    assert [i["item_id"] for i in everything] == [f"item-{i}" for i in range(N_ITEMS)]
    assert client.get("/search", params={"q": "item-7"}).json()["items"][0]["item_id"] == "item-7"
    assert client.get("/search", params={"limit": 0}).status_code == 422
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert all(f'id="{part}"' in page.text for part in ("query", "history", "results", "exclude", "add"))


def test_search_scans_without_the_catalogue_lock(recommender: Recommender, monkeypatch: pytest.MonkeyPatch) -> None:
    """/search takes the lock that every ranking needs only to read the catalogue's length; its scan (a full one
    for a query that matches nothing) runs without it, over that many rows."""
    import threading

    catalogue = recommender.catalogue
    scan = catalogue.search
    free: list[bool] = []

    def watched(query: str, limit: int, upto: int | None = None) -> list[int]:
        def probe() -> None:  # another thread, as a ranking would: the lock must be free during the scan
            got = recommender._lock.acquire(timeout=5)
            free.append(got)
            if got:
                recommender._lock.release()

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join(10)
        assert upto == len(catalogue)
        return scan(query, limit, upto)

    monkeypatch.setattr(catalogue, "search", watched)
    with TestClient(create_app(recommender)) as test_client:
        assert test_client.get("/search", params={"q": "no item has this"}).json() == {"items": []}
        assert test_client.get("/search", params={"q": "item-3", "limit": 1}).json()["items"][0]["item_id"] == "item-3"
    assert free == [True, True]
    assert scan("item-", 100, upto=3) == [0, 1, 2] and scan("item-", 2) == [0, 1]


def test_metrics_count_requests_and_the_access_log(tiny_lm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with TestClient(create_app(_model(tiny_lm_dir), access_log=True, max_body_bytes=2000)) as logged:
        for _ in range(3):
            assert logged.post("/recommend", json={"histories": [["item-1"]], "k": 2}).status_code == 200
        assert logged.post("/recommend", json={"histories": [["nope"]], "k": 2}).status_code == 422
        big = {"histories": [["item-1"] * 900], "k": 3}
        assert logged.post("/recommend", json=big).status_code == 413  # refused bodies are counted too
        assert logged.get("/no/such/path").status_code == 404
        text = logged.get("/metrics").text
    assert 'unisrec_requests_total{method="POST",path="/recommend",status="200"} 3' in text
    assert 'unisrec_requests_total{method="POST",path="/recommend",status="422"} 1' in text
    assert 'unisrec_requests_total{method="GET",path="other",status="404"} 1' in text  # bounded labels
    assert 'unisrec_requests_total{method="POST",path="/recommend",status="413"} 1' in text
    assert 'unisrec_request_seconds_count{path="/recommend"} 5' in text
    assert 'unisrec_request_seconds_bucket{path="/recommend",le="+Inf"} 5' in text
    assert f"unisrec_catalogue_items {N_ITEMS}" in text
    log = [line for line in capsys.readouterr().err.splitlines() if '"POST /recommend"' in line]
    assert len(log) == 5 and " 200 " in log[0] and log[0].endswith("ms") and " 413 " in log[-1]


def test_create_app_takes_a_run_folder_and_persists_to_it(recommender: Recommender, tmp_path: Path) -> None:
    """``create_app(RUN)`` loads the run as a Recommender and writes POST /items to RUN/catalogue/."""
    recommender.save_pretrained(tmp_path / "run")
    with TestClient(create_app(tmp_path / "run")) as test_client:
        assert test_client.get("/health").json()["n_items"] == N_ITEMS
        added = test_client.post("/items", json={"items": [{"item_id": "new-1", "text": "red lens kit"}]})
        assert added.status_code == 200 and added.json() == {"added": 1, "n_items": N_ITEMS + 1}
    assert [p.name for p in (tmp_path / "run" / "catalogue").glob("*.safetensors")] == ["00000001.safetensors"]
    assert Recommender.from_pretrained(tmp_path / "run").catalogue.item_ids[-1] == "new-1"


def test_search_waits_for_the_catalogue_off_the_event_loop(recommender: Recommender) -> None:
    """While items are being added (the catalogue's lock held), /search waits in a worker thread: /health and
    every other request still answer."""
    import threading

    with TestClient(create_app(recommender)) as test_client:
        release = threading.Event()
        holding = threading.Event()

        def writer() -> None:  # stands for a long add_items
            with recommender._lock:
                holding.set()
                release.wait(30)

        searched: list[int] = []
        threading.Thread(target=writer).start()
        assert holding.wait(10)
        searcher = threading.Thread(target=lambda: searched.append(test_client.get("/search?q=lens").status_code))
        searcher.start()
        answered: list[int] = []
        health = threading.Thread(target=lambda: answered.append(test_client.get("/health").status_code))
        health.start()
        health.join(10)  # a search holding the event loop would keep /health waiting until the release
        health_answered, still_waiting = list(answered), searcher.is_alive()
        release.set()
        searcher.join(10)
        health.join(10)
        assert health_answered == [200] and still_waiting and searched == [200]


def test_serve_on_a_taken_port_or_a_small_cap_is_a_one_line_error(recommender: Recommender, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The port is taken before the run loads (it printed its address, then uvicorn's error, exit 3); a cap
    below the catalogue's size is refused rather than served with every addition refused."""
    from unisrec.cli import main

    recommender.save_pretrained(tmp_path / "run")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        capsys.readouterr()
        assert main(["serve", str(tmp_path / "run"), "--port", str(port)]) == 2  # before the model loads
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"unisrec serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    from unisrec.errors import UnisrecError
    from unisrec.serve import listen_on

    first = listen_on("127.0.0.1", 0)  # a second server while the first one loads its model: refused at once
    try:
        with pytest.raises(UnisrecError, match="Address already in use"):
            listen_on("127.0.0.1", first[0].getsockname()[1])
    finally:
        for listener in first:
            listener.close()
    every = listen_on("", 0)  # every interface (IPv4 and, where the machine has it, IPv6): one port for all
    try:
        assert len({listener.getsockname()[1] for listener in every}) == 1
        assert every[0].getsockname()[1] > 0 and len(every) == len({listener.family for listener in every})
    finally:
        for listener in every:
            listener.close()
    assert main(["serve", str(tmp_path / "run"), "--port", "0", "--max-catalogue", str(N_ITEMS - 1)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"unisrec serve: error: --max-catalogue {N_ITEMS - 1} is below the {N_ITEMS} items the catalogue holds "
        "already; give a larger cap")


def test_serve_on_port_0_says_the_port_it_listens_on(recommender: Recommender, tmp_path: Path) -> None:
    recommender.save_pretrained(tmp_path / "run")
    command = [sys.executable, "-m", "unisrec", "serve", str(tmp_path / "run"), "--port", "0", "--threads", "1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()  # "unisrec serve: http://127.0.0.1:PORT (docs at /docs)"
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        assert port > 0
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["n_items"] == N_ITEMS
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_command_lines_defaults_are_the_python_apis() -> None:
    """`unisrec serve` / `unisrec recommend` and serve() / Recommender.from_pretrained() mirror each other: the
    same defaults (serve() used 0 threads, torch's choice, where the command used 1)."""
    import inspect

    from unisrec.cli import build_parser
    from unisrec.recommend import Recommender
    from unisrec.serve import serve

    args = vars(build_parser().parse_args(["serve", "run"]))
    for name, parameter in inspect.signature(serve).parameters.items():
        if name not in ("run_dir", "token"):  # the token's default is $UNISREC_TOKEN on the command line
            assert args[name] == parameter.default, name
    args = vars(build_parser().parse_args(["recommend", "run", "--history", "a"]))
    for name, parameter in inspect.signature(Recommender.from_pretrained).parameters.items():
        if name != "run_dir":
            assert args[name] == parameter.default, name
