"""One sampling configuration for every front end: `mpdit generate`, the Space, `examples/sample_fid.py`, the quality
benchmark and the training script's validation grids.

A `SamplingConfig` names the sampler, the step count, guidance, the seed, the device and the dtype. Guidance left
unset means the model's saved default (`MPDiTPipeline.resolve_guidance`), and `settings()` records what a run used.
Image `i` of a run draws its noise from its own CPU generator seeded with `seed + i` (`image_generator`), so an
image does not depend on the batch it was computed in, the device or the number of processes.

Samplers and step counts:

| sampler | what it runs | model evaluations for `steps = N` |
| --- | --- | --- |
| euler | diffusers' FlowMatchEuler grid (N steps from t = 1 to t = 0.001, then to 0) | N |
| euler-stochastic | the same grid, re-noised to each next time (FlowMatchEuler `stochastic_sampling`) | N |
| heun | FlowMatchHeun | 2N - 1 |
| unipc, dpm-solver | diffusers' multistep solvers with flow sigmas | N |
| ode | the official `sample.py --sample_type ode --num-sampling-steps N`: Euler over `linspace(1, 0, N)` | N - 1 |
| sde | the official `sample.py --sample_type sde --num-sampling-steps N`: Euler-Maruyama over `linspace(1 - h, h, N)`, then a noiseless step to 0 (`FlowMatchEulerMaruyamaScheduler`) | N |

So for `ode` and `sde`, `steps` is the official script's `--num-sampling-steps`: the number of time points.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .arguments import integer, number
from .caches import CACHE_FORMS, parse_cache
from .data import BUNDLED_MODEL, BUNDLED_MODEL_NAME
from .paths import looks_like_local_path
from .pipelines.guidance import check_guidance_interval, check_guidance_scale
from .schedulers.diffusion import DIFFUSION_FORMS, check_diffusion_form, check_last_step_size

if TYPE_CHECKING:  # annotations only: importing these costs the CLI its fast start
    import PIL.Image
    import torch

    from .pipelines.pipeline_mpdit import MPDiTPipeline

# Image files the front ends write and the evaluator reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DTYPES = ("float32", "bfloat16", "float16")
# torch seeds a CPU generator with the low 32 bits: seed + index must stay below this.
SEED_LIMIT = 2**32
LABEL_SAMPLING = ("balanced", "random")

# The official ODE grid is exact only on FlowMatchEuler's plain time axis.
_PLAIN_EULER = {
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "invert_sigmas": False,
    "stochastic_sampling": False,
}


@dataclass(frozen=True)
class Sampler:
    """A sampler by name: how to build its scheduler, and how many time points it needs."""

    build: Callable[[Mapping[str, Any], SamplingConfig], Any]
    min_steps: int = 1


# Schedulers are imported when a sampler is built, so that the command line starts without diffusers.
def _euler(config: Mapping[str, Any], sampling: SamplingConfig, **overrides: Any):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(config, **overrides)


def _heun(config: Mapping[str, Any], sampling: SamplingConfig):
    from diffusers import FlowMatchHeunDiscreteScheduler

    return FlowMatchHeunDiscreteScheduler.from_config(config)


def _multistep(name: str) -> Callable[[Mapping[str, Any], SamplingConfig], Any]:
    def build(config: Mapping[str, Any], sampling: SamplingConfig):
        import diffusers

        # UniPC and DPM-Solver need flow sigmas and flow prediction to sample a velocity model.
        return getattr(diffusers, name).from_config(config, use_flow_sigmas=True, prediction_type="flow_prediction")

    return build


def _sde(config: Mapping[str, Any], sampling: SamplingConfig):
    from .schedulers.scheduling_flow_match_euler_maruyama import FlowMatchEulerMaruyamaScheduler

    return FlowMatchEulerMaruyamaScheduler.from_config(
        config,
        diffusion_form=sampling.diffusion_form,
        diffusion_norm=sampling.diffusion_norm,
        last_step_size=sampling.last_step_size,
    )


# The module docstring's table says what each runs.
SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler(_euler),
    "euler-stochastic": Sampler(lambda c, s: _euler(c, s, stochastic_sampling=True)),
    "heun": Sampler(_heun),
    "unipc": Sampler(_multistep("UniPCMultistepScheduler")),
    "dpm-solver": Sampler(_multistep("DPMSolverMultistepScheduler")),
    "ode": Sampler(lambda c, s: _euler(c, s, **_PLAIN_EULER), min_steps=2),
    "sde": Sampler(_sde, min_steps=2),
}


def image_generator(seed: int, index: int):
    """The `torch.Generator` of image `index` of a run with `seed`: on the CPU, so the noise is the same on every
    device.

    Args:
        seed (`int`): The run's seed.
        index (`int`): The image's index in the run.
    """
    import torch

    return torch.Generator("cpu").manual_seed(seed + index)


def random_class_label(seed: int, index: int, num_classes: int) -> int:
    """Image `index`'s class under random label sampling: uniform over `num_classes`, from the first 8 bytes of
    `sha256(f"mpdit-label,{seed},{index}")` read as a little-endian integer, modulo `num_classes`.

    A hash rather than a generator: it depends on nothing but the seed and the index (not on the batch, the process
    or the number of samples), and it is independent of the image's noise generator, which is seeded with the same
    `seed + index`.

    Args:
        seed (`int`): The run's seed.
        index (`int`): The image's index in the sample set.
        num_classes (`int`): Classes to draw from, ids `0 .. num_classes - 1`.
    """
    digest = hashlib.sha256(f"mpdit-label,{seed},{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % num_classes


def fid_class_labels(num_samples: int, num_classes: int, mode: str = "balanced", seed: int = 0) -> np.ndarray:
    """The class of each image of a sample set: `balanced` (`i % num_classes`) or `random` (`random_class_label`).

    Args:
        num_samples (`int`): Images.
        num_classes (`int`): Classes to draw from, ids `0 .. num_classes - 1`.
        mode (`str`): One of `LABEL_SAMPLING`.
        seed (`int`): The run's seed (used by `random`).
    """
    if mode not in LABEL_SAMPLING:
        raise ValueError(f"`mode` must be one of {', '.join(LABEL_SAMPLING)}; got {mode!r}")
    if mode == "balanced":
        return np.arange(num_samples) % num_classes
    return np.array([random_class_label(seed, i, num_classes) for i in range(num_samples)], dtype=np.int64)


def default_device() -> str:
    """The accelerator torch finds (cuda, mps, xpu, ...), else `"cpu"`."""
    import torch

    return torch.accelerator.current_accelerator().type if torch.accelerator.is_available() else "cpu"


# Small models draw tiny images; grids upscale them (nearest neighbour) to at least this many pixels a side.
MIN_CELL = 128


def upscale_nearest(image: PIL.Image.Image, min_side: int) -> PIL.Image.Image:
    """Enlarges a PIL image by the smallest integer factor that makes its longer side at least `min_side`, keeping
    pixels sharp (nearest neighbour); larger images are returned as they are.

    Args:
        image (`PIL.Image.Image`): The image.
        min_side (`int`): The smallest longer side wanted.
    """
    from PIL import Image

    factor = max(1, math.ceil(min_side / max(image.size)))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def labelled_grid(images: list[PIL.Image.Image], row_names: list[str], columns: int) -> PIL.Image.Image:
    """A grid with one row per class, its name on the left, as `mpdit generate` and the training script's validation
    grids draw it; images smaller than `MIN_CELL` are upscaled by an integer factor (nearest neighbour).

    Args:
        images (`list[PIL.Image.Image]`): Row by row, `columns` images per row.
        row_names (`list[str]`): Each row's label.
        columns (`int`): Images per row.
    """
    from PIL import Image, ImageDraw, ImageFont

    cells = [upscale_nearest(image.convert("RGB"), MIN_CELL) for image in images]
    cell_w, cell_h = cells[0].size
    font = ImageFont.load_default(size=max(12, cell_h // 7))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(measure.textlength(name, font=font)) for name in row_names) + 16
    pad = 4
    grid = Image.new("RGB", (label_w + columns * (cell_w + pad), len(row_names) * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for row, name in enumerate(row_names):
        top = row * (cell_h + pad)
        draw.text((8, top + cell_h // 2), name, fill="black", font=font, anchor="lm")
        for col in range(columns):
            grid.paste(cells[row * columns + col], (label_w + col * (cell_w + pad), top))
    return grid


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample: the same fields, defaults and checks in every front end.

    Args:
        scheduler (`str`, defaults to `"euler"`): A name of `SAMPLERS` (see the module's table).
        steps (`int`, defaults to 50): Sampling steps; for `ode` and `sde`, the official script's time points.
        guidance_scale (`float`, *optional*): Classifier-free guidance scale; None: the model's saved default.
        guidance_interval (`tuple[float, float]`, *optional*): Guide only for flow times in `[low, high]`; None: the
            model's saved default (which may be every step); `(0, 1)`: every step.
        seed (`int`, defaults to 0): Image `i` uses `image_generator(seed, i)`.
        device (`str`, *optional*): torch device; None: `default_device()`.
        dtype (`str`, defaults to `"float32"`): One of `DTYPES`, for the pipeline's weights.
        diffusion_form (`str`, defaults to `"SBDM"`): `sde` only: the diffusion coefficient (`DIFFUSION_FORMS`).
        diffusion_norm (`float`, defaults to 1.0): `sde` only: its scale.
        last_step_size (`float`, defaults to 0.04): `sde` only: the grid runs from `1 - h` to `h`, then to 0.
        lora (`str`, *optional*): A LoRA to load into the pipeline (`load_lora_weights`): a folder, a file or a Hub
            repo id; its new classes join the pipeline's.
        lora_scale (`float`, defaults to 1.0): The LoRA's weight (0: the base model).
        cache (`str`, *optional*): A training-free cache by name and setting, e.g. `level:3` or `fbc:0.1`
            (`diffusers_mpdit.caches`); None: no cache.
    """

    scheduler: str = "euler"
    steps: int = 50
    guidance_scale: float | None = None
    guidance_interval: tuple[float, float] | None = None
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    diffusion_form: str = "SBDM"
    diffusion_norm: float = 1.0
    last_step_size: float = 0.04
    lora: str | None = None
    lora_scale: float = 1.0
    cache: str | None = None

    def validate(self, names: Mapping[str, str] | None = None) -> SamplingConfig:
        """Raises a one-line ValueError naming the first bad field (by `names[field]`, e.g. a command-line flag).

        Args:
            names (`Mapping[str, str]`, *optional*): What the front end calls each field.
        """

        def name(field: str) -> str:
            return (names or {}).get(field, f"`{field}`")

        if self.scheduler not in SAMPLERS:
            raise ValueError(f"{name('scheduler')} must be one of {', '.join(SAMPLERS)}; got {self.scheduler!r}")
        minimum = SAMPLERS[self.scheduler].min_steps
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < minimum:
            why = " (the official samplers count time points, first and last included)" if minimum > 1 else ""
            raise ValueError(
                f"{name('steps')} must be an integer >= {minimum} for the {self.scheduler} sampler{why}; "
                f"got {self.steps!r}"
            )
        try:
            if self.guidance_scale is not None:
                check_guidance_scale(self.guidance_scale, name("guidance_scale"))
            check_guidance_interval(self.guidance_interval, name("guidance_interval"))
            check_diffusion_form(self.diffusion_form, name("diffusion_form"))
            check_last_step_size(self.last_step_size, name("last_step_size"))
        except ValueError as error:
            raise ValueError(str(error).rstrip(".")) from None
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"{name('seed')} must be an integer in [0, 2**32), got {self.seed!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{name('dtype')} must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if not isinstance(self.diffusion_norm, (int, float)) or not 0 <= self.diffusion_norm < math.inf:
            raise ValueError(f"{name('diffusion_norm')} must be a finite number >= 0, got {self.diffusion_norm!r}")
        if isinstance(self.lora_scale, bool) or not isinstance(self.lora_scale, (int, float)):
            raise ValueError(f"{name('lora_scale')} must be a number, got {self.lora_scale!r}")
        if not math.isfinite(self.lora_scale):
            raise ValueError(f"{name('lora_scale')} must be finite, got {self.lora_scale!r}")
        if (
            self.lora is not None
            and looks_like_local_path(self.lora)
            and not os.path.exists(os.path.expanduser(self.lora))
        ):
            raise ValueError(
                f"{name('lora')} {self.lora!r}: no such file or folder (give a LoRA file, folder or Hub id)"
            )
        if self.cache is not None:
            parse_cache(self.cache, name("cache"))
        return self

    def check_image_count(self, count: int, names: Mapping[str, str] | None = None) -> None:
        """Raises if images `0 .. count - 1` would wrap torch's 32-bit seeds (`seed + index >= 2**32`).

        Args:
            count (`int`): Images the run makes.
            names (`Mapping[str, str]`, *optional*): What the front end calls each field.
        """
        if self.seed + count > SEED_LIMIT:
            name = (names or {}).get("seed", "`seed`")
            raise ValueError(f"{name} must be at most 2**32 - {count} for {count} images, got {self.seed}")

    def make_scheduler(self, base_config: Mapping[str, Any]):
        """The sampler's scheduler, built from a scheduler config (the model's own, to keep its training settings).

        Args:
            base_config (`Mapping`): e.g. the loaded pipeline's `pipe.scheduler.config`; keep the original when
                swapping repeatedly.
        """
        self.validate()
        return SAMPLERS[self.scheduler].build(dict(base_config), self)

    def call_kwargs(self, pipe: MPDiTPipeline) -> dict[str, Any]:
        """Keyword arguments for `pipe(...)`: the step grid and the resolved guidance (not the generators).

        Args:
            pipe (`MPDiTPipeline`): The pipeline, for its saved guidance defaults.
        """
        from .pipelines.timesteps import official_euler_sigmas

        self.validate()
        scale, interval = pipe.resolve_guidance(self.guidance_scale, self.guidance_interval)
        grid = {"sigmas": official_euler_sigmas(self.steps)} if self.scheduler == "ode" else {}
        return {"num_inference_steps": self.steps, **grid, "guidance_scale": scale, "guidance_interval": interval}

    def generators(self, indices: Iterable[int]) -> list[torch.Generator]:
        """One generator per image index (`image_generator(seed, index)`).

        Args:
            indices (`Iterable[int]`): The images' indices in the run.
        """
        return [image_generator(self.seed, index) for index in indices]

    def settings(self, pipe: MPDiTPipeline) -> dict[str, Any]:
        """What a run with this configuration uses, resolved against `pipe`'s saved defaults, as JSON values.

        Args:
            pipe (`MPDiTPipeline`): The pipeline.
        """
        scale, interval = pipe.resolve_guidance(self.guidance_scale, self.guidance_interval)
        settings = {
            "scheduler": self.scheduler,
            "steps": self.steps,
            "guidance_scale": scale,
            "guidance_interval": None if interval is None else list(interval),
            "seed": self.seed,
            "dtype": self.dtype,
        }
        if self.scheduler == "sde":
            settings |= {
                "diffusion_form": self.diffusion_form,
                "diffusion_norm": self.diffusion_norm,
                "last_step_size": self.last_step_size,
            }
        if self.lora is not None:
            settings |= {"lora": lora_identity(self.lora), "lora_scale": self.lora_scale}
        if self.cache is not None:
            settings["cache"] = str(parse_cache(self.cache))
        return settings

    def describe(self, pipe: MPDiTPipeline) -> str:
        """One line for logs: `sde (SBDM, norm 1, last step 0.04), 250 steps, guidance 1.5 for t in [0, 0.6], seed 0`.

        Args:
            pipe (`MPDiTPipeline`): The pipeline, for its saved guidance defaults.
        """
        s = self.settings(pipe)
        sampler = s["scheduler"]
        if sampler == "sde":
            sampler += f" ({s['diffusion_form']}, norm {s['diffusion_norm']:g}, last step {s['last_step_size']:g})"
        guidance = f"guidance {s['guidance_scale']:g}"
        if s["guidance_interval"] is not None:
            guidance += " for t in [{:g}, {:g}]".format(*s["guidance_interval"])
        lora = f", LoRA {s['lora']} at {s['lora_scale']:g}" if "lora" in s else ""
        cache = f", cache {s['cache']}" if "cache" in s else ""
        return f"{sampler}, {s['steps']} steps, {guidance}, seed {s['seed']}{lora}{cache}"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SamplingConfig:
        """The configuration `settings()` recorded (other keys are ignored).

        Args:
            settings (`Mapping`): A dict written by `settings()`, e.g. read back from a run's JSON.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in settings.items() if k in fields}
        if values.get("guidance_interval") is not None:
            values["guidance_interval"] = tuple(values["guidance_interval"])
        return cls(**values).validate()

    @classmethod
    def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> SamplingConfig:
        """The configuration from flags added by `add_sampling_arguments`; a bad value is `parser.error`.

        Args:
            args (`argparse.Namespace`): Parsed arguments.
            parser (`argparse.ArgumentParser`): The parser, for its error and its flag names.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in fields}
        if values.get("guidance_interval") is not None:
            values["guidance_interval"] = tuple(values["guidance_interval"])
        config = cls(**values)
        try:
            return config.validate(getattr(parser, "sampling_flags", None))
        except ValueError as error:
            parser.error(str(error))


