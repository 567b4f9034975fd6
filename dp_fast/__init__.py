"""dp_fast: fast Diffusion Policy (transformer hybrid-image variant)."""
from .backends import backends
from .checkpoint import load_policy
from .config import PolicyConfig, SchedulerConfig
from .policy import DiffusionPolicy

__version__ = "0.1.0"
__all__ = ["DiffusionPolicy", "PolicyConfig", "SchedulerConfig", "load_policy", "backends", "__version__"]
