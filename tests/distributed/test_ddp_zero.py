"""DDP and ``ZeroRedundancyOptimizer(optimizer_class=AdamHD)`` on 2 processes match 1 process."""

from __future__ import annotations

import torch

from adamhd import AdamHD
from tests.distributed import common


def test_ddp_matches_single_process(dist_results):
    model, _ = common.reference(foreach=True)
    want = common.weights(model)
    for name, w in dist_results["ddp"]["weights"].items():
        torch.testing.assert_close(w, want[name], atol=1e-6, rtol=1e-5, msg=name)


def test_zero_redundancy_optimizer_matches_single_process(dist_results):
    model = common.make_model()
    opt = AdamHD(model.parameters(), **common.BASE, foreach=True)
    common.train(model, opt, common.batches())
    want = common.weights(model)
    got = dist_results["zero"]
    for name, w in got["weights"].items():
        torch.testing.assert_close(w, want[name], atol=1e-6, rtol=1e-5, msg=name)
    mus = common.state_by_name(model, opt, "delta_mu")
    assert got["delta_mu"].keys() == mus.keys()
    for name, mu in got["delta_mu"].items():
        torch.testing.assert_close(mu, mus[name], atol=1e-7, rtol=1e-6, msg=name)
