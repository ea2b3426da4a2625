"""``torch.distributed.checkpoint`` of model + AdamHD state under FSDP2, resharded 2 <-> 1."""

from __future__ import annotations

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from tests.distributed import common


def assert_matches_reference(got: dict) -> None:
    model, _ = common.reference(foreach=True)
    want = common.weights(model)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=name)


def test_state_initialisation_step_changes_no_weight(dist_results):
    r = dist_results["dcp"]
    for name, before in r["init_weights_before"].items():
        assert torch.equal(r["init_weights_after"][name], before), name
        # the threshold EMA starts at the whole tensor's mean|p| and the lr=0 step keeps it
        torch.testing.assert_close(r["init_delta_mu"][name], before.abs().mean())


def test_save_with_two_processes_and_continue(dist_results):
    assert_matches_reference(dist_results["dcp"]["continued_weights"])


def test_reshard_one_to_two_processes(dist_results):
    r = dist_results["dcp"]
    assert set(r["resumed_step"].values()) == {2.0}
    model, opt = common.reference(steps=2, foreach=True)
    for name, mu in common.state_by_name(model, opt, "delta_mu").items():
        torch.testing.assert_close(r["resumed_delta_mu"][name], mu)
    assert_matches_reference(r["resumed_weights"])


def test_reshard_two_to_one_process(dist_results):
    model = common.make_model()
    opt = common.make_optimizer(model, foreach=True)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(dist_results["out"] / "ckpt_2proc"))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    ref_model, ref_opt = common.reference(steps=2, foreach=True)
    for key in ("delta_mu", "exp_avg", "exp_avg_sq", "step"):
        want = common.state_by_name(ref_model, ref_opt, key)
        got = common.state_by_name(model, opt, key)
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5)
    common.train(model, opt, common.batches()[2:])
    assert_matches_reference(common.weights(model))
