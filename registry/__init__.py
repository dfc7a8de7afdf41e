"""lorareg: registry and lifecycle service for LoRA adapters."""

__version__ = "0.1.0"
