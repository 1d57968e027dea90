from .entrgi import EntRGiPipeline, EntRGiPipelineOutput

__all__ = ["EntRGiPipeline", "EntRGiPipelineOutput"]
