"""``adamhd bench lowbit`` / ``bench memory`` on low-bit AdamHD states (numbers, not speed)."""

from __future__ import annotations

import torch

from adamhd.bench import lowbit, memory


def test_errors_of_the_formats_on_adam_like_moments():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(50, 4096, generator=g) * torch.logspace(-4, 0, 4096)
    m = 0.1 * grads.mean(0) + grads[-1] * 0.05
    v = (grads**2).mean(0)
    bf16, int8 = lowbit.errors(m, v, "bfloat16"), lowbit.errors(m, v, "int8")
    assert bf16["m_p99"] <= 2.0**-8 and bf16["update"] < 0.005
    assert int8["m_p99"] <= 2.0**-4 * 1.001 and int8["v_zeroed"] == 0.0
    assert 0.005 < int8["update"] < 0.06
    table = lowbit.format_table([{"step": 1, "format": "int8", **int8}])
    assert table.count("\n") == 2 and "| 1 | int8 |" in table


def test_memory_rows_of_low_bit_states():
    rows = memory.run(1, ["AdamHD state_dtype=bfloat16", "AdamHD state_dtype=int8"],
                      n_embd=64, n_layer=1, vocab=512)
    by_name = {r.name: r for r in rows}
    assert by_name["torch AdamW fused"].state_bytes_per_param > 8
    assert 4 < by_name["AdamHD state_dtype=bfloat16"].state_bytes_per_param < 4.1
    assert 2 < by_name["AdamHD state_dtype=int8"].state_bytes_per_param < 2.6
