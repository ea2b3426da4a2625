"""Shared fixtures: small synthetic corpora written to tmp_path (nothing is downloaded)."""

from __future__ import annotations

import random

import pytest
import torch

WORDS = ("the king and queen of a far land spoke of love war and the sea while the fool sang "
         "songs of gold and grief to lords and ladies at the gate").split()


def make_text(seed: int, n_words: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_words // 8):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads cost more than they give, and CI is small
    yield
    torch.set_num_threads(old)


@pytest.fixture
def works_dir(tmp_path):
    d = tmp_path / "works"
    d.mkdir()
    for i in range(10):
        (d / f"work_{i:02d}.txt").write_text(make_text(i, 400))
    return d


@pytest.fixture
def other_domain(tmp_path):
    rng = random.Random(99)
    words = "numbers tables and prices of grain rose in the market during the year".split()
    path = tmp_path / "other.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(80)))
    return path
