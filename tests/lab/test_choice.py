import numpy as np
import pytest
import torch

from adamhd.lab.choice import accuracy, build_items, ending_scores
from adamhd.lab.data import ByteTokenizer
from adamhd.lab.model import GPT, GPTConfig

TEXTS = ["\n".join(f"work {d} line number {i:03d} of the play" for i in range(300))
         for d in range(3)]


def test_items_are_fixed_and_hold_the_true_next_line():
    tok = ByteTokenizer()
    items = build_items(TEXTS, tok, n_items=20, n_choices=4, context_lines=2, min_gap=10)
    again = build_items(TEXTS, tok, n_items=20, n_choices=4, context_lines=2, min_gap=10)
    assert len(items) == 20
    for a, b in zip(items, again, strict=True):
        assert a.answer == b.answer and np.array_equal(a.context, b.context)
    answers = set()
    for it in items:
        assert len(it.endings) == 4 and 0 <= it.answer < 4
        answers.add(it.answer)
        context = tok.decode(it.context)
        true = tok.decode(it.endings[it.answer])
        prev = context.rstrip("\n").splitlines()[-1]
        d, i = int(prev.split()[1]), int(prev.split()[4])
        assert true == f"work {d} line number {i + 1:03d} of the play"  # the real next line
        endings = [tok.decode(e) for e in it.endings]
        assert len(set(endings)) == 4
        for k, e in enumerate(endings):
            if k != it.answer:  # a distractor: another work, or far away in the same one
                dd, ii = int(e.split()[1]), int(e.split()[4])
                assert dd != d or abs(ii - (i + 1)) > 10
    assert len(answers) > 1  # the answer's position is not fixed


def reference_scores(model, items, context):
    """Independent float64 reference: one sequence at a time, full log-softmax."""
    out = []
    for it in items:
        row = []
        keep = max(1, context // 2)
        for e in it.endings:
            e = e[:keep]
            c = it.context[-(context + 1 - e.size):]
            seq = torch.tensor(np.concatenate([c, e]).astype(np.int64))
            logits, _ = model(seq[:-1][None])
            logp = torch.log_softmax(logits[0].double(), -1)
            total = sum(float(logp[c.size - 1 + j, int(e[j])].detach()) for j in range(e.size))
            row.append(total / e.size)
        out.append(row)
    return np.array(out)


def test_scores_equal_a_per_sequence_reference_and_accuracy_counts():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, context=24, n_layer=1, n_head=2, n_embd=16))
    items = build_items(TEXTS, ByteTokenizer(), n_items=6, n_choices=3, min_gap=10)
    got = ending_scores(model, items, context=24, batch_size=4, device=torch.device("cpu"))
    np.testing.assert_allclose(got, reference_scores(model, items, 24), rtol=1e-5, atol=1e-5)
    res = accuracy(model, items, context=24, batch_size=4, device=torch.device("cpu"))
    expected = sum(int(np.argmax(r) == it.answer) for r, it in zip(got, items, strict=True))
    assert res == {"accuracy": expected / 6, "correct": expected, "items": 6, "choices": 3}


def test_too_few_lines_give_no_items():
    assert build_items(["short\nlines"], ByteTokenizer(), n_items=5) == []
    with pytest.raises(ValueError, match="at least 2"):
        build_items(TEXTS, ByteTokenizer(), n_choices=1)
