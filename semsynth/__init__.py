"""semsynth: photographs from semantic layouts (CRN and SIMS, faithful and practical)."""
from .labels import LabelError, LabelSpace, get_space
from .models import build_model, count_parameters
from .pipelines import CRNPipeline, load_pipeline

__version__ = "0.1.0"
__all__ = ["LabelError", "LabelSpace", "get_space", "build_model", "count_parameters", "CRNPipeline", "load_pipeline", "__version__"]
