"""MPDiT Gradio Space: class-conditional image generation on CPU or GPU.

    python space/app.py [--model PATH_OR_HUB_ID] [--port 7860]

Without `--model` it serves the Fashion-MNIST demo model that ships with diffusers-mpdit. One generation runs at a
time (`--concurrency`), and at most `--max-queue` requests wait, so a crowd cannot exhaust memory.
"""

from __future__ import annotations

import argparse
import inspect
import os
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import gradio as gr

from diffusers_mpdit import BUNDLED_MODEL
from diffusers_mpdit.arguments import OneLineParser, integer, positive_int
from diffusers_mpdit.caches import parse_cache
from diffusers_mpdit.sampling import (
    DTYPES,
    FLAGS,
    SAMPLERS,
    SamplingConfig,
    add_sampling_arguments,
    check_model_path,
    load_pipeline,
    quiet_backend_warnings,
    upscale_nearest,
)

if TYPE_CHECKING:  # annotations only: importing it loads diffusers, whose backends' warnings main() silences first
    from diffusers_mpdit import MPDiTPipeline

MAX_IMAGES = 8
DEFAULT_IMAGES = 4
MAX_STEPS = 100
MAX_GUIDANCE = 10.0
MAX_SEED = 2**31 - 1
# Small models draw tiny images; the gallery shows them at least this big (nearest neighbour keeps the pixels sharp).
MIN_DISPLAY = 256
# Models with more classes than this get a spread of this many example rows, not one row per class.
MAX_EXAMPLE_CLASSES = 10
# The controls' names, for errors about their values.
UI_NAMES = {
    "scheduler": "Scheduler",
    "steps": "Sampling steps",
    "guidance_scale": "Guidance scale",
    "guidance_interval": "The guidance interval (from t, to t)",
}
CHANNEL_NAMES = {1: "greyscale", 3: "RGB", 4: "RGBA"}


def load(
    model: str,
    device: str | None = None,
    dtype: str = SamplingConfig.dtype,
    lora: str | None = None,
    lora_scale: float = SamplingConfig.lora_scale,
    cache: str | None = None,
) -> MPDiTPipeline:
    """The pipeline the Space serves (`diffusers_mpdit.sampling.load_pipeline`, with its device and dtype defaults).

    Args:
        model (`str`): A pipeline folder or a Hub repo id.
        device (`str`, *optional*): Where to put it; None: the accelerator if any, else the CPU.
        dtype (`str`): One of `DTYPES`.
        lora (`str`, *optional*): A LoRA folder, file or Hub id to load; its new classes join the picker.
        lora_scale (`float`): The LoRA's weight.
        cache (`str`, *optional*): A cache spec such as `level:3` (`diffusers_mpdit.caches`).
    """
    return load_pipeline(model, device, dtype, lora, lora_scale, cache)


def class_choices(pipe: MPDiTPipeline) -> list[tuple[str, str]]:
    """(shown name, class id as text) for the picker: the model's names with their ids (`ClassNames.name`).

    The ids are text because Gradio shows an example cell whose value is the integer 0 as empty.

    Args:
        pipe (`MPDiTPipeline`): The model.
    """
    names = pipe.class_names
    return [(f"{names.name(i)} ({i})", str(i)) for i in range(names.num_classes)]


def example_classes(num_classes: int) -> list[int]:
    """The classes the example rows show: every one for up to `MAX_EXAMPLE_CLASSES`, else that many spread evenly.

    Args:
        num_classes (`int`): The model's classes.
    """
    if num_classes <= MAX_EXAMPLE_CLASSES:
        return list(range(num_classes))
    return [round(k * (num_classes - 1) / (MAX_EXAMPLE_CLASSES - 1)) for k in range(MAX_EXAMPLE_CLASSES)]


