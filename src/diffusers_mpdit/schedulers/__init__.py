from .scheduling_flow_match_euler_maruyama import DIFFUSION_FORMS, FlowMatchEulerMaruyamaScheduler

__all__ = ["DIFFUSION_FORMS", "FlowMatchEulerMaruyamaScheduler"]
