"""The web demo as a person uses it: the app on 127.0.0.1, Debian's chromium clicking through it, a screenshot kept.

The browser tests are slow tests (an app server process and a browser): `pytest -m slow` and CI run them.

Needs /usr/bin/chromium and /usr/bin/chromedriver (``apt-get install chromium chromium-driver``): skipped without
them, failed without them under CI (``CI=true``). The screenshot goes to ``$TEST_ARTIFACTS_DIR`` (default
``tests/artifacts/``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
IN_CI = os.environ.get("CI", "").lower() == "true"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "tests" / "artifacts")
STEPS = 5  # the tiny pipeline's respacing


def _require_browser() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (the dev extra)")
    if missing:
        reason = f"browser test needs {', '.join(missing)}: apt-get install chromium chromium-driver"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: .ci/run installs them)")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """scripts/app.py serving a tiny random pipeline saved to a temporary folder, as `make app` would serve one."""
    _require_browser()
    from test_app_chain import tiny_pipeline

    folder = tmp_path_factory.mktemp("app")
    tiny_pipeline(respacing=str(STEPS)).save_pretrained(folder / "pipeline")
    port = _free_port()
    log = (folder / "app.log").open("w")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_TEMP_DIR=str(folder / "gradio"))
    process = subprocess.Popen(
        [sys.executable, "scripts/app.py", "--pipeline", str(folder / "pipeline"), "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{(folder / 'app.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer at {url} within 120 s:\n{(folder / 'app.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(app_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--window-size=1280,1400",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request, to check none leaves loopback
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for(driver, condition, what: str, timeout: float = 60):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        path = ARTIFACTS / "app_failure.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
        pytest.fail(f"timed out waiting for {what}; page text:\n{driver.find_element('tag name', 'body').text[:2000]}\n(screenshot: {path})")


def _counter(driver) -> str:
    return driver.find_element("css selector", "#step-counter").text


def _image_src(driver, elem_id: str) -> str | None:
    images = driver.find_elements("css selector", f"#{elem_id} img")
    return images[0].get_attribute("src") if images else None


def _click(driver, elem_id: str) -> None:
    driver.find_element("css selector", f"#{elem_id}").click()


def _set_count(driver, n: int) -> None:
    box = driver.find_element("css selector", "#step-count input")
    box.clear()
    box.send_keys(str(n))


def _click_and_wait(driver, button: str, counter_text: str, old_src: str | None) -> str:
    """Click ``button``; wait for the counter to read ``counter_text`` and the x_t image to be a new one."""
    _click(driver, button)
    _wait_for(driver, lambda d: counter_text in _counter(d), f"{counter_text!r} in the step counter after {button}")
    return _wait_for(driver, lambda d: (src := _image_src(d, "xt-image")) and src != old_src and src, f"a new x_t image after {button}")


@pytest.mark.slow  # an app server process and a browser
def test_generate_then_step_through_the_chain_in_a_browser(app_url, browser):
    driver = browser
    driver.get(app_url)
    _wait_for(driver, lambda d: d.find_elements("css selector", "#generate-btn"), "the page to render")
    assert "Loaded" in driver.find_element("css selector", "#pipeline-info").text
    assert _image_src(driver, "xt-image") is None

    # Generate: the whole chain, images appear, the counter reads the end.
    src = _click_and_wait(driver, "generate-btn", f"step {STEPS} of {STEPS}", None)
    assert src.startswith(app_url) and _image_src(driver, "x0-image")

    # Diffuse 2 back up the grid, then Denoise 2 down again.
    _set_count(driver, 2)
    src = _click_and_wait(driver, "diffuse-btn", f"step {STEPS - 2} of {STEPS}, t = ", src)
    src = _click_and_wait(driver, "denoise-btn", f"step {STEPS} of {STEPS}", src)

    # Reset to a fresh x_T, then Denoise by hand: the counter moves one click at a time.
    src = _click_and_wait(driver, "reset-btn", f"step 0 of {STEPS}, t = ", src)
    src = _click_and_wait(driver, "denoise-btn", f"step 2 of {STEPS}, t = ", src)
    x0_src = _image_src(driver, "x0-image")
    assert x0_src and x0_src != src  # x_t and the predicted x_0 side by side
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "app_step_through.png"
    assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    # Past the end: a readable error, and the chain stays where it was.
    _set_count(driver, 9)
    _click(driver, "denoise-btn")
    _wait_for(driver, lambda d: "cannot denoise 9 steps" in d.find_element("tag name", "body").text, "the error message")
    assert f"step 2 of {STEPS}" in _counter(driver)

    # Everything the page loaded came from the app itself: nothing from the internet (fonts, CDNs, analytics).
    requested = {
        json.loads(entry["message"])["message"]["params"]["request"]["url"]
        for entry in driver.get_log("performance")
        if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"
    }
    outside = sorted(url for url in requested if url.startswith(("http:", "https:", "ws:", "wss:")) and not url.startswith(app_url))
    assert not outside, f"the page fetched from outside the app: {outside[:10]}"

    # Another folder from the page: a missing one is explained, the first one loads again.
    path_box = driver.find_element("css selector", "#pipeline-path textarea, #pipeline-path input")
    folder = path_box.get_attribute("value")
    for path, expected in ((folder + "-missing", "No pipeline folder at"), (folder, "Loaded")):
        path_box.clear()
        path_box.send_keys(path)
        _click(driver, "load-btn")
        _wait_for(driver, lambda d: expected in d.find_element("css selector", "#pipeline-info").text, f"{expected!r} after Load")


def test_missing_pipeline_is_explained_and_only_loopback_is_served(tmp_path):
    from guided_diffusers.app.web import DEFAULT_PIPELINE, check_loopback, pipeline_message

    pipeline, message = pipeline_message(str(tmp_path / "nowhere"))
    assert pipeline is None and "No pipeline folder at" in message and "Load" in message
    if not (ROOT / DEFAULT_PIPELINE / "model_index.json").exists():
        assert "make demo" in pipeline_message(DEFAULT_PIPELINE)[1]
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_loopback(host)
    for host in ("0.0.0.0", "192.168.1.4", "example.com"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(host)


@pytest.mark.slow  # an app server process and a browser
def test_inpaint_tab_fills_what_is_painted_in_a_browser(app_url, browser, tmp_path):
    """Same app process and browser as above: upload an image into the Inpaint tab, paint a stroke, Fill."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains

    driver = browser
    driver.get(app_url)
    _wait_for(driver, lambda d: d.find_elements("css selector", "#generate-btn"), "the page to render")
    tab = _wait_for(driver, lambda d: [b for b in d.find_elements("css selector", "button[role=tab]") if "Inpaint" in b.text], "the Inpaint tab")
    tab[0].click()
    picture = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(picture)
    upload = _wait_for(driver, lambda d: d.find_elements("css selector", "#inpaint-editor input[type=file]"), "the editor's upload")
    upload[0].send_keys(str(picture))
    canvas = _wait_for(driver, lambda d: [c for c in d.find_elements("css selector", "#inpaint-editor canvas") if c.size["width"] > 50],
                       "the editor's canvas")[0]
    brushes = [b for b in driver.find_elements("css selector", "#inpaint-editor button") if "brush" in (b.get_attribute("aria-label") or "").lower()]
    if brushes:
        brushes[0].click()
    ActionChains(driver).move_to_element(canvas).move_by_offset(-40, -20).click_and_hold().move_by_offset(80, 0) \
        .move_by_offset(0, 40).move_by_offset(-80, 0).release().perform()
    _click(driver, "inpaint-btn")
    _wait_for(driver, lambda d: "Filled" in d.find_element("css selector", "#inpaint-status").text, "the fill's status line", timeout=120)
    status = driver.find_element("css selector", "#inpaint-status").text
    assert "U-Net evaluations" in status and "jump length 10" in status
    assert _image_src(driver, "inpaint-result") and _image_src(driver, "inpaint-masked")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "app_inpaint.png"))


