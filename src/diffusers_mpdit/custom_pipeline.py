"""Entry file for `DiffusionPipeline.from_pretrained(..., custom_pipeline=diffusers_mpdit.CUSTOM_PIPELINE,
trust_remote_code=True)`: diffusers loads it as remote code and finds the package's pipeline class in it."""

from diffusers_mpdit.pipelines.pipeline_mpdit import MPDiTPipeline  # noqa: F401
