import json

import pytest

from adamhd import cli
from adamhd.lab import optimizers
from adamhd.lab.leaderboard import standings
from adamhd.lab.sweep_report import load_sweep


def test_leaderboard_ranks_every_entrant_at_its_best_lr(tmp_path, works_dir):
    out = tmp_path / "lb"
    argv = ["leaderboard", "--optimizers", "adamw,adamhd,adam", "--lr", "1e-3,1e-2",
            "--steps", "4", "--batch-size", "4", "--context", "16", "--eval-every", "2",
            "--data", str(works_dir), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
            "--no-progress", "--threads", "1", "--jobs", "1"]
    assert cli.main(argv) == 0
    meta, rows, missing = load_sweep([out])
    assert meta["kind"] == "leaderboard" and not missing and len(rows) == 3 * 2 * 2
    recs = standings(meta, rows)
    assert [r["loss"].mean for r in recs] == sorted(r["loss"].mean for r in recs)
    for rec in recs:  # each at the lr with its lowest mean loss
        means = {lr: sum(r["final_val_loss"] for r in rows
                         if r["entrant"] == rec["entrant"] and r["lr"] == lr) / 2
                 for lr in (1e-3, 1e-2)}
        assert rec["lr"] == min(means, key=means.get)
    adamw = next(r for r in recs if r["entrant"] == "adamw")
    assert adamw["diff"].mean == 0 and adamw["steps_ratio"] == [1.0, 1.0]
    md = (out / "leaderboard.md").read_text()
    ranked = [line.split(" | ")[1] for line in md.splitlines() if line[:4] in ("| 1 ", "| 2 ",
                                                                              "| 3 ")]
    assert sorted(ranked) == ["adam", "adamhd", "adamw"] and (out / "leaderboard.png").is_file()
    state = {r["entrant"]: r["runs"][0]["results"]["optimizer_state_bytes_per_param"]
             for r in recs}
    assert state["adamw"] == pytest.approx(8.0, abs=0.2)  # two fp32 moments (+ step scalars)
    assert json.loads((out / "sweep.json").read_text())["base_config"]["prune"] is True
    assert cli.main(["report", str(out)]) == 0  # rebuilt from the saved runs alone
    assert (out / "leaderboard.md").read_text() == md


def test_registry_is_extensible_and_all_expands():
    class Plain(optimizers.torch.optim.SGD):
        pass

    optimizers.register("plainsgd", lambda groups, lr, wd, **kw: Plain(groups, lr=lr, **kw),
                        Plain, "SGD, for the test")
    try:
        labels = [s.label for s in optimizers.parse_specs("all")]
        assert labels[0] == "adamw" and "plainsgd" in labels and "adamhd" in labels
        assert optimizers.parse_spec("plainsgd:momentum=0.9").overrides == {"momentum": 0.9}
    finally:
        del optimizers.REGISTRY["plainsgd"]
    with pytest.raises(ValueError, match="lower case"):
        optimizers.register("Bad:name", lambda *a: None, Plain)


@pytest.mark.parametrize("name", sorted(optimizers.REGISTRY))
def test_every_registered_entrant_trains_and_resumes(name):
    import numpy as np
    import torch

    from adamhd.lab.data import train_batch
    from adamhd.lab.model import GPT, make_config

    tokens = (np.arange(4000) * 7 % 256).astype(np.uint16)
    spec = optimizers.parse_spec(name)
    lr = 1e-3 * optimizers.REGISTRY[name].lr_scale

    def run(steps, state=None):
        torch.manual_seed(0)
        model = GPT(make_config("mini", 256, context=16))
        opt = spec.build(model, lr, 0.1)
        if state is not None:
            model.load_state_dict(state[0])
            opt.load_state_dict(state[1])
        for i in range(*steps):
            x, y = train_batch(tokens, i, 0, 4, 16)
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step(**spec.step_kwargs(loss.detach()))
        return model, opt

    straight, _ = run((0, 4))
    half, opt = run((0, 2))
    resumed, _ = run((2, 4), (half.state_dict(), opt.state_dict()))
    moved = any(not torch.equal(a, b) for a, b in zip(straight.parameters(),
                                                      run((0, 0))[0].parameters(), strict=True))
    assert moved  # it trains
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # and resumes bit for bit


def test_muon_takes_only_the_block_matrices():
    from adamhd.lab.model import GPT, make_config, prunable_weights

    model = GPT(make_config("mini", 256, context=16))
    opt = optimizers.parse_spec("muonhd").build(model, 1e-3, 0.1)
    muon, rest = opt.parts
    hidden = {id(p) for p in prunable_weights(model).values()}
    assert {id(p) for g in muon.param_groups for p in g["params"]} == hidden
    others = {id(p) for g in rest.param_groups for p in g["params"]}
    assert others.isdisjoint(hidden) and len(hidden | others) == len(list(model.parameters()))
    assert type(rest).__name__ == "AdamHD"
