"""MPDiT Gradio Space: class-conditional image generation on CPU or GPU.

    python space/app.py [--model PATH_OR_HUB_ID] [--port 7860]

Without `--model` it serves the Fashion-MNIST demo model that ships with diffusers-mpdit. One generation runs at a
time (`--concurrency`), and at most `--max-queue` requests wait, so a crowd cannot exhaust memory.
"""

from __future__ import annotations

import argparse
import random

import gradio as gr

from diffusers_mpdit import BUNDLED_MODEL, MPDiTPipeline
from diffusers_mpdit.sampling import DTYPES, SAMPLERS, SamplingConfig, load_pipeline, upscale_nearest

MAX_IMAGES = 8
MAX_STEPS = 100
MAX_GUIDANCE = 10.0
MAX_SEED = 2**31 - 1
# Small models draw tiny images; the gallery shows them at least this big (nearest neighbour keeps the pixels sharp).
MIN_DISPLAY = 256
# The controls' names, for errors about their values.
UI_NAMES = {
    "scheduler": "Scheduler",
    "steps": "Sampling steps",
    "guidance_scale": "Guidance scale",
    "guidance_interval": "The guidance interval (from t, to t)",
}


def load(model: str, device: str | None = None, dtype: str = SamplingConfig.dtype) -> MPDiTPipeline:
    """The pipeline the Space serves (`diffusers_mpdit.sampling.load_pipeline`, with its device and dtype defaults)."""
    return load_pipeline(model, device, dtype)


def class_choices(pipe: MPDiTPipeline) -> list[tuple[str, int]]:
    """(shown name, class id) for the picker: the model's names with their ids (`ClassNames.name`)."""
    names = pipe.class_names
    return [(f"{names.name(i)} ({i})", i) for i in range(names.num_classes)]


def build_demo(pipe: MPDiTPipeline, title: str = "MPDiT") -> gr.Blocks:
    """The Space's interface around one loaded pipeline.

    Args:
        pipe (`MPDiTPipeline`): The model to serve.
        title (`str`): Page heading.
    """
    choices = class_choices(pipe)
    valid_ids = {class_id for _, class_id in choices}
    scheduler_config = dict(pipe.scheduler.config)
    # The model's saved defaults (MPDiTPipeline's default_guidance_*) start the controls and the examples.
    default_guidance = min(pipe.config.default_guidance_scale, MAX_GUIDANCE)
    default_low, default_high = pipe.config.default_guidance_interval or (0.0, 1.0)

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
        try:
            config = SamplingConfig(
                scheduler=scheduler,
                steps=int(steps),
                guidance_scale=float(guidance),
                guidance_interval=(float(low), float(high)),
                seed=seed,
            ).validate(UI_NAMES)
        except ValueError as error:
            raise gr.Error(str(error)) from None
        num_images = int(num_images)
        pipe.scheduler = config.make_scheduler(scheduler_config)
        call = config.call_kwargs(pipe)
        progress((0, config.steps), desc="sampling")

        def on_step_end(running, i, _t, tensors):
            progress((i + 1, running.num_timesteps), desc="sampling")
            return tensors

        images = pipe(
            class_labels=[class_id] * num_images,
            generator=config.generators(range(num_images)),
            callback_on_step_end=on_step_end,
            **call,
        ).images
        name = dict((v, k) for k, v in choices)[class_id]
        return [
            (upscale_nearest(image, MIN_DISPLAY), f"{name}, seed {seed + i}") for i, image in enumerate(images)
        ], seed

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nClass-conditional generation with MPDiT (Dao and Metaxas, CVPR 2026).")
        with gr.Row():
            with gr.Column():
                class_picker = gr.Dropdown(choices, value=choices[0][1], label="Class", filterable=True)
                num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images")
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
            gallery = gr.Gallery(label="Samples", columns=4, height="auto", elem_id="samples")
        inputs = [class_picker, num_images, steps, guidance, low, high, seed, randomize, scheduler]
        defaults = [default_guidance, default_low, default_high]
        gr.Examples(
            [
                [choices[i % len(choices)][1], 4, SamplingConfig.steps, *defaults, i, False, SamplingConfig.scheduler]
                for i in (0, 5, 9)
            ]
            + [[choices[1][1], 4, 10, *defaults, 0, False, "heun"]],
            inputs=inputs,
        )
        button.click(generate, inputs=inputs, outputs=[gallery, seed])
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=BUNDLED_MODEL, help="pipeline folder or Hub id (default: bundled demo)")
    parser.add_argument("--device", default=None, help="default: the accelerator if any, else cpu")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=SamplingConfig.dtype,
        help=f"weights' dtype (default {SamplingConfig.dtype})",
    )
    parser.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME (a Space sets it) or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--concurrency", type=int, default=1, help="generations at a time")
    parser.add_argument("--max-queue", type=int, default=20, help="requests allowed to wait")
    args = parser.parse_args(argv)
    demo = build_demo(load(args.model, args.device, args.dtype))
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
