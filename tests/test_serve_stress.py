"""The HTTP service under concurrent writers and readers, and its per-request work caps."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from safetensors import safe_open
from test_serve import N_ITEMS, WORDS, _model

from unisrec.errors import UnisrecError
from unisrec.recommend import Recommender
from unisrec.serve import (
    ENCODE_BATCH,
    MAX_BODY_BYTES,
    MAX_HISTORIES,
    MAX_HISTORY,
    MAX_K,
    MAX_NEW_ITEMS,
    MAX_TEXTS,
    TEXT_WORKERS,
    create_app,
    serve,
)

TOKEN = "stress-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """uvicorn serving ``app`` on a loopback port from a thread of the test process (real HTTP)."""

    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def saved_run(tiny_lm_dir: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    _model(tiny_lm_dir).save_pretrained(run)
    return run


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))


def _persisted_ids(folder: Path) -> list[str]:
    ids: list[str] = []
    for path in sorted(folder.glob("*.safetensors"), key=lambda p: int(p.stem)):
        with safe_open(str(path), framework="np") as handle:
            ids += json.loads((handle.metadata() or {})["ids"])
    return ids


def test_concurrent_items_and_recommendations_with_persistence_and_auth(saved_run: Path) -> None:
    """Threads add items (authorised) and ask for recommendations by id and by text at once: every answer is a
    200, seen items are always left out, no answer repeats an id; afterwards the catalogue (in memory and in
    RUN/catalogue/) holds exactly the added items, and a restarted model serves the same."""
    recommender = Recommender.from_pretrained(saved_run)
    app = create_app(recommender, token=TOKEN, run_dir=saved_run, max_batch=16)
    base_ids = [f"item-{i}" for i in range(N_ITEMS)]
    added: list[str] = []  # ids whose addition was answered with 200
    added_lock = threading.Lock()
    failures: list[str] = []
    counts = {"items": 0, "by_id": 0, "by_text": 0}

    def worker(number: int, url: str) -> None:
        rng = random.Random(number)
        with httpx.Client(base_url=url, timeout=60) as http:
            response = http.post("/items", json={"items": [{"item_id": f"intruder-{number}", "text": "red"}]})
            if response.status_code != 401:
                failures.append(f"no token: {response.status_code}")
            for step in range(24):
                kind = rng.choice(("items", "by_id", "by_id", "by_text"))
                with added_lock:
                    counts[kind] += 1
                if kind == "items":
                    new = [{"item_id": f"t{number}-{step}-{j}", "text": _text(rng)} for j in range(rng.randint(1, 3))]
                    response = http.post("/items", json={"items": new}, headers=AUTH)
                    if response.status_code != 200:
                        failures.append(f"items: {response.status_code} {response.text}")
                        continue
                    with added_lock:
                        added.extend(item["item_id"] for item in new)
                    continue
                k = rng.randint(1, 60)
                if kind == "by_id":
                    with added_lock:
                        known = base_ids + added
                    history = [rng.choice(known) for _ in range(rng.randint(1, 6))]
                    body: dict[str, Any] = {"histories": [history], "k": k}
                else:
                    history = [_text(rng) for _ in range(rng.randint(1, 4))]
                    body = {"histories": [history], "k": k, "by_text": True}
                response = http.post("/recommend", json=body)
                if response.status_code != 200:
                    failures.append(f"{kind}: {response.status_code} {response.text}")
                    continue
                ranked = response.json()["results"][0]
                ids = [r["item_id"] for r in ranked]
                if len(ids) != len(set(ids)) or not 0 < len(ids) <= k:
                    failures.append(f"{kind}: {len(ids)} ids for k={k}, {len(set(ids))} distinct")
                if kind == "by_id" and set(ids) & set(history):
                    failures.append(f"by_id: seen items {set(ids) & set(history)} recommended")
                if kind == "by_text" and {r["text"] for r in ranked} & set(history):
                    failures.append(f"by_text: items with a history text recommended: {ranked}")

    with ServerThread(app) as url:
        threads = [threading.Thread(target=worker, args=(n, url)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        health = httpx.get(f"{url}/health").json()
    assert failures == []
    assert counts["items"] > 10 and counts["by_id"] > 10 and counts["by_text"] > 10, counts
    catalogue = recommender.catalogue
    assert health["n_items"] == len(catalogue) == N_ITEMS + len(added)
    assert catalogue.item_ids[:N_ITEMS] == base_ids and sorted(catalogue.item_ids[N_ITEMS:]) == sorted(added)
    assert _persisted_ids(saved_run / "catalogue") == catalogue.item_ids[N_ITEMS:]  # in the order served
    restarted = Recommender.from_pretrained(saved_run)
    assert restarted.catalogue.item_ids == catalogue.item_ids
    # the stored vectors, exactly
    assert np.array_equal(restarted.model.item_text.numpy(), recommender.model.item_text.numpy())
    histories = [[added[0], "item-3"], added[-3:]]
    assert restarted.recommend_histories(histories, k=8).equals(recommender.recommend_histories(histories, k=8))


def test_text_work_is_encoded_in_bounded_batches_one_at_a_time(saved_run: Path) -> None:
    recommender = Recommender.from_pretrained(saved_run)
    recommender.encode_batch = 3
    encoder = recommender.text_encoder()
    sizes: list[int] = []
    running, most = [0], [0]
    original = encoder.encode

    def watched(texts: Any, progress: bool = False) -> np.ndarray:
        running[0] += 1
        most[0] = max(most[0], running[0])
        sizes.append(len(texts))
        time.sleep(0.01)  # widen the window for overlapping calls
        try:
            return original(texts)
        finally:
            running[0] -= 1

    encoder.encode = watched  # type: ignore[method-assign]
    app = create_app(recommender, token=TOKEN)
    rng = random.Random(0)
    answers: list[int] = []

    def send(number: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            if number % 2:
                body = {"histories": [[_text(rng) for _ in range(5)], [_text(rng) for _ in range(5)]], "by_text": True}
                answers.append(http.post("/recommend", json=body).status_code)
            else:
                new = [{"item_id": f"b{number}-{j}", "text": _text(rng)} for j in range(7)]
                answers.append(http.post("/items", json={"items": new}, headers=AUTH).status_code)

    with ServerThread(app) as url:
        threads = [threading.Thread(target=send, args=(n, url)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert answers == [200] * 8
    assert max(sizes) == 3 and most[0] == 1, (sizes, most)  # batches of encode_batch, never two at once
    assert sum(sizes) >= 4 * 7 + 4 * 5  # every new item text; each text history's distinct texts


@pytest.fixture
def small_client(tiny_lm_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_model(tiny_lm_dir), token=TOKEN, max_catalogue=N_ITEMS + 3)) as client:
        yield client


def test_per_request_caps_and_the_catalogue_cap(small_client: TestClient) -> None:
    texts = [f"red {i}" for i in range(MAX_TEXTS + 1)]
    response = small_client.post("/recommend", json={"histories": [texts[:500], texts[500:]], "by_text": True})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body"] and f"at most {MAX_TEXTS} texts in all its histories, got {MAX_TEXTS + 1}" in \
        error["msg"]
    by_id = small_client.post("/recommend", json={"histories": [["item-1"] * 500, ["item-2"] * 501]})
    assert by_id.status_code == 200  # the text cap is for texts only
    many = {"items": [{"item_id": f"m{i}", "text": "red"} for i in range(MAX_NEW_ITEMS + 1)]}
    response = small_client.post("/items", json=many, headers=AUTH)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "items"]

    three = {"items": [{"item_id": f"n{i}", "text": "blue lens"} for i in range(3)]}
    four = {"items": [{"item_id": f"o{i}", "text": "red kit"} for i in range(4)]}
    full = small_client.post("/items", json=four, headers=AUTH)
    assert full.status_code == 409
    assert full.json()["detail"] == (f"catalogue full: it holds {N_ITEMS} items and its cap is {N_ITEMS + 3} "
                                     "(--max-catalogue); 4 more cannot be added")
    assert small_client.post("/items", json=three, headers=AUTH).json() == {"added": 3, "n_items": N_ITEMS + 3}
    one = {"items": [{"item_id": "last", "text": "red"}]}
    assert small_client.post("/items", json=one, headers=AUTH).status_code == 409
    assert small_client.get("/health").json()["n_items"] == N_ITEMS + 3


def test_every_limit_is_in_the_openapi_schema(small_client: TestClient) -> None:
    schema = small_client.get("/openapi.json").json()
    description = schema["info"]["description"]
    for number in (MAX_BODY_BYTES, MAX_HISTORIES, MAX_HISTORY, MAX_K, MAX_TEXTS, MAX_NEW_ITEMS, N_ITEMS + 3,
                   ENCODE_BATCH, TEXT_WORKERS):
        assert str(number) in description, number
    recommend, items = schema["paths"]["/recommend"]["post"], schema["paths"]["/items"]["post"]
    assert {"409", "413", "422"} <= set(recommend["responses"]) and {"401", "409", "413", "422"} <= set(
        items["responses"])
    assert f"at most {N_ITEMS + 3} items" in items["responses"]["409"]["description"]
    assert f"{MAX_TEXTS} texts" in recommend["responses"]["422"]["description"]
    request = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    assert request["histories"]["maxItems"] == MAX_HISTORIES and request["k"]["maximum"] == MAX_K
    assert f"at most {MAX_TEXTS} texts" in request["by_text"]["description"]
    assert schema["components"]["schemas"]["AddItemsRequest"]["properties"]["items"]["maxItems"] == MAX_NEW_ITEMS


@pytest.mark.parametrize(("setting", "message"), [
    ({"token": ""}, "--token (or UNISREC_TOKEN) must not be empty"),
    ({"token": "  "}, "--token (or UNISREC_TOKEN) must not be empty"),
    ({"max_catalogue": 0}, "--max-catalogue must be a positive integer, got 0"),
    ({"max_body_bytes": -1}, "--max-body-bytes must be a positive integer, got -1"),
    ({"max_batch": 0}, "--max-batch must be a positive integer, got 0"),
])
def test_bad_service_settings_are_refused(tiny_lm_dir: Path, setting: dict[str, Any], message: str) -> None:
    with pytest.raises(UnisrecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_app(_model(tiny_lm_dir), **setting)


def test_a_non_loopback_host_without_a_token_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnisrecError):  # no run there: it stops after the warning, before listening
        serve(str(tmp_path / "nowhere"), host="0.0.0.0")
    assert "warning: listening on 0.0.0.0 without --token" in capsys.readouterr().err
    with pytest.raises(UnisrecError):
        serve(str(tmp_path / "nowhere"), host="0.0.0.0", token="t")
    with pytest.raises(UnisrecError):
        serve(str(tmp_path / "nowhere"), host="127.0.0.1")
    assert "warning" not in capsys.readouterr().err
