"""MPDiTPipeline: class-conditional flow-matching sampling with any diffusers flow scheduler.

This module path is recorded in saved pipelines' `model_index.json`: never move the class.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import AutoencoderKL
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..loaders import HubMixin, MPDiTLoraLoaderMixin, RemoteCodeMixin
from ..models import new_classes
from ..models.level_cache import CFG_CONTEXT
from ..models.transformer_mpdit import MPDiTTransformer2DModel
from .class_names import ClassNames
from .guidance import check_guidance_interval, check_guidance_scale
from .latents import denormalize_latents
from .timesteps import calculate_shift, retrieve_timesteps

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _valid_with_null(class_names: ClassNames, class_labels: Any) -> bool:
    try:
        class_names.ids(class_labels, allow_null=True)
    except ValueError:
        return False
    return True


class MPDiTPipeline(RemoteCodeMixin, HubMixin, MPDiTLoraLoaderMixin, DiffusionPipeline):
    r"""Class-conditional image generation with MPDiT.

    Args:
        transformer ([`MPDiTTransformer2DModel`]): Predicts the flow velocity `noise - data`.
        vae ([`AutoencoderKL`], *optional*): Decodes latents; None for a pixel-space model. Latents are normalised with
            the VAE config: per-channel `latents_mean`/`latents_std` when set, otherwise `shift_factor` and
            `scaling_factor`.
        scheduler ([`SchedulerMixin`]): A flow-matching scheduler, [`FlowMatchEulerDiscreteScheduler`] by default;
            FlowMatchHeun, and UniPC / DPM-Solver with `use_flow_sigmas=True, prediction_type="flow_prediction"`
            work too.
        id2label (`dict[int, str]`, *optional*): Class names by id; comma-separated synonyms all resolve to the id.
        default_guidance_scale (`float`, defaults to 1.5): The guidance scale a call uses when it passes none; saved in
            `model_index.json`, so a model can carry the setting it samples best with.
        default_guidance_interval (`tuple[float, float]`, *optional*): Likewise for `guidance_interval`; None guides
            at every step.

    Attributes:
        max_size_factor (`float`, defaults to 4): The largest `height` and `width` a call accepts, as a multiple of
            the trained image side (`transformer.config.sample_size` times the VAE factor): a call asking for more is
            refused before anything is allocated. A class attribute: raise it (`MPDiTPipeline.max_size_factor = 8`,
            or on one pipeline) to sample larger images, or set None for no limit.
    """

    # Beyond 4x the trained side a sample has 16x the trained token count, far from anything the model learned, and
    # the cost grows faster still (attention is quadratic in tokens): a larger size is almost always a typo, such as
    # 100000 that would allocate tens of GB before failing. Raise it on the class or an instance to go further.
    max_size_factor: float = 4

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: MPDiTTransformer2DModel,
        vae: AutoencoderKL | None,
        scheduler: SchedulerMixin,
        id2label: dict | None = None,
        default_guidance_scale: float = 1.5,
        # A list too: that is how model_index.json gives it back.
        default_guidance_interval: tuple[float, float] | list[float] | None = None,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler)
        # JSON turns the keys into strings on save; keep ints in memory.
        self.id2label = {int(k): v for k, v in (id2label or {}).items()}
        default_guidance_scale = check_guidance_scale(default_guidance_scale, "`default_guidance_scale`")
        default_guidance_interval = check_guidance_interval(default_guidance_interval, "`default_guidance_interval`")
        self.register_to_config(
            id2label=self.id2label or None,
            default_guidance_scale=default_guidance_scale,
            default_guidance_interval=None if default_guidance_interval is None else list(default_guidance_interval),
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def class_names(self) -> ClassNames:
        """The classes' names and ids ([`ClassNames`])."""
        return ClassNames(self.id2label, self.transformer.config.num_classes)

    @property
    def labels(self) -> dict[str, int]:
        """Every class name (each comma-separated synonym) and its id, as DiTPipeline's `labels`."""
        return self.class_names.labels

    def add_classes(self, names: Sequence[str], rows: torch.Tensor | None = None) -> list[int]:
        """Teaches the pipeline new class names: grows the transformer's class tokens (see
        [`~models.new_classes.add_classes`]) and adds the names to `id2label`. Old ids, and the null class's
        embedding, are unchanged; the new rows start as copies of the null class's unless given.

        Args:
            names (`list[str]`): The new classes' names; none may already name a class.
            rows (`torch.Tensor`, *optional*): Their trained class-token rows, `(len(names), width)`.

        Returns:
            `list[int]`: the new ids, in the order of `names`.
        """
        names = [names] if isinstance(names, str) else list(names)
        self.check_new_class_names(names)
        ids = new_classes.add_classes(self.transformer, len(names), rows)
        self._set_id2label({**self.id2label, **dict(zip(ids, names))})
        return ids

    def check_new_class_names(self, names: Sequence[str]) -> None:
        """Raises a one-line ValueError unless `names` could all be added as new classes: none may name an existing
        class (ignoring case, as lookups do), repeat, or hold a comma (commas separate synonyms).

        Args:
            names (`list[str]`): The names.
        """
        if not names:
            raise ValueError("`names` is empty: give at least one class name.")
        class_names = self.class_names
        taken = [n for n in names if class_names.matches(n) or "," in n]
        taken += [n for i, n in enumerate(names) if n in names[:i]]
        if taken:
            raise ValueError(
                f"`names`: {taken} already name classes (or hold a comma, which separates synonyms); new classes "
                "need new names."
            )

    def remove_classes(self, class_ids: Sequence[int]) -> dict[int, int]:
        """Takes classes out of the transformer and `id2label` (see [`~models.new_classes.remove_classes`]).

        Args:
            class_ids (`list[int]`): The ids to remove.

        Returns:
            `dict[int, int]`: each kept class's new id, keyed by its old one.
        """
        new_ids = new_classes.remove_classes(self.transformer, class_ids)
        self._set_id2label({new_ids[i]: name for i, name in self.id2label.items() if i in new_ids})
        return new_ids

    def _set_id2label(self, id2label: dict[int, str]) -> None:
        self.id2label = id2label
        self.register_to_config(id2label=id2label or None)

    def get_label_ids(self, label: str | Sequence[str]) -> list[int]:
        """Maps class names to ids, exactly or, failing that, ignoring case (see [`ClassNames`]).

        Args:
            label (`str` or `list[str]`): Class names, any synonym from `id2label`.
        """
        return [self.class_names.id(name) for name in ([label] if isinstance(label, str) else label)]

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_interval(self) -> tuple[float, float] | None:
        """The flow-time interval the last call guided in (its argument or the saved default); None: every step."""
        return self._guidance_interval

    @property
    def do_classifier_free_guidance(self) -> bool:
        # Any scale but 1 is applied by the formula: below 1 it moves towards the unconditional prediction.
        return self._guidance_scale != 1 and self.transformer.config.num_classes > 0

    def resolve_guidance(
        self, guidance_scale: float | None = None, guidance_interval: Sequence[float] | None = None
    ) -> tuple[float, tuple[float, float] | None]:
        """The guidance a call with these arguments uses: each one given, else the pipeline's saved default.

        Args:
            guidance_scale (`float`, *optional*): None: `default_guidance_scale`.
            guidance_interval (`tuple[float, float]`, *optional*): None: `default_guidance_interval`.

        Returns:
            `(scale, interval)`, checked; an interval of None guides at every step.
        """
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
        if guidance_interval is None:
            guidance_interval = self.config.default_guidance_interval
        return check_guidance_scale(guidance_scale), check_guidance_interval(guidance_interval)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self) -> torch.Tensor | None:
        """The scheduler timestep (0-1000 scale) of the step being run; None outside a call. Caches such as Pyramid
        Attention Broadcast read it through `current_timestep_callback=lambda: pipe.current_timestep`."""
        return getattr(self, "_current_timestep", None)

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def _class_ids(self, class_labels: Any) -> torch.Tensor | None:
        num_classes = self.transformer.config.num_classes
        if num_classes == 0:
            if class_labels is not None:
                raise ValueError("`class_labels` must be None: the transformer is unconditional (num_classes=0).")
            return None
        if class_labels is None:
            raise ValueError(
                f"`class_labels` is required: class ids (0 to {num_classes - 1}) or names; for unconditional samples "
                "give any class with `guidance_scale=0`."
            )
        if isinstance(class_labels, torch.Tensor):
            if class_labels.is_floating_point() or class_labels.dtype == torch.bool:
                raise ValueError(
                    f"`class_labels` must be class ids (integers) or names, got dtype {class_labels.dtype}."
                )
            class_labels = class_labels.reshape(-1).tolist()
        class_names = ClassNames(self.id2label, num_classes)
        # The null class is guidance's own input, refused as the CLI refuses it: a label of it would silently give an
        # unconditional sample, which `guidance_scale=0` asks for explicitly.
        try:
            ids = class_names.ids(class_labels, allow_null=False)
        except ValueError as error:
            hint = ""
            if _valid_with_null(class_names, class_labels):  # the null id was the only problem: say what to do
                hint = (
                    f" ({num_classes} is the null class, used for guidance; unconditional samples: `guidance_scale=0`)"
                )
            raise ValueError(f"`class_labels`: {error}{hint}. See `pipe.labels`.") from None
        if not ids:
            raise ValueError("`class_labels` is empty.")
        return torch.tensor(ids, dtype=torch.long)

    def check_inputs(
        self,
        num_inference_steps: int,
        num_images_per_prompt: int,
        height: int,
        width: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> None:
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1, got {num_images_per_prompt!r}.")
        multiple = self.vae_scale_factor * self.transformer.config.patch_sizes[0]
        if height % multiple or width % multiple or height <= 0 or width <= 0:
            raise ValueError(
                f"`height` and `width` must be positive multiples of {multiple} (VAE factor {self.vae_scale_factor} x "
                f"coarsest patch {self.transformer.config.patch_sizes[0]}), got {height}x{width}."
            )
        if self.max_size_factor is not None:
            trained = self.transformer.config.sample_size * self.vae_scale_factor
            limit = int(trained * self.max_size_factor)
            if height > limit or width > limit:
                raise ValueError(
                    f"`height` and `width` must be at most {limit} ({self.max_size_factor:g} x the trained side "
                    f"{trained}, beyond which samples leave what the model learned and memory grows fast; raise "
                    f"`MPDiTPipeline.max_size_factor` to go further), got {height}x{width}."
                )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {unknown}."
            )

    def prepare_latents(
        self,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        shape = (
            batch_size,
            self.transformer.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but the batch holds {batch_size} images "
                "(class labels x num_images_per_prompt): pass one generator per image."
            )
        if latents is None:
            return randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        if tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        return latents.to(device=device, dtype=dtype)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int] | Sequence[str] | torch.Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        sigmas: Sequence[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
    ) -> ImagePipelineOutput | tuple:
        r"""Generates images of the given classes.

        Args:
            class_labels (`int`, `str`, `list`, or `torch.Tensor`): Class ids from 0 to `num_classes - 1`, or class
                names resolved through `id2label`. The null class id (`transformer.config.num_classes`) is refused:
                it is guidance's unconditional input. For unconditional samples pass any class with `guidance_scale=0`
                (and `guidance_interval=(0, 1)` if the pipeline saves a default interval).
            num_inference_steps (`int`, defaults to 50): Sampling steps (ignored when `sigmas` is given).
            guidance_scale (`float`, *optional*): Classifier-free guidance scale
                `v = v_uncond + s * (v_cond - v_uncond)`, applied as written for any `s >= 0`: 1 is the conditional
                prediction alone (one forward pass), 0 the unconditional one. Read at every step. Defaults to the
                pipeline's `default_guidance_scale` (1.5 unless the saved model sets another).
            guidance_interval (`tuple[float, float]`, *optional*): Apply guidance only for flow times t (1 = noise)
                within `[low, high]`; elsewhere the conditional prediction is used alone, at half the cost. Defaults to
                the pipeline's `default_guidance_interval` (every step unless the saved model sets one); `(0, 1)`
                guides at every step whatever the default.
            num_images_per_prompt (`int`, defaults to 1): Images per class label.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): One generator, or one per image.
            latents (`torch.Tensor`, *optional*): Initial noise of shape `(batch, C, h, w)`; used in float32.
            height (`int`, *optional*): Image height in pixels; defaults to the model's `sample_size` times the VAE
                factor. Any multiple of the VAE factor times the coarsest patch size works, up to `max_size_factor`
                (4) times that default.
            width (`int`, *optional*): Image width in pixels; same default and rules.
            sigmas (`list[float]`, *optional*): Custom flow times for schedulers that accept them.
                `sigmas=official_euler_sigmas(250)` with the default scheduler is the official 250-point ODE sampler;
                [`FlowMatchEulerMaruyamaScheduler`] is the official SDE sampler.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"` (model-space latents,
                float32 whatever the transformer's dtype).
            return_dict (`bool`, defaults to `True`): Return an [`ImagePipelineOutput`] instead of a tuple.
            attention_kwargs (`dict`, *optional*): Passed to the transformer at every step; `{"scale": s}` scales the
                loaded LoRA adapters by `s` for this call (0: the base model).
            callback_on_step_end (`Callable`, *optional*): Called as `fn(pipe, step, timestep, callback_kwargs)` after
                each scheduler step; may return replacements for the tensors it was given.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): Tensors passed to the
                callback; only `"latents"` is allowed.

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the images.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        config = self.transformer.config
        height = height or config.sample_size * self.vae_scale_factor
        width = width or config.sample_size * self.vae_scale_factor
        guidance_scale, guidance_interval = self.resolve_guidance(guidance_scale, guidance_interval)
        self.check_inputs(
            num_inference_steps,
            num_images_per_prompt,
            height,
            width,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale = guidance_scale
        self._guidance_interval = guidance_interval
        self._interrupt = False
        device = self._execution_device

        class_ids = self._class_ids(class_labels)
        if class_ids is not None:
            class_ids = class_ids.repeat_interleave(num_images_per_prompt).to(device)
            batch_size = class_ids.shape[0]
            cfg_ids = torch.cat([class_ids, torch.full_like(class_ids, config.num_classes)])
        else:
            batch_size = num_images_per_prompt
        # Latents, guidance and scheduler arithmetic stay float32 from step to step whatever the transformer's dtype:
        # in bf16, 250 small steps would each be rounded to 8 bits of mantissa. Only the transformer's input is cast.
        latents = self.prepare_latents(batch_size, height, width, torch.float32, device, generator, latents)
        model_dtype = self.transformer.dtype

        extra_set_timesteps = {}
        # A scheduler built with from_config keeps the keys it does not use (e.g. the SDE one, a FlowMatchEuler
        # config's `use_dynamic_shifting`): shift only where set_timesteps takes `mu`.
        if (
            getattr(self.scheduler.config, "use_dynamic_shifting", False)
            and "mu" in inspect.signature(self.scheduler.set_timesteps).parameters
        ):
            finest_tokens = (latents.shape[-2] // config.patch_sizes[-1]) * (
                latents.shape[-1] // config.patch_sizes[-1]
            )
            extra_set_timesteps["mu"] = calculate_shift(finest_tokens)
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler,
            None if sigmas is not None else num_inference_steps,
            device,
            sigmas=sigmas,
            **extra_set_timesteps,
        )
        self._num_timesteps = len(timesteps)
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        # Flow time t of each step, on the host once, so that the guidance interval costs no device sync per step.
        flow_times = (timesteps.float() / self.scheduler.config.num_train_timesteps).tolist()
        step_kwargs = (
            {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        )
        scale_model_input = getattr(self.scheduler, "scale_model_input", None)
        in_channels = config.in_channels
        # Only when given: a transformer wrapper (an offloading or testing one) need not know the argument.
        transformer_kwargs = {"attention_kwargs": attention_kwargs} if attention_kwargs is not None else {}
        # Caches keep their state per context: unguided steps run in "cond", guided ones (a [cond, uncond] batch) in
        # CFG_CONTEXT. Every state starts cold at each call and wherever the batch layout changes (a guidance
        # interval's edge), so nothing leaks between calls, images or layouts.
        cache_context = getattr(self.transformer, "cache_context", None)
        reset_cache = getattr(self.transformer, "_reset_stateful_cache", None)
        if reset_cache is not None:
            reset_cache()
        previous_context = None

        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                flow_t = flow_times[i]
                guided = self.do_classifier_free_guidance and (
                    guidance_interval is None or guidance_interval[0] <= flow_t <= guidance_interval[1]
                )
                model_input = torch.cat([latents, latents]) if guided else latents
                if scale_model_input is not None:
                    model_input = scale_model_input(model_input, t)
                model_t = (t.float() / self.scheduler.config.num_train_timesteps).expand(model_input.shape[0])
                labels = cfg_ids if guided else class_ids
                self._current_timestep = t
                context_name = CFG_CONTEXT if guided else "cond"
                if reset_cache is not None and previous_context not in (None, context_name):
                    reset_cache()
                previous_context = context_name
                context = (
                    cache_context(
                        context_name, step_index=i, num_inference_steps=len(timesteps), timestep=t, sigma=flow_t
                    )
                    if cache_context is not None
                    else contextlib.nullcontext()
                )
                with context:
                    velocity = self.transformer(
                        model_input.to(model_dtype), model_t, labels, return_dict=False, **transformer_kwargs
                    )[0]
                velocity = velocity[:, :in_channels].float()  # "joint" models predict extra channels
                if guided:
                    cond, uncond = velocity.chunk(2)
                    velocity = uncond + self.guidance_scale * (cond - uncond)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False, **step_kwargs)[0]

                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    callback_kwargs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents).float()  # a callback's too stays float32

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        self._current_timestep = None
        if output_type == "latent":
            image = latents
        else:
            image = self.decode_latents(latents)
            image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents to images in [-1, 1] (pixel-space models return their samples unchanged)."""
        if self.vae is None:
            return latents
        latents = denormalize_latents(latents, self.vae.config)
        dtype = self.vae.dtype
        if dtype == torch.float16 and self.vae.config.force_upcast:
            self.vae.to(torch.float32)
            dtype = torch.float32
        return self.vae.decode(latents.to(dtype), return_dict=False)[0]
