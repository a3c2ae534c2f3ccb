"""Training helpers shared by the example scripts and the tests: data, the flow-matching objective, latent
normalisation and caches, checkpoints, LoRA."""

from ..pipelines.latents import denormalize_latents, normalize_latents
from .checkpoints import CHECKPOINT_FILES, LORA_CHECKPOINT_FILES, check_checkpoint, list_checkpoints, save_checkpoint
from .data import (
    EpochSampler,
    ImageTransform,
    UnreadableImageError,
    center_crop_arr,
    collate,
    decode_image,
    drop_unreadable_images,
    image_folder_classes,
    image_to_tensor,
    load_image_dataset,
    pad_to,
)
from .ema import ema_initial_weight, ema_warning, load_ema
from .flow_matching import (
    WEIGHTING_SCHEMES,
    drop_class_labels,
    flow_matching_loss,
    sample_flow_times,
    step_generator,
)
from .latent_cache import LatentCacheDataset
from .lora import (
    LORA_TARGET_MODULES,
    add_lora,
    class_label_map,
    load_trainable_state_dict,
    optimizer_groups,
    save_lora,
    trainable_state_dict,
)

__all__ = [
    "CHECKPOINT_FILES",
    "LORA_CHECKPOINT_FILES",
    "LORA_TARGET_MODULES",
    "WEIGHTING_SCHEMES",
    "add_lora",
    "class_label_map",
    "EpochSampler",
    "ImageTransform",
    "LatentCacheDataset",
    "UnreadableImageError",
    "center_crop_arr",
    "check_checkpoint",
    "collate",
    "decode_image",
    "denormalize_latents",
    "drop_class_labels",
    "drop_unreadable_images",
    "ema_initial_weight",
    "ema_warning",
    "flow_matching_loss",
    "image_folder_classes",
    "image_to_tensor",
    "list_checkpoints",
    "load_ema",
    "load_image_dataset",
    "load_trainable_state_dict",
    "normalize_latents",
    "optimizer_groups",
    "pad_to",
    "sample_flow_times",
    "save_checkpoint",
    "save_lora",
    "step_generator",
    "trainable_state_dict",
]
