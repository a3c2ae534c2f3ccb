from .pipeline_mpdit import MPDiTPipeline, default_scheduler, official_euler_sigmas

__all__ = ["MPDiTPipeline", "default_scheduler", "official_euler_sigmas"]
