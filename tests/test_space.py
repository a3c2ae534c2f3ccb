"""The Gradio Space, end to end: headless Chromium (Debian's `chromium`, driven by Playwright) against the real app
serving the bundled model, and the API path with out-of-range inputs."""

import importlib.util
import json
import math
import os
import re
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
def pipe():
    from diffusers_mpdit import BUNDLED_MODEL

    return load_app().load(BUNDLED_MODEL, "cpu")


@pytest.fixture(scope="module")
def space(pipe):
    app = load_app()
    demo = app.build_demo(pipe, title="MPDiT test")
    demo.queue(default_concurrency_limit=1, max_size=4)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield app, f"http://127.0.0.1:{port}/"
    demo.close()


def bundled_model_facts() -> tuple[dict[int, str], str]:
    """The bundled model's class names and the description the page should give, read from its files on disk
    rather than through the app or the pipeline."""
    from safetensors import safe_open

    from diffusers_mpdit import BUNDLED_MODEL

    root = Path(BUNDLED_MODEL)
    index = json.loads((root / "model_index.json").read_text())
    transformer = json.loads((root / "transformer" / "config.json").read_text())
    assert index["vae"] == [None, None], "a pixel-space model: height and width are the transformer's sample_size"
    side = transformer["sample_size"]
    # A pixel-space model's images have the transformer's input channels.
    colour = {1: "greyscale", 3: "RGB"}[transformer["in_channels"]]
    with safe_open(root / "transformer" / "diffusion_pytorch_model.safetensors", "np") as weights:
        count = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    assert 1e6 <= count < 1e9
    names = {int(k): v for k, v in index["id2label"].items()}
    assert len(names) == transformer["num_classes"]
    facts = f"the bundled Fashion-MNIST demo model: {side}x{side} {colour}, {count / 1e6:.1f}M parameters, "
    return names, facts + f"{len(names)} classes"


