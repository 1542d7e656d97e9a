"""Operators of Bistro job DAGs.

The exceptions an operator raises to report a Bistro status are importable from here too.
"""

from __future__ import annotations

from bistro_provider.exceptions import BistroFailed, BistroIncomplete, BistroTaskResult

__all__ = ["BistroFailed", "BistroIncomplete", "BistroTaskResult"]
