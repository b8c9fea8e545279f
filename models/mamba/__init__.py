"""Hooked Mamba-1 (see :mod:`models.mamba.model`)."""

from models.mamba.model import MambaBlock, MambaConfig, MambaLM, MambaMixer

__all__ = ["MambaBlock", "MambaConfig", "MambaLM", "MambaMixer"]
