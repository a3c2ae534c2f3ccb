from .._lazy import lazy_exports

_EXPORTS = {"DIFFUSION_FORMS": "diffusion", "FlowMatchEulerMaruyamaScheduler": "scheduling_flow_match_euler_maruyama"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