# Each field's flag, as the `mpdit` command (dashes) and the example scripts (underscores) spell it.
FLAGS = {
    "dash": {
        "scheduler": "--scheduler",
        "steps": "--steps",
        "guidance_scale": "--guidance",
        "guidance_interval": "--guidance-interval",
        "seed": "--seed",
        "device": "--device",
        "dtype": "--dtype",
        "diffusion_form": "--diffusion-form",
        "diffusion_norm": "--diffusion-norm",
        "last_step_size": "--last-step-size",
        "lora": "--lora",
        "lora_scale": "--lora-scale",
        "cache": "--cache",
    },
    "underscore": {
        "scheduler": "--scheduler",
        "steps": "--num_inference_steps",
        "guidance_scale": "--guidance_scale",
        "guidance_interval": "--guidance_interval",
        "seed": "--seed",
        "device": "--device",
        "dtype": "--dtype",
        "diffusion_form": "--diffusion_form",
        "diffusion_norm": "--diffusion_norm",
        "last_step_size": "--last_step_size",
        "lora": "--lora",
        "lora_scale": "--lora_scale",
        "cache": "--cache",
    },
}


def add_sampling_arguments(
    parser: argparse.ArgumentParser, style: str = "dash", exclude: Iterable[str] = ()
) -> argparse.ArgumentParser:
    """Adds the sampling flags, with the shared defaults and help, to `parser`; read them with
    `SamplingConfig.from_args`.

    Args:
        parser (`argparse.ArgumentParser`): The front end's parser (or an argument group's parser).
        style (`str`): `"dash"` (`--guidance-interval`, as `mpdit` spells flags) or `"underscore"`
            (`--guidance_interval`, as the example scripts do).
        exclude (`Iterable[str]`): Fields the front end sets itself (e.g. `device` under accelerate).
    """
    flags, exclude = FLAGS[style], set(exclude)
    default = SamplingConfig()
    helps = {
        "scheduler": f"sampler: {', '.join(SAMPLERS)}; ode and sde are the official sample.py samplers "
        f"(default {default.scheduler})",
        "steps": f"sampling steps (default {default.steps}); for ode and sde, the official --num-sampling-steps "
        "(time points: ode runs one model evaluation fewer)",
        "guidance_scale": "classifier-free guidance scale s in v_u + s (v_c - v_u); 1 = off, 0 = unconditional "
        "(default: the model's saved default_guidance_scale)",
        "guidance_interval": "guide only for flow times in [LOW, HIGH] (1 = noise); 0 1 = every step (default: the "
        "model's saved default_guidance_interval)",
        "seed": f"image i draws its noise from a CPU generator seeded with seed + i (default {default.seed})",
        "device": "torch device (default: the accelerator if any, else cpu)",
        "dtype": f"weights' dtype: {', '.join(DTYPES)} (default {default.dtype})",
        "diffusion_form": f"sde only: the diffusion coefficient, one of {', '.join(DIFFUSION_FORMS)} "
        f"(default {default.diffusion_form})",
        "diffusion_norm": f"sde only: the diffusion coefficient's scale (default {default.diffusion_norm:g})",
        "last_step_size": f"sde only: h, the grid runs from 1 - h to h, then a noiseless step to 0 "
        f"(default {default.last_step_size:g})",
        "lora": "a LoRA to load (MPDiTPipeline.load_lora_weights): a folder, a .safetensors file or a Hub id; "
        "the classes it adds can be named like the model's own",
        "lora_scale": f"the LoRA's weight, 0 = the base model (default {default.lora_scale:g})",
        "cache": f"a training-free cache, NAME:SETTING: {CACHE_FORMS} (default: none)",
    }
    types: dict[str, Any] = {
        "steps": integer(),
        "guidance_scale": number(),
        "guidance_interval": number(),
        "seed": integer(),
        "diffusion_norm": number(),
        "last_step_size": number(),
        "lora_scale": number(),
    }
    metavars = {
        "scheduler": "NAME",
        "steps": "N",
        "guidance_scale": "S",
        "seed": "SEED",
        "device": "DEVICE",
        "dtype": "DTYPE",
        "diffusion_form": "FORM",
        "diffusion_norm": "NORM",
        "last_step_size": "H",
        "lora": "PATH_OR_REPO",
        "lora_scale": "S",
        "cache": "NAME:SETTING",
    }
    for field in FLAGS["dash"]:
        if field in exclude:
            continue
        kwargs: dict[str, Any] = {"dest": field, "default": getattr(default, field), "help": helps[field]}
        kwargs["metavar"] = metavars.get(field)
        if field in types:
            kwargs["type"] = types[field]
        if field == "guidance_interval":
            kwargs |= {"nargs": 2, "metavar": ("LOW", "HIGH")}
        names = [flags[field]]
        if field == "lora_scale" and style == "dash":
            names.append("--lora_scale")  # diffusers' scripts spell it so
        parser.add_argument(*names, **kwargs)
    parser.sampling_flags = {k: v for k, v in flags.items() if k not in exclude}
    return parser


