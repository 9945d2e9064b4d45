"""The explorer page in a real headless browser (Debian's Chromium driven by Selenium): slow, needs chromium.

Clicks through one history, checks the rendered top k against the API's answer, adds an item by its text and
sees it ranked; saves a screenshot (``UNISREC_SCREENSHOT=path`` to keep it, e.g. docs/explorer.png).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from unisrec.recommend import Recommender

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tiny_lm_dir: Path) -> Iterator[str]:
    import uvicorn
    from test_serve import _model

    from unisrec.serve import create_app

    recommender: Recommender = _model(tiny_lm_dir)
    port = _free_port()
    config = uvicorn.Config(create_app(recommender), host="127.0.0.1", port=port, log_level="warning")
    app_server = uvicorn.Server(config)
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/health", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
    yield url
    app_server.should_exit = True
    thread.join(timeout=10)


def test_click_through_a_history_and_add_an_item(server: str, tmp_path: Path) -> None:
    if shutil.which("chromedriver") is None or shutil.which("chromium") is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or ""
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))
    try:
        driver.get(server + "/")
        wait.until(lambda d: "items" in d.find_element(By.ID, "info").text)
        driver.find_element(By.ID, "query").send_keys("microscope")


        def settled(d: webdriver.Chrome) -> bool:  # the answer to the full query (earlier keystrokes' answers gone)
            texts = [li.text for li in d.find_elements(By.CSS_SELECTOR, "#matches li")]
            return len(texts) > 1 and all("microscope" in t for t in texts)

        wait.until(settled)
        time.sleep(0.5)
        picked = []
        for index in (0, 1):
            match = driver.find_elements(By.CSS_SELECTOR, "#matches li")[index]
            picked.append(match.get_attribute("data-item-id"))
            match.click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 2)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr")) == 10)
        shown = [row.get_attribute("data-item-id") for row in driver.find_elements(By.CSS_SELECTOR, "#results tr")]
        expected = httpx.post(server + "/recommend", json={"histories": [picked], "k": 10, "exclude_seen": True})
        assert shown == [r["item_id"] for r in expected.json()["results"][0]]  # the page shows the API's ranking
        assert not set(shown) & set(picked)  # exclude-seen is on by default

        driver.find_element(By.ID, "exclude").click()  # include seen items: the ranking is recomputed
        wait.until(lambda d: [r.get_attribute("data-item-id") for r in d.find_elements(By.CSS_SELECTOR,
                                                                                         "#results tr")] != shown)
        k = driver.find_element(By.ID, "k")  # rank the whole catalogue: wherever the new item lands, it is shown
        k.clear()
        k.send_keys("50")
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", k)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr")) == 40)
        driver.find_element(By.ID, "new-id").send_keys("brand-new")
        text = driver.find_element(By.CSS_SELECTOR, "#history li").text.split(" [")[0]  # a twin of item 1
        driver.find_element(By.ID, "new-text").send_keys(text)
        driver.find_element(By.ID, "add").click()
        wait.until(lambda d: "added brand-new" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results tr.new"))  # the new item is ranked ...
        new_row = driver.find_element(By.CSS_SELECTOR, "#results tr.new")
        assert new_row.get_attribute("data-item-id") == "brand-new"  # ... and highlighted
        assert len(driver.find_elements(By.CSS_SELECTOR, "#results tr")) == 41
        k.clear()
        k.send_keys("10")
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", k)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr")) == 10)
        shot = Path(os.environ.get("UNISREC_SCREENSHOT", str(tmp_path / "explorer.png")))
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
