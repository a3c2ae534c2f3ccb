from .._lazy import lazy_exports

_EXPORTS = {
    "ClassNames": "class_names",
    "MPDiTPipeline": "pipeline_mpdit",
    "default_scheduler": "timesteps",
    "official_euler_sigmas": "timesteps",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