def check_model_path(model: str) -> str:
    """Returns `model` with `~` expanded (and `bundled`, where no such folder exists, as `BUNDLED_MODEL`); raises a
    one-line ValueError if it reads as a local path (absolute, `.`, `~`, or more than one `/`) that is not a folder,
    rather than letting it go to the Hub as a repo id.

    Args:
        model (`str`): A pipeline folder, a Hub repo id, or `bundled`.
    """
    if model == BUNDLED_MODEL_NAME and not os.path.isdir(model):
        return BUNDLED_MODEL
    if looks_like_local_path(model) and not os.path.isdir(os.path.expanduser(model)):
        raise ValueError(f"model {model!r}: no such folder (give a pipeline folder or a Hub id like org/name)")
    return os.path.expanduser(model)


def model_identity(model: str) -> str:
    """How a run records the model it used, the same for every spelling of one model: `bundled` for the bundled
    model, an absolute path for a local folder, the repo id otherwise.

    Args:
        model (`str`): What the user gave (`check_model_path` accepts it).
    """
    path = check_model_path(model)
    if not os.path.isdir(path):
        return model
    if os.path.samefile(path, BUNDLED_MODEL):
        return BUNDLED_MODEL_NAME
    return os.path.realpath(path)


def lora_identity(lora: str) -> str:
    """How a run records the LoRA it used: an absolute path for a local file or folder, the repo id otherwise.

    Args:
        lora (`str`): What the user gave.
    """
    path = os.path.expanduser(lora)
    return os.path.realpath(path) if os.path.exists(path) else lora


