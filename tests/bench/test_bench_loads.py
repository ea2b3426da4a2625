"""``adamhd.bench.loads`` runs and reports (no speed is asserted: speed lives in its output)."""

from __future__ import annotations

import copy

import pytest
import torch

import adamhd
from adamhd.bench import loads
from adamhd.state import StateError


def test_run_times_checked_and_unchecked_loads():
    rows = loads.run(["nsgda", "nadamhd"], n=4, layouts="distinct", rounds=2)
    assert [r.optimizer for r in rows] == ["nsgda", "nadamhd"]
    for r in rows:
        for times in (r.checked_ms, r.unchecked_ms, r.first_step_ms, r.next_step_ms):
            assert len(times) == 2 and all(t > 0 for t in times)
        assert r.line().startswith(f"| {r.optimizer} |")


@pytest.mark.parametrize("make", [adamhd.NSGDA, adamhd.NAdamHD])
def test_unchecked_really_turns_the_check_off_and_back_on(make):
    ps = [torch.nn.Parameter(torch.randn(4, 3))]
    opt = make(ps)
    ps[0].grad = torch.ones(4, 3)
    opt.step()
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][0]["exp_avg" if make is adamhd.NAdamHD else "momentum_buffer"] = torch.zeros(5)
    with loads._unchecked(False):
        opt.load_state_dict(copy.deepcopy(bad))  # the corrupt state goes in unchecked
    with pytest.raises(StateError):
        opt.load_state_dict(bad)


def test_main_prints_the_table(capsys):
    assert loads.main(["--optimizers", "sm3", "--params", "2", "--rounds", "1"]) == 0
    assert "| sm3 |" in capsys.readouterr().out


def test_unknown_optimizer_is_an_error():
    with pytest.raises(ValueError, match="--optimizers: unknown sm3x"):
        loads.main(["--optimizers", "sm3x"])
