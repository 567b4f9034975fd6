"""dp_fast: fast Diffusion Policy (transformer hybrid-image variant)."""
from .backends import BackendUnavailable, available_backends
from .config import PolicyConfig, SchedulerConfig
from .export import export_onnx
from .load import load_policy
from .policy import DiffusionPolicy

__version__ = "0.1.0"
__all__ = ["DiffusionPolicy", "PolicyConfig", "SchedulerConfig", "load_policy", "export_onnx", "available_backends",
           "BackendUnavailable", "__version__"]
