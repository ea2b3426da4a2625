"""A multiple-choice continuation task built from held-out text, scored like HellaSwag.

Each item: the lines before a held-out line (the context), the true next line, and
`n_choices - 1` distractor lines drawn from elsewhere in the held-out text (another work, or at
least `min_gap` lines away). The model picks the ending with the highest mean log-likelihood per
token given the context (the length-normalised score evaluation harnesses use for HellaSwag-style
tasks); accuracy is the fraction of items where that is the true line; chance is 1/n_choices.

At this scale it measures whether the model has learned the local coherence of the text
(a speech continuing its sentence, verse running on, a speaker's name after a cue): a language-
modelling skill on unseen text, scored as a task, not reasoning or knowledge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TASK_SEED = 1_000_117  # fixed: every run is scored on the same items


@dataclass(frozen=True)
class ChoiceItem:
    context: np.ndarray  # token ids
    endings: tuple[np.ndarray, ...]
    answer: int  # index of the true ending


@dataclass(frozen=True)
class _Line:
    doc: int
    index: int
    text: str


def _candidates(texts: list[str], min_chars: int, max_chars: int) -> tuple[list, list[_Line]]:
    docs = [t.splitlines() for t in texts]
    lines = [_Line(d, i, line.strip()) for d, ls in enumerate(docs) for i, line in enumerate(ls)
             if min_chars <= len(line.strip()) <= max_chars]
    return docs, lines


def build_items(texts: list[str], tokenizer, *, n_items: int = 200, n_choices: int = 4,
                context_lines: int = 8, max_context_tokens: int = 512, min_chars: int = 20,
                max_chars: int = 80, min_gap: int = 200, seed: int = TASK_SEED
                ) -> list[ChoiceItem]:
    """Up to `n_items` items from `texts` (held-out works), the same for the same arguments."""
    if n_choices < 2:
        raise ValueError(f"a choice needs at least 2 endings, got {n_choices}")
    docs, lines = _candidates(texts, min_chars, max_chars)
    rng = np.random.default_rng(seed)
    usable = [c for c in lines if c.index >= 1]
    if len(usable) < n_choices:
        return []
    picks = rng.choice(len(usable), size=min(n_items, len(usable)), replace=False)
    items = []
    for k in sorted(picks.tolist()):
        true = usable[k]
        before = docs[true.doc][max(0, true.index - context_lines):true.index]
        context = tokenizer.encode("\n".join(before) + "\n")[-max_context_tokens:]
        others = _distractors(lines, true, n_choices - 1, min_gap, rng)
        if others is None:
            continue
        answer = int(rng.integers(n_choices))
        endings = list(others)
        endings.insert(answer, true.text)
        items.append(ChoiceItem(context, tuple(tokenizer.encode(e) for e in endings), answer))
    return items


def _distractors(lines: list[_Line], true: _Line, n: int, min_gap: int, rng):
    """`n` distinct lines unlike `true`, far from it (another work, or > min_gap lines away);
    a short single text that has too few far lines takes near ones; None if even that fails."""
    picked: list[str] = []
    for attempt in range(200 * n):
        cand = lines[int(rng.integers(len(lines)))]
        far = cand.doc != true.doc or abs(cand.index - true.index) > min_gap
        if (far or attempt >= 100 * n) and cand.text != true.text and cand.text not in picked:
            picked.append(cand.text)
            if len(picked) == n:
                return picked
    return None


def _rows(items: list[ChoiceItem], context: int):
    """(token sequence, first scored position, scored length) per ending, fitted to `context`."""
    out = []
    for item in items:
        keep = max(1, context // 2)  # every ending of an item cut alike if it is very long
        for ending in item.endings:
            e = ending[:keep]
            c = item.context[-(context + 1 - e.size):]
            out.append((np.concatenate([c, e]).astype(np.int64), c.size, e.size))
    return out


@torch.no_grad()
def ending_scores(model, items: list[ChoiceItem], *, context: int, batch_size: int,
                  device: torch.device) -> np.ndarray:
    """Mean log-likelihood per token of every ending: shape (items, choices)."""
    rows = _rows(items, context)
    scores = np.empty(len(rows))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            width = max(seq.size for seq, _, _ in chunk) - 1
            x = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, (seq, _, _) in enumerate(chunk):
                x[r, :seq.size - 1] = torch.from_numpy(seq[:-1])
            logits, _ = model(x.to(device))
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for r, (seq, start, n) in enumerate(chunk):
                targets = torch.from_numpy(seq[start:start + n])
                pos = torch.arange(start - 1, start - 1 + n)
                scores[i + r] = float(logp[r, pos, targets].mean())
    finally:
        model.train(was_training)
    return scores.reshape(len(items), -1)


def accuracy(model, items: list[ChoiceItem], **kw) -> dict:
    """{"accuracy", "correct", "items", "choices"} of `model` on `items`."""
    if not items:
        return {"accuracy": float("nan"), "correct": 0, "items": 0, "choices": 0}
    scores = ending_scores(model, items, **kw)
    answers = np.array([it.answer for it in items])
    correct = int((scores.argmax(1) == answers).sum())
    return {"accuracy": correct / len(items), "correct": correct, "items": len(items),
            "choices": scores.shape[1]}
