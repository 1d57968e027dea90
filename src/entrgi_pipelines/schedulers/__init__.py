from .scheduling_masked_diffusion import MaskedDiffusionScheduler, MaskedDiffusionSchedulerOutput

__all__ = ["MaskedDiffusionScheduler", "MaskedDiffusionSchedulerOutput"]