def load_pipeline(
    model: str,
    device: str | None = None,
    dtype: str = "float32",
    lora: str | None = None,
    lora_scale: float = 1.0,
    cache: str | None = None,
):
    """`MPDiTPipeline.from_pretrained` for front ends, and a LoRA if given: one-line errors naming the model, the
    LoRA or the device.

    Args:
        model (`str`): A pipeline folder or a Hub repo id.
        device (`str`, *optional*): Where to put it; None: `default_device()`.
        dtype (`str`): One of `DTYPES`.
        lora (`str`, *optional*): A LoRA folder, file or Hub repo id, loaded as the adapter `"lora"`.
        lora_scale (`float`, defaults to 1.0): Its weight (`set_adapters`).
        cache (`str`, *optional*): A cache spec (`diffusers_mpdit.caches.parse_cache`), enabled on the transformer.
    """
    import torch
    from diffusers.utils import logging as diffusers_logging

    from .pipelines import MPDiTPipeline

    path = check_model_path(model)
    diffusers_logging.disable_progress_bar()  # the component-loading bar is noise next to the sampling bar
    try:
        pipe = MPDiTPipeline.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as error:
        raise ValueError(f"model {model!r}: cannot load it: {one_line(error)}") from None
    finally:
        diffusers_logging.enable_progress_bar()
    if lora is not None:
        try:
            pipe.load_lora_weights(os.path.expanduser(lora), adapter_name="lora")
        except (OSError, ValueError) as error:
            raise ValueError(f"lora {lora!r}: cannot load it: {one_line(error)}") from None
        if lora_scale != 1:
            pipe.set_adapters(["lora"], adapter_weights=[lora_scale])
    if cache is not None:
        try:
            pipe.transformer.enable_cache(parse_cache(cache).make_config(pipe))
        except ValueError as error:
            raise ValueError(f"cache {cache!r}: {one_line(error)}") from None
    device = device or default_device()
    try:
        return pipe.to(device)
    except (RuntimeError, AssertionError) as error:
        raise ValueError(f"device {device!r}: {one_line(error)}") from None


# Loggers of optional backends that warn at import, about nothing a user of ours can act on: torchao installed on a
# machine without its CUDA kernels logs each missing kernel (and torch a deprecated registration of torchao's), and
# diffusers' torchao quantizer that it cannot list torchao 0.18's serialisable tensor types.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


def quiet_backend_warnings() -> None:
    """Raises `QUIET_LOGGERS` to errors only, so that a front end's output (one-line errors included) is its own.
    Call it before anything imports diffusers; the library itself leaves every logger alone."""
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def one_line(error: BaseException) -> str:
    """An exception's message on one line (or its type's name, if it has none).

    Args:
        error (`BaseException`): The exception.
    """
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())
