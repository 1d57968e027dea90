from .pipeline_entrgi import EntRGiPipeline, EntRGiPipelineOutput, detect_logits_shift

__all__ = ["EntRGiPipeline", "EntRGiPipelineOutput", "detect_logits_shift"]
