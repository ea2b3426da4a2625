"""Checked argparse types shared by the ``adamhd`` commands: a bad value is a usage error that
names the option, raised by the parser before any work starts."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable


def number(convert: Callable, what: str, ok: Callable, rule: str) -> Callable:
    """An argparse ``type`` that converts with ``convert`` and checks ``ok`` (``rule`` in words).

    Floats must also be finite: ``inf`` and ``nan`` are never a useful setting here."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = number(int, "a whole number", lambda v: v >= 1, ">= 1")
nonneg_int = number(int, "a whole number", lambda v: v >= 0, ">= 0")
positive_float = number(float, "a number", lambda v: v > 0, "> 0")
nonneg_float = number(float, "a number", lambda v: v >= 0, ">= 0")


def list_of(kind: Callable) -> Callable:
    """A comma-separated list, each item parsed by ``kind``."""

    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [kind(t) for t in items]

    return parse


def choices_of(allowed: Iterable[str]) -> Callable:
    """A comma-separated list whose items must all be in ``allowed``."""
    allowed = list(allowed)

    def one(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(
                f"unknown value {text!r}; choose from {', '.join(allowed)}")
        return text

    return list_of(one)