@pytest.mark.slow  # an app server process and a browser
def test_the_digits_pipeline_of_make_demo_generates_with_the_fast_recipe_in_a_browser(app_url, browser):
    """Same app process and browser: when `make demo` has written demo_output/pipeline, load it from the page (as
    `make app` opens it) and Generate with the defaults, which are the fast recipe's sampler and steps."""
    from guided_diffusers.app.web import DEFAULT_PIPELINE
    from guided_diffusers.pipelines.recipes import FAST_RECIPE

    digits = ROOT / DEFAULT_PIPELINE
    if not (digits / "model_index.json").is_file():
        pytest.skip(f"no digits pipeline at {digits} (make demo writes it)")
    driver = browser
    driver.get(app_url)
    _wait_for(driver, lambda d: d.find_elements("css selector", "#generate-btn"), "the page to render")
    path_box = driver.find_element("css selector", "#pipeline-path textarea, #pipeline-path input")
    path_box.clear()
    path_box.send_keys(str(digits))
    _click(driver, "load-btn")
    _wait_for(driver, lambda d: "10 classes" in d.find_element("css selector", "#pipeline-info").text, "the digits pipeline to load")
    checked = driver.find_elements("css selector", "#scheduler-choice input:checked")
    assert checked and checked[0].get_attribute("value") == "fast"
    steps = FAST_RECIPE.steps
    _click_and_wait(driver, "generate-btn", f"step {steps} of {steps}", _image_src(driver, "xt-image"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "app_digits.png"))
