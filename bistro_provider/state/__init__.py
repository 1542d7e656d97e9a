"""Read and change what the Bistro executor shares through the metadata database.

The REST API and the CLI both use `BistroState`; nothing here imports FastAPI.
"""

from __future__ import annotations

from bistro_provider.state.actions import CLI_USER_PREFIX
from bistro_provider.state.bistro_state import BistroState
from bistro_provider.state.snapshot import StateError

__all__ = ["CLI_USER_PREFIX", "BistroState", "StateError"]