def format_count(count: int) -> str:
    """A parameter count the way model cards write it: `1.9M`, `675.1M`, `2.0B`, `12.3k`.

    Args:
        count (`int`): The count.
    """
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.1f}{suffix}"
    return str(count)


def format_seconds(seconds: float) -> str:
    """A duration with the precision a person reads: `0.04 s`, `1.3 s`, `42 s`, `3.5 min`.

    Args:
        seconds (`float`): The duration.
    """
    if seconds < 0.1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def describe_model(
    pipe: MPDiTPipeline, model: str | None = None, lora: str | None = None, cache: str | None = None
) -> str:
    """One line naming the served model: its source, resolution, parameter count and classes, its LoRA and cache.

    Args:
        pipe (`MPDiTPipeline`): The loaded model.
        model (`str`, *optional*): What it was loaded from (a folder or a Hub id); None: the pipeline's own record.
        lora (`str`, *optional*): The LoRA loaded into it, if any.
        cache (`str`, *optional*): The cache spec enabled on it, if any.
    """
    model = model or pipe.name_or_path
    # check_model_path resolves the spellings a folder can have (`~`, and `bundled` where the package knows it).
    path = check_model_path(model)
    bundled = os.path.isdir(path) and os.path.samefile(path, BUNDLED_MODEL)
    name = "the bundled Fashion-MNIST demo model" if bundled else f"`{model}`"
    config = pipe.transformer.config
    side = config.sample_size * pipe.vae_scale_factor
    # The pipeline keeps the transformer's first in_channels outputs (a "joint" model predicts more), and a VAE
    # decodes those to its own channels.
    channels = pipe.vae.config.out_channels if pipe.vae is not None else config.in_channels
    colour = CHANNEL_NAMES.get(channels, f"{channels}-channel")
    classes = pipe.class_names.num_classes
    adapter = f" with the LoRA `{lora}`" if lora else ""
    adapter += f" {'and' if lora else 'with'} the cache `{parse_cache(cache)}`" if cache else ""
    return (
        f"Serving {name}{adapter}: {side}x{side} {colour}, {format_count(pipe.transformer.num_parameters())} "
        f"parameters, {classes} {'class' if classes == 1 else 'classes'}."
    )


# A NamedTuple rather than a dataclass: the tests load this file without registering it in sys.modules, which a
# dataclass's annotations need.
class EvaluationCost(NamedTuple):
    """Seconds one transformer evaluation of `rows` samples takes on this machine: `fixed + per_row * rows`."""

    fixed: float
    per_row: float

    def seconds(self, rows: int) -> float:
        """The time of one evaluation.

        Args:
            rows (`int`): Samples in the batch (twice the images on a guided step).
        """
        return self.fixed + self.per_row * rows


def measure_evaluation_cost(pipe: MPDiTPipeline, rows: int = 2 * DEFAULT_IMAGES) -> EvaluationCost:
    """Times the transformer at 1 row and at `rows` (after an untimed warm-up call), for the estimates.

    Args:
        pipe (`MPDiTPipeline`): The loaded model, on the device it serves from.
        rows (`int`): The larger batch; the default is a guided step of the default image count, so that the usual
            request is interpolated rather than extrapolated.
    """
    import torch

    transformer = pipe.transformer
    config = transformer.config
    device = transformer.device

    def timed(n: int) -> float:
        sample = torch.randn(n, config.in_channels, config.sample_size, config.sample_size, device=device)
        t = torch.full((n,), 0.5, device=device)
        labels = torch.zeros(n, dtype=torch.long, device=device)
        # Accelerators run asynchronously: wait for the work to be done, not just queued.
        if device.type != "cpu":
            torch.accelerator.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            transformer(sample.to(transformer.dtype), t, labels, return_dict=False)
        if device.type != "cpu":
            torch.accelerator.synchronize(device)
        return time.perf_counter() - start

    # The first call at a size pays one-time costs (allocation, kernel selection) that no generation pays again; the
    # faster of two calls is the one least disturbed by whatever else the machine runs.
    timed(rows)
    one, many = min(timed(1), timed(1)), min(timed(rows), timed(rows))
    per_row = max(many - one, 0.0) / (rows - 1)
    return EvaluationCost(fixed=max(one - per_row, 0.0), per_row=per_row)


