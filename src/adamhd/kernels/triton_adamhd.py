"""Placeholder (being written)."""

from __future__ import annotations


def unavailable_reason() -> str | None:
    return "the Triton kernel is not written yet"
