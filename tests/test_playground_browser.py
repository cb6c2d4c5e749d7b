"""The playground at ``GET /`` in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium; nothing is downloaded), against the real server with a key, on the Gemma 3 270M GGUF.

Chromium is a system package: where it is absent this test skips, except under ``CI=true`` where it fails
(``.ci/run`` installs it). Set ``PLAYGROUND_SCREENSHOT=path.png`` to save a screenshot of the answered page.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serve_fixtures import server_env, start_server

pytestmark = pytest.mark.slow  # every test here starts a server and a browser

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
KEY = "s3cret"


@pytest.fixture(scope="module")
def driver():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        reason = "Debian's chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run the browser test")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)  # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def server(gemma_gguf, tmp_path_factory):
    args = ["--model", str(gemma_gguf), "--ctx", "2048", "--temperature", "0", "--max-tokens", "8", "--api-key", KEY]
    s = start_server(args, tmp_path_factory.mktemp("serve"), server_env(tmp_path_factory.mktemp("home")))
    yield s
    assert s.stop(signal.SIGINT) == 0, s.log()[-2000:]


def ask(d, server, question: str, key: str, **fields) -> None:
    """Open the page, fill the form (``fields``: element id -> value) and press Ask."""
    d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    d.get(server.base + "/")
    d.find_element(By.ID, "question").send_keys(question)
    for name, value in {"api-key": key, **fields}.items():
        box = d.find_element(By.ID, name)
        box.clear()
        box.send_keys(str(value))
    d.find_element(By.ID, "ask").click()


def status(d) -> str:
    return d.find_element(By.ID, "status").text


def finished(d, timeout: float = 180) -> str:
    WebDriverWait(d, timeout).until(lambda d: status(d).startswith(("done", "failed", "stopped")))
    return status(d)


def test_a_wrong_key_shows_the_servers_error(driver, server):
    ask(driver, server, "Why is bone tough?", "wrong")
    assert finished(driver, 30) == "failed"
    error = driver.find_element(By.ID, "error")
    assert error.is_displayed() and error.text == "401: missing or wrong API key: send `Authorization: Bearer KEY`"
    assert driver.find_elements(By.CSS_SELECTOR, "#cards .card") == []


def test_two_rounds_show_two_cards_a_diff_and_the_final_answer_and_fit_a_phone(driver, server):
    ask(driver, server, "Why is spider silk so tough?", KEY, rounds=2)
    assert finished(driver).startswith("done"), driver.find_element(By.ID, "error").text
    assert not driver.find_element(By.ID, "error").is_displayed()
    cards = driver.find_elements(By.CSS_SELECTOR, "#cards .card")
    assert [c.get_attribute("data-round") for c in cards] == ["1", "2"]
    assert "critique" in cards[0].text.lower() and cards[0].find_elements(By.CSS_SELECTOR, ".diff") == []
    inserted = [e.text for e in cards[1].find_elements(By.CSS_SELECTOR, ".diff ins") if e.text.strip()]
    assert inserted, cards[1].text  # round 2's thinking is the critic's rewrite of round 1's: words were added
    answer = driver.find_element(By.ID, "final-answer").text
    assert answer.strip() and not answer.startswith("(no answer")
    assert driver.find_element(By.ID, "stop-reason").text
    assert "tokens/s" in driver.find_element(By.ID, "rate").text
    if shot := os.environ.get("PLAYGROUND_SCREENSHOT"):
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, max(800, height + 200))  # the window is taller than its viewport
        driver.save_screenshot(shot)
        driver.set_window_size(1280, 1000)

    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    WebDriverWait(driver, 5).until(lambda d: d.execute_script("return window.innerWidth") < 1280)
    widths = driver.execute_script("return [document.documentElement.scrollWidth, document.documentElement.clientWidth, window.innerWidth]")
    assert widths == [390, 390, 390], widths  # nothing overflows sideways (a phone would zoom out to show it)
    wide = driver.execute_script(
        "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5).map(e => e.id || e.className || e.tagName)"
    )
    assert wide == []
    one, two = (c.rect for c in driver.find_elements(By.CSS_SELECTOR, "#cards .card"))
    assert one["x"] == two["x"] and two["y"] >= one["y"] + one["height"]  # the cards stack


def test_stop_cancels_the_request_on_the_server(driver, server):
    before = server.health()["cancelled"]
    ask(driver, server, "Why is spider silk so tough?", KEY, rounds=3, **{"max-tokens": 400, "temperature": 0.9})
    WebDriverWait(driver, 60).until(lambda d: any(e.text.strip() for e in d.find_elements(By.CSS_SELECTOR, "#cards .card .text")))
    driver.find_element(By.ID, "stop").click()
    assert finished(driver, 10).startswith("stopped")
    deadline = time.monotonic() + 10
    while server.health()["cancelled"] != before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.health()["cancelled"] == before + 1
    assert server.wait_idle(timeout=5) < 5  # the 3-round, 400-token request no longer runs