def planned_rows(pipe: MPDiTPipeline, config: SamplingConfig, scheduler_config: Mapping[str, Any]) -> list[int]:
    """Samples per image in each transformer evaluation a generation makes (2 where it guides, else 1).

    Sets up the sampler's grid the way `MPDiTPipeline.__call__` does, without running the model (the tests compare
    the two, sampler by sampler).

    Args:
        pipe (`MPDiTPipeline`): The model, for its guidance defaults, classes and latent size.
        config (`SamplingConfig`): The generation's settings.
        scheduler_config (`Mapping`): The model's scheduler config.
    """
    from diffusers_mpdit.pipelines.timesteps import calculate_shift, retrieve_timesteps

    scheduler = config.make_scheduler(scheduler_config)
    call = config.call_kwargs(pipe)
    transformer = pipe.transformer.config
    extra = {}
    if (
        getattr(scheduler.config, "use_dynamic_shifting", False)
        and "mu" in inspect.signature(scheduler.set_timesteps).parameters
    ):
        extra["mu"] = calculate_shift((transformer.sample_size // transformer.patch_sizes[-1]) ** 2)
    sigmas = call.get("sigmas")
    timesteps, _ = retrieve_timesteps(
        scheduler, None if sigmas is not None else config.steps, "cpu", sigmas=sigmas, **extra
    )
    scale, interval = call["guidance_scale"], call["guidance_interval"]
    guides = scale != 1 and transformer.num_classes > 0
    rows = []
    for t in (timesteps.float() / scheduler.config.num_train_timesteps).tolist():
        guided = guides and (interval is None or interval[0] <= t <= interval[1])
        rows.append(2 if guided else 1)
    return rows


def build_demo(
    pipe: MPDiTPipeline,
    title: str = "MPDiT",
    model: str | None = None,
    cost: EvaluationCost | None = None,
    lora: str | None = None,
    cache: str | None = None,
) -> gr.Blocks:
    """The Space's interface around one loaded pipeline.

    Args:
        pipe (`MPDiTPipeline`): The model to serve.
        title (`str`): Page heading.
        model (`str`, *optional*): What `pipe` was loaded from, to name it on the page; None: the pipeline's record.
        cost (`EvaluationCost`, *optional*): The model's measured speed, for the time estimates; None: measure it now.
        lora (`str`, *optional*): The LoRA loaded into `pipe`, to name it on the page.
        cache (`str`, *optional*): The cache spec enabled on `pipe`, to name it on the page.
    """
    choices = class_choices(pipe)
    valid_ids = {class_id for _, class_id in choices}
    id_names = {class_id: name for name, class_id in choices}
    scheduler_config = dict(pipe.scheduler.config)
    if cost is None:
        cost = measure_evaluation_cost(pipe)
    # The model's saved defaults (MPDiTPipeline's default_guidance_*) start the controls and the examples.
    default_guidance = min(pipe.config.default_guidance_scale, MAX_GUIDANCE)
    default_low, default_high = pipe.config.default_guidance_interval or (0.0, 1.0)
    defaults = [default_guidance, default_low, default_high]

    def sampling_config(steps, guidance, low, high, scheduler, seed=0) -> SamplingConfig:
        try:
            return SamplingConfig(
                scheduler=scheduler,
                steps=int(steps),
                guidance_scale=float(guidance),
                guidance_interval=(float(low), float(high)),
                seed=seed,
            ).validate(UI_NAMES)
        except (TypeError, ValueError) as error:
            raise gr.Error(str(error)) from None

    # Each generation's measured time rescales the start-up measurement: the machine's load changes, and a whole run
    # includes what a lone transformer call leaves out (the scheduler, decoding, converting the images).
    speed = {"scale": 1.0, "basis": "the model's speed measured at start-up"}

    def start_up_seconds(config: SamplingConfig, num_images: int) -> float:
        rows = planned_rows(pipe, config, scheduler_config)
        return sum(cost.seconds(num_images * per_image) for per_image in rows)

    def estimate(num_images, steps, guidance, low, high, scheduler) -> str:
        try:
            config = sampling_config(steps, guidance, low, high, scheduler)
            num_images = int(num_images)
        except (gr.Error, TypeError, ValueError) as error:  # e.g. a number box being edited, left empty
            return f"No estimate: {getattr(error, 'message', error)}"
        seconds = speed["scale"] * start_up_seconds(config, num_images)
        plural = "image" if num_images == 1 else "images"
        return (
            f"Estimate: about {format_seconds(seconds)} for {num_images} {plural} at {config.steps} steps "
            f"({config.scheduler}) on this machine, from {speed['basis']}."
        )

    def generate(
        class_id,
        num_images,
        steps,
        guidance,
        low,
        high,
        seed,
        randomize,
        scheduler,
        progress=gr.Progress(),  # noqa: B008 (how Gradio injects it)
    ):
        if class_id not in valid_ids:
            raise gr.Error("Pick a class from the list.")
        if not (1 <= num_images <= MAX_IMAGES and 1 <= steps <= MAX_STEPS and guidance <= MAX_GUIDANCE):
            raise gr.Error(f"Images must be 1-{MAX_IMAGES}, steps 1-{MAX_STEPS} and guidance 0-{MAX_GUIDANCE}.")
        seed = random.randint(0, MAX_SEED) if randomize else int(seed)
        if not 0 <= seed <= MAX_SEED:
            raise gr.Error(f"Seed must be 0-{MAX_SEED}.")
        config = sampling_config(steps, guidance, low, high, scheduler, seed)
        num_images = int(num_images)
        predicted = start_up_seconds(config, num_images)
        expected = speed["scale"] * predicted
        pipe.scheduler = config.make_scheduler(scheduler_config)
        call = config.call_kwargs(pipe)
        desc = f"sampling, about {format_seconds(expected)}"
        progress((0, config.steps), desc=desc)

        def on_step_end(running, i, _t, tensors):
            progress((i + 1, running.num_timesteps), desc=desc)
            return tensors

        start = time.perf_counter()
        images = pipe(
            class_labels=[int(class_id)] * num_images,
            generator=config.generators(range(num_images)),
            callback_on_step_end=on_step_end,
            **call,
        ).images
        seconds = time.perf_counter() - start
        if predicted > 0:
            speed.update(scale=seconds / predicted, basis="the last generation's measured time")
        plural = "image" if num_images == 1 else "images"
        report = (
            f"Last run: {num_images} {plural}, {config.steps} steps ({config.scheduler}): {format_seconds(seconds)} "
            f"(estimated {format_seconds(expected)})."
        )
        # Captions stay short enough for a thumbnail; the class goes in the gallery's label, which has the room.
        samples = [(upscale_nearest(image, MIN_DISPLAY), f"seed {seed + i}") for i, image in enumerate(images)]
        return samples, seed, (report, f"Samples: {id_names[class_id]}")

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nClass-conditional generation with MPDiT (Dao and Metaxas, CVPR 2026).")
        gr.Markdown(describe_model(pipe, model, lora, cache), elem_id="model-info")
        with gr.Row():
            with gr.Column():
                class_picker = gr.Dropdown(choices, value=choices[0][1], label="Class", filterable=True)
                num_images = gr.Slider(1, MAX_IMAGES, value=DEFAULT_IMAGES, step=1, label="Number of images")
                steps = gr.Slider(1, MAX_STEPS, value=SamplingConfig.steps, step=1, label="Sampling steps")
                guidance = gr.Slider(
                    0, MAX_GUIDANCE, value=default_guidance, step=0.1, label="Guidance scale (1 = off)"
                )
                with gr.Row():
                    low = gr.Slider(0, 1, value=default_low, step=0.05, label="Guidance from t =")
                    high = gr.Slider(0, 1, value=default_high, step=0.05, label="to t = (1 is noise)")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                    randomize = gr.Checkbox(value=True, label="Random seed")
                scheduler = gr.Dropdown(list(SAMPLERS), value=SamplingConfig.scheduler, label="Scheduler")
                button = gr.Button("Generate", variant="primary")
                timing_controls = [num_images, steps, guidance, low, high, scheduler]
                estimate_line = gr.Markdown(
                    estimate(DEFAULT_IMAGES, SamplingConfig.steps, *defaults, SamplingConfig.scheduler),
                    elem_id="estimate",
                )
                last_run = gr.Markdown(elem_id="last-run")
                # The timing and the gallery's label reach the page through a State, which API callers do not see:
                # /generate keeps returning (images, seed).
                run_report = gr.State(None)
            gallery = gr.Gallery(label="Samples", columns=4, height="auto", elem_id="samples")
        inputs = [class_picker, num_images, steps, guidance, low, high, seed, randomize, scheduler]
        rows = [
            [choices[i][1], DEFAULT_IMAGES, SamplingConfig.steps, *defaults, i, False, SamplingConfig.scheduler]
            for i in example_classes(len(choices))
        ]
        rows.append([choices[min(1, len(choices) - 1)][1], DEFAULT_IMAGES, 10, *defaults, 0, False, "heun"])
        # One page, so that every row (and its class) is visible without paging.
        gr.Examples(rows, inputs=inputs, examples_per_page=len(rows), elem_id="examples")
        # One event for every control, so that the latest settings' estimate is the one left showing; off the queue,
        # so that it does not wait behind a running generation.
        gr.on(
            [control.change for control in timing_controls],
            estimate,
            timing_controls,
            estimate_line,
            queue=False,
            show_progress="hidden",
            trigger_mode="always_last",
            api_visibility="private",
        )
        button.click(generate, inputs=inputs, outputs=[gallery, seed, run_report]).success(
            lambda run, *settings: (run[0], gr.Gallery(label=run[1]), estimate(*settings)),
            [run_report, *timing_controls],
            [last_run, gallery, estimate_line],
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )
    return demo


def main(argv: list[str] | None = None) -> None:
    """Parses the command line, loads the model and serves the Space; a bad flag exits with one line.

    Args:
        argv (`list[str]`, *optional*): The arguments; None: `sys.argv[1:]`.
    """
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=BUNDLED_MODEL, help="pipeline folder or Hub id (default: bundled demo)")
    parser.add_argument("--device", default=None, help="default: the accelerator if any, else cpu")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=SamplingConfig.dtype,
        help=f"weights' dtype (default {SamplingConfig.dtype})",
    )
    parser.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME (a Space sets it) or 127.0.0.1")
    parser.add_argument("--port", type=integer(1, 65535), default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--concurrency", type=positive_int, default=1, help="generations at a time")
    parser.add_argument("--max-queue", type=positive_int, default=20, help="requests allowed to wait")
    # The LoRA and cache flags are the sampling configuration's; the other sampling settings are the page's controls.
    add_sampling_arguments(parser, "dash", exclude=set(FLAGS["dash"]) - {"lora", "lora_scale", "cache"})
    args = parser.parse_args(argv)
    served = SamplingConfig.from_args(args, parser)
    quiet_backend_warnings()
    try:
        pipe = load(args.model, args.device, args.dtype, served.lora, served.lora_scale, served.cache)
    except ValueError as error:
        parser.error(str(error))
    demo = build_demo(pipe, model=args.model, lora=served.lora, cache=served.cache)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
