"""cascade app end to end in a real headless Chromium (selenium + Debian's chromium and
chromium-driver): load the page, upload a small PNG, run x2 LAINR-only, check the result's
size; a bad upload shows the loader's one line; the page made no request off this machine.
Screenshots go to outputs/app_screens/. Skips (with the reason) when gradio, selenium,
chromium or chromedriver is missing; .ci/run installs them where it can."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from cascade.data.io import save_image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCREENS = ROOT / "outputs" / "app_screens"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def _need(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[app]')")


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no {names[0]} on PATH (apt-get install -y chromium chromium-driver)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    _need("gradio")
    _need("selenium")
    chrome = _binary("chromium", "chromium-browser", "google-chrome")
    driver_path = _binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1300", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``cascade app`` in a subprocess on a free port, with the shipped checkpoints."""
    _need("gradio")
    if not (ROOT / "checkpoints" / "lainr").is_dir():
        pytest.skip("no checkpoints/lainr to serve")
    port = _free_port()
    work = tmp_path_factory.mktemp("app")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = open(work / "server.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "cascade.cli", "app", "--port", str(port),
                             "--pipeline", str(ROOT / "checkpoints"), "--out",
                             str(work / "out")], cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"cascade app exited: {(work / 'server.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("cascade app did not start in 180 s")
    yield url, work
    proc.terminate()
    proc.wait(30)
    log.close()


def _shot(driver, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENS / f"{name}.png"))


def _wait(driver, script: str, timeout: float = 180):
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.5)
    _shot(driver, "timeout")
    pytest.fail(f"timed out waiting for: {script}")


def _upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))


def _set_text(driver, selector: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, selector)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text, Keys.TAB)


def _choose(driver, group: str, label: str) -> None:
    from selenium.webdriver.common.by import By

    for option in driver.find_elements(By.CSS_SELECTOR, f"#{group} label"):
        if option.text.strip() == label:
            option.click()
            return
    pytest.fail(f"no option {label!r} in #{group}")


def _hosts(driver) -> set[str]:
    """Hosts of every request the page made (Chrome's performance log)."""
    hosts = set()
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            url = urlparse(msg["params"]["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss"):
                hosts.add(url.hostname)
    return hosts


def test_upload_upscale_x2_lainr_only_in_a_real_browser(browser, server, tmp_path):
    url, work = server
    w, h = 40, 32
    img = tmp_path / "small.png"
    save_image(torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)), img)
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")

    browser.get(url)
    _wait(browser, "document.querySelector('#run') !== null", 120)
    _shot(browser, "1_loaded")

    _upload(browser, bad)  # a bad upload: the loader's one line, and the page keeps going
    _wait(browser, "document.querySelector('#status').innerText.includes('not an image file')")
    _shot(browser, "2_bad_upload")

    assert "/tmp" not in browser.execute_script("return document.querySelector('#status')"
                                                ".innerText")  # the file's name, not its copy
    browser.find_element("css selector", "#upload button[aria-label=Clear]").click()
    _upload(browser, img)
    _wait(browser, f"document.querySelector('#status').innerText.includes('{w}x{h} input')")
    _set_text(browser, "#scale input", "2")
    _choose(browser, "stages", "inr")
    _shot(browser, "3_ready")
    browser.find_element("css selector", "#run").click()
    _wait(browser, "document.querySelector('#status').innerText.startsWith('done')", 300)
    size = _wait(browser, "(() => { const i = document.querySelector('#result img');"
                          " return i && i.complete && i.naturalWidth ?"
                          " [i.naturalWidth, i.naturalHeight] : null })()")
    assert size == [2 * w, 2 * h]
    _shot(browser, "4_result")
    plan = browser.execute_script("return document.querySelector('#plan').innerText")
    assert f"{w}x{h} -> {2 * w}x{2 * h}" in plan and "lainr" in plan

    hosts = _hosts(browser)
    assert hosts and hosts <= LOCAL_HOSTS, f"requests off this machine: {hosts - LOCAL_HOSTS}"
    assert len(list((work / "out").glob("0001_small_x2/small_x2.png"))) == 1


def test_a_diffusion_run_shows_samples_and_the_uncertainty_overlay(browser, server):
    """A built-in photo at x2 through one diffusion stage: a long job shows progress and
    stops on Stop; then 2 samples of 2 steps: the samples, the std overlay at the output's
    size and the slider appear (7_uncertainty.png is docs/images/app.png's source)."""
    url, _ = server
    browser.get(url)
    _wait(browser, "document.querySelector('#run') !== null", 120)
    browser.find_element("css selector", "#photo input").click()
    _wait(browser, "[...document.querySelectorAll('ul[role=listbox] li')].length > 0")
    for option in browser.find_elements("css selector", "ul[role=listbox] li"):
        if option.text.strip() == "coffee":
            option.click()
            break
    _wait(browser, "document.querySelector('#status').innerText.includes('64x64 input')")
    _set_text(browser, "#scale input", "2")
    _choose(browser, "stages", "inr+1")
    # a long job (16 samples, 50 steps) is stopped within a step, and the page goes on
    for selector, value in (("#samples input[type=number]", "16"),
                            ("#steps input[type=number]", "50")):
        _set_text(browser, selector, value)
    browser.find_element("css selector", "#run").click()
    _wait(browser, "document.body.innerText.includes('of 16: sr3_x2')", 120)  # the step bar
    _shot(browser, "5_progress")
    browser.find_element("css selector", "#stop").click()
    _wait(browser, "document.querySelector('#status').innerText.startsWith('stopped')", 120)
    for selector, value in (("#samples input[type=number]", "2"),
                            ("#steps input[type=number]", "2")):
        _set_text(browser, selector, value)
    browser.find_element("css selector", "#run").click()
    _wait(browser, "document.querySelector('#status').innerText.startsWith('done')", 600)
    _choose_tab(browser, "samples")
    assert _wait(browser, "document.querySelectorAll('#samples img').length") >= 2
    _shot(browser, "6_samples")
    _choose_tab(browser, "uncertainty")
    size = _wait(browser, "(() => { const i = document.querySelector('#overlay img');"
                          " return i && i.complete && i.naturalWidth ?"
                          " [i.naturalWidth, i.naturalHeight] : null })()")
    assert size == [128, 128]
    _shot(browser, "7_uncertainty")
    _choose_tab(browser, "compare")
    _wait(browser, "document.querySelectorAll('#compare img').length >= 2")
    _shot(browser, "8_compare")
    hosts = _hosts(browser)
    assert hosts <= LOCAL_HOSTS, f"requests off this machine: {hosts - LOCAL_HOSTS}"


def _choose_tab(driver, name: str) -> None:
    for tab in driver.find_elements("css selector", "button[role=tab]"):
        if tab.text.strip() == name:
            tab.click()
            time.sleep(0.5)
            return
    pytest.fail(f"no tab {name!r}")
