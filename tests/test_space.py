"""The Gradio Space, end to end: headless Chromium (Debian's `chromium`, driven by Playwright) against the real app
serving the bundled model, and the API path with out-of-range inputs."""

import importlib.util
import os
import shutil
import socket
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def load_app():
    spec = importlib.util.spec_from_file_location("space_app", ROOT / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def space():
    from diffusers_mpdit import BUNDLED_MODEL

    app = load_app()
    demo = app.build_demo(app.load(BUNDLED_MODEL, "cpu"), title="MPDiT test")
    demo.queue(default_concurrency_limit=1, max_size=4)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield app, f"http://127.0.0.1:{port}/"
    demo.close()


def test_browser_picks_a_class_generates_and_shows_the_gallery(space, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    _, url = space
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (apt-get install chromium); scripts/setup.sh installs it as root"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        picker = page.get_by_label("Class", exact=True)
        picker.click()
        picker.fill("sand")  # the picker is searchable: typing filters the names
        page.get_by_role("option", name="sandal (5)").click()
        expect(picker).to_have_value("sandal (5)")
        page.get_by_label("number input for Number of images").fill("2")
        page.get_by_label("number input for Sampling steps").fill("4")
        page.get_by_label("Random seed").uncheck()
        page.get_by_role("button", name="Generate").click()
        thumbnails = page.locator("#samples button img")  # the gallery's own images, not Gradio's icons
        expect(thumbnails).to_have_count(2, timeout=120_000)
        expect(page.locator("#samples").get_by_text("sandal (5), seed 1")).to_have_count(1)
        screenshot = tmp_path / "space.png"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert screenshot.stat().st_size > 10_000


def test_api_enforces_the_bounds_the_sliders_show(space):
    from gradio_client import Client

    app, url = space
    client = Client(url, verbose=False)
    good = dict(class_id=7, num_images=1, steps=2, guidance=1.5, low=0.0, high=0.9, seed=3, randomize=False)
    result, seed = client.predict(*good.values(), "heun", api_name="/generate")
    assert seed == 3 and len(result) == 1 and result[0]["caption"] == "sneaker (7), seed 3"
    # Gradio checks the sliders' ranges, the app the rest; either way the caller gets the reason.
    for name, bad, reason in [
        ("num_images", app.MAX_IMAGES + 1, "greater than maximum value 8"),
        ("steps", 10_000, "greater than maximum value 100"),
        ("guidance", -1.0, "less than minimum value 0"),
        ("low", 1.0, r"guidance interval \(from t, to t\) must be \(low, high\) with 0 <= low <= high <= 1"),
        ("class_id", 99, "not in the list of choices|Pick a class"),
    ]:
        with pytest.raises(Exception, match=reason):
            client.predict(*(good | {name: bad}).values(), "euler", api_name="/generate")
    with pytest.raises(Exception, match="not in the list of choices|Scheduler must be"):
        client.predict(*good.values(), "ddim", api_name="/generate")
    # The official samplers need two time points.
    with pytest.raises(Exception, match="Sampling steps must be an integer >= 2 for the sde sampler"):
        client.predict(*(good | {"steps": 1}).values(), "sde", api_name="/generate")


def test_the_entry_point_serves_with_its_queue_limits(tmp_path):
    import subprocess
    import sys
    import time

    from gradio_client import Client

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "space" / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
        + ["--device", "cpu", "--concurrency", "1", "--max-queue", "1"],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        slow = dict(class_id=5, num_images=4, steps=60, guidance=1.5, low=0.0, high=1.0, seed=1, randomize=False)

        def submit_and_wait_for(*codes):
            job = client.submit(*slow.values(), "euler", api_name="/generate")
            deadline = time.time() + 60
            while job.status().code.name not in codes:
                assert time.time() < deadline, (codes, job.status())
                time.sleep(0.02)
            return job

        # One generation runs (reporting its progress), one waits; with --max-queue 1 the next is turned away.
        running, waiting = submit_and_wait_for("PROCESSING", "PROGRESS"), submit_and_wait_for("IN_QUEUE")
        refused = client.submit(*slow.values(), "euler", api_name="/generate")
        with pytest.raises(Exception, match="(?i)queue is full"):
            refused.result(timeout=300)
        assert [(len(images), seed) for images, seed in (running.result(300), waiting.result(300))] == [(4, 1), (4, 1)]
    finally:
        server.terminate()
        server.wait(timeout=30)
