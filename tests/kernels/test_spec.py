"""The kernel spec (adamhd.kernels.spec) is what the kernels are: its schema is the registered
op's, and the eligibility decision follows its table."""

import math

import pytest
import torch

from adamhd import AdamHD
from adamhd.decay import HuberDecay, L2Decay
from adamhd.kernels import cpu, fused_rule_reason, fused_update_reason, spec
from adamhd.update_rules import UpdateRule


def test_schema_is_the_registered_ops():
    if cpu.load() is None:
        pytest.skip(f"fused CPU kernel unavailable: {cpu.build_error()}")
    registered = str(torch.ops.adamhd.fused_step_.default._schema)
    assert registered == "adamhd::" + spec.SCHEMA


def test_eligibility_follows_the_table(monkeypatch):
    huber = HuberDecay(delta=1.0)
    assert fused_rule_reason(huber) is None and fused_rule_reason(L2Decay()) is None
    assert fused_update_reason(UpdateRule(update="atan2")) is None
    rule = UpdateRule(trust_ratio=True, diffgrad=True)
    assert fused_update_reason(rule) is None and fused_update_reason(rule, "cpu") is None
    assert "trust_ratio" in fused_update_reason(rule, "cuda")
    monkeypatch.setitem(spec.UPDATE_OPTIONS, "cpu", ("trust_ratio",))
    assert fused_update_reason(UpdateRule(trust_ratio=True), "cpu") is None
    assert "diffgrad" in fused_update_reason(rule, "cpu")
    assert "diffgrad" in fused_update_reason(rule)
    monkeypatch.setattr(spec, "UPDATE_KINDS", {"adam": 0})
    assert "atan2" in fused_update_reason(UpdateRule(update="atan2"))
    monkeypatch.setattr(spec, "DECAY_RULES", ("l2",))
    assert "decay rule" in fused_rule_reason(huber)
    assert fused_rule_reason(L2Decay()) is None


def test_a_dtype_outside_the_table_is_refused_with_its_name(monkeypatch):
    monkeypatch.setitem(spec.DTYPES, "cpu", (torch.float32,))
    with pytest.raises(RuntimeError, match="torch.float64"):
        AdamHD([torch.zeros(3, dtype=torch.float64, requires_grad=True)], fused=True)


def test_op_args_follow_the_records():
    from adamhd.hyper import AdamStep, AdamTensors

    p = torch.ones(3)
    t = AdamTensors([p], [p], [p], [p], [p], [torch.zeros(())], [torch.ones(())])
    h = AdamStep(decay=HuberDecay(delta="adaptive"), lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                 weight_decay=0.5, update=UpdateRule(update="softplus", softplus_beta=7.0))
    args = dict(zip((a.name for a in spec.ARGS), spec.op_args(t, h, None, None)))
    assert args["max_exp_avg_sqs"] == [] and args["mus"] == t.delta_mus
    assert args["decay_kind"] == 1 and args["delta"] == math.inf and args["adaptive"] is True
    assert (args["update_kind"], args["update_a"], args["update_b"]) == (2, 7.0, 20.0)
    assert args["lr"] == 0.1 and args["lr_tensor"] is None and len(args) == len(spec.ARGS)
    assert args["prev_grads"] == [] and args["adanorm_es"] == [] and not args["adanorm"]


def test_op_args_carry_the_update_options_and_their_state():
    from adamhd.hyper import AdamStep, AdamTensors
    from adamhd.update_rules import ADANORM_GAMMA, CAUTIOUS_MIN_FRACTION

    p, e, prev = torch.ones(3), torch.zeros(()), torch.zeros(3)
    t = AdamTensors([p], [p], [p], [p], [], [torch.zeros(())], [])
    h = AdamStep(decay=HuberDecay(delta=0.5), lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                 weight_decay=0.5, update=UpdateRule(cautious=True, adanorm=True))
    args = dict(zip((a.name for a in spec.ARGS),
                    spec.op_args(t, h, None, None, [{"adanorm_e": e, "prev_grad": prev}])))
    assert args["adanorm_es"] == [e] and args["prev_grads"] == []
    assert args["cautious_update"] and args["adanorm"] and not args["trust_ratio"]
    assert not args["diffgrad"] and not args["cautious"]  # cautious decay is off
    assert (args["adanorm_gamma"], args["cautious_floor"]) == (ADANORM_GAMMA, CAUTIOUS_MIN_FRACTION)
    with pytest.raises(ValueError, match="adanorm_e"):
        spec.op_args(t, h, None, None, None)


def test_tensor_record_selects_positions_and_keeps_empty_lists_empty():
    from adamhd.hyper import AdamTensors

    xs = [torch.full((2,), float(i)) for i in range(3)]
    t = AdamTensors(xs, xs, xs, xs, [], xs, [])
    part = t.select([2, 0])
    assert [p[0].item() for p in part.params] == [2.0, 0.0] and len(part) == 2
    assert part.max_exp_avg_sqs == [] and part.delta_mus == [] and len(part.lists()) == 7