def test_browser_picks_a_class_generates_and_shows_the_gallery(space, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    _, url = space
    names, facts = bundled_model_facts()
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (apt-get install chromium); scripts/setup.sh installs it as root"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        expect(page.locator("#model-info")).to_contain_text(facts)
        # One example row per class (class 0 included, which Gradio once showed as an empty cell), then heun's.
        class_cells = page.locator("#examples tbody tr td:first-child")
        expect(class_cells).to_have_count(len(names) + 1)
        assert class_cells.all_inner_texts() == [f"{names[i]} ({i})" for i in sorted(names)] + [f"{names[1]} (1)"]
        estimate = page.locator("#estimate")
        expect(estimate).to_contain_text(re.compile(r"about \d+(\.\d+)? (s|min) for 4 images at 50 steps"))
        picker = page.get_by_label("Class", exact=True)
        picker.click()
        picker.fill("sand")  # the picker is searchable: typing filters the names
        page.get_by_role("option", name="sandal (5)").click()
        expect(picker).to_have_value("sandal (5)")
        # The estimate follows the sliders.
        page.get_by_label("number input for Number of images").fill("3")
        page.get_by_label("number input for Number of images").press("Enter")
        expect(estimate).to_contain_text(re.compile(r"about \d+(\.\d+)? (s|min) for 3 images at 50 steps"))
        # As many images as the gallery has columns: the narrowest thumbnails, which the captions must fit.
        page.get_by_label("number input for Number of images").fill("4")
        page.get_by_label("number input for Sampling steps").fill("4")
        page.get_by_label("number input for Sampling steps").press("Enter")
        expect(estimate).to_contain_text(re.compile(r"about \d+(\.\d+)? (s|min) for 4 images at 4 steps"))
        page.get_by_label("Random seed").uncheck()
        # The longest seeds the picker allows: their captions must still fit their thumbnails.
        page.get_by_label("Seed", exact=True).fill("2147483640")
        page.get_by_role("button", name="Generate").click()
        thumbnails = page.locator("#samples button img")  # the gallery's own images, not Gradio's icons
        expect(thumbnails).to_have_count(4, timeout=120_000)
        captions = page.locator("#samples .caption-label")
        expect(captions).to_have_text([f"seed {2147483640 + i}" for i in range(4)])
        label = page.locator("#samples [data-testid=block-label]")
        expect(label).to_contain_text("sandal (5)")
        for element in [*captions.all(), label]:
            assert element.evaluate("e => e.scrollWidth <= e.clientWidth"), f"cut off: {element.inner_text()!r}"
        measured = r"\d+(\.\d+)? (s|min)"
        last_run = page.locator("#last-run")
        expect(last_run).to_contain_text(re.compile(rf"4 images, 4 steps \(euler\): {measured}"))
        # From now on the estimates start from the measured run: the same settings are estimated at its time.
        took = re.search(rf"\(euler\): ({measured})", last_run.inner_text())[1]
        expect(estimate).to_contain_text(f"about {took} for 4 images at 4 steps")
        expect(estimate).to_contain_text("from the last generation's measured time")
        screenshot = tmp_path / "space.png"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert screenshot.stat().st_size > 10_000


def test_api_enforces_the_bounds_the_sliders_show(space):
    from gradio_client import Client

    app, url = space
    client = Client(url, verbose=False)
    good = dict(class_id="7", num_images=1, steps=2, guidance=1.5, low=0.0, high=0.9, seed=3, randomize=False)
    result, seed = client.predict(*good.values(), "heun", api_name="/generate")
    assert seed == 3 and len(result) == 1 and result[0]["caption"] == "seed 3"
    # Gradio checks the sliders' ranges, the app the rest; either way the caller gets the reason.
    for name, bad, reason in [
        ("num_images", app.MAX_IMAGES + 1, "greater than maximum value 8"),
        ("steps", 10_000, "greater than maximum value 100"),
        ("guidance", -1.0, "less than minimum value 0"),
        ("low", 1.0, r"guidance interval \(from t, to t\) must be \(low, high\) with 0 <= low <= high <= 1"),
        ("class_id", "99", "not in the list of choices|Pick a class"),
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
        slow = dict(class_id="5", num_images=4, steps=60, guidance=1.5, low=0.0, high=1.0, seed=1, randomize=False)

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


def test_the_estimate_counts_the_evaluations_a_generation_makes(space, pipe, request):
    import torch

    from diffusers_mpdit.sampling import SAMPLERS, SamplingConfig

    app, _ = space
    scheduler_config = dict(pipe.scheduler.config)
    batches = []
    hook = pipe.transformer.register_forward_hook(lambda _module, args, _output: batches.append(args[0].shape[0]))
    request.addfinalizer(hook.remove)
    for scheduler in SAMPLERS:
        config = SamplingConfig(scheduler=scheduler, steps=4, guidance_scale=2.0, guidance_interval=(0.0, 0.6))
        planned = app.planned_rows(pipe, config, scheduler_config)
        batches.clear()
        pipe.scheduler = config.make_scheduler(scheduler_config)
        pipe(
            class_labels=[1, 2],
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
            **config.call_kwargs(pipe),
        )
        assert [2 * rows for rows in planned] == batches, scheduler
        assert 1 in planned and 2 in planned, "the interval guides some steps, not all"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "0"], "argument --port: expected an integer in [1, 65535], got 0"),
        (["--concurrency", "0"], "argument --concurrency: expected an integer >= 1, got 0"),
        (["--max-queue", "-1"], "argument --max-queue: expected an integer >= 1, got -1"),
        (["--model", "/does/not/exist"], "model '/does/not/exist': no such folder"),
        (["--lora", "/no/lora"], "--lora '/no/lora': no such file or folder"),
        (["--cache", "fast:2"], "--cache 'fast:2': unknown cache"),
    ],
)
def test_bad_command_line_values_stop_with_one_line(argv, expected, monkeypatch, capsys):
    app = load_app()
    if argv[0] != "--model":

        def load(*_args):
            raise AssertionError("the model was loaded before the flags were checked")

        # A flag's check must come before the model's load (and, today, before a server started on port 0).
        monkeypatch.setattr(app, "load", load)
    with pytest.raises(SystemExit) as stopped:
        app.main(argv)
    assert stopped.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_a_lora_given_at_start_up_adds_its_classes_to_the_picker(tmp_path):
    from conftest import tiny_pipeline
    from test_lora import _pipeline_with_lora, save_lora

    trained, new_classes = _pipeline_with_lora(["zebra"])
    save_lora(trained, tmp_path / "lora", new_classes)
    tiny_pipeline().save_pretrained(tmp_path / "base")
    app = load_app()
    pipe = app.load(str(tmp_path / "base"), "cpu", lora=str(tmp_path / "lora"), lora_scale=0.5)
    assert ("zebra (10)", "10") in [(name, value) for name, value in app.class_choices(pipe)]
    assert pipe.get_active_adapters() == ["lora"]
    line = app.describe_model(pipe, str(tmp_path / "base"), str(tmp_path / "lora"))
    assert f"with the LoRA `{tmp_path / 'lora'}`" in line and "11 classes" in line
