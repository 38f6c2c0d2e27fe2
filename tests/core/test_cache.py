"""The embedding cache: content-addressed, checked on read, safe for concurrent writers."""

from __future__ import annotations

import multiprocessing

import numpy as np

from photolabel.cache import EmbeddingCache, resolve_cache_dir

SHA = "ab" + "0" * 62


def test_round_trip_and_miss(tmp_path):
    cache = EmbeddingCache(tmp_path, "f" * 64, 4)
    assert cache.get(SHA) is None
    vector = np.array([1.5, -2.0, 0.0, 3.25], dtype=np.float32)
    cache.put(SHA, vector)
    got = cache.get(SHA)
    assert got is not None and got.tobytes() == vector.tobytes()
    assert (cache.hits, cache.misses) == (1, 1)


def test_keys_include_the_backbone_hash(tmp_path):
    EmbeddingCache(tmp_path, "a" * 64, 2).put(SHA, np.ones(2, dtype=np.float32))
    assert EmbeddingCache(tmp_path, "b" * 64, 2).get(SHA) is None


def test_corrupt_or_truncated_entries_are_misses_and_removed(tmp_path):
    cache = EmbeddingCache(tmp_path, "f" * 64, 3)
    cache.put(SHA, np.arange(3, dtype=np.float32))
    path = next(tmp_path.rglob("*.emb"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the payload
    path.write_bytes(bytes(data))
    assert cache.get(SHA) is None and cache.corrupt == 1 and not path.exists()
    cache.put(SHA, np.arange(3, dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-2])
    assert cache.get(SHA) is None


def test_refuses_non_finite_or_wrong_shape(tmp_path):
    cache = EmbeddingCache(tmp_path, "f" * 64, 2)
    for bad in (np.array([np.nan, 1.0], dtype=np.float32), np.ones(3, dtype=np.float32)):
        try:
            cache.put(SHA, bad)
        except ValueError:
            pass
        else:  # pragma: no cover - the assertion below reports it
            raise AssertionError("bad vector accepted")
    assert cache.get(SHA) is None


def _writer(root: str, seed: int) -> None:
    cache = EmbeddingCache(root, "f" * 64, 256)
    for i in range(200):
        cache.put(f"{i:064x}", np.full(256, i, dtype=np.float32))


def test_two_processes_writing_the_same_keys_leave_only_good_entries(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), s)) for s in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cache = EmbeddingCache(tmp_path, "f" * 64, 256)
    for i in range(200):
        got = cache.get(f"{i:064x}")
        assert got is not None and float(got[0]) == i
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PHOTOLABEL_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("PHOTOLABEL_CACHE_DIR")
    assert resolve_cache_dir().parts[-2:] == (".cache", "photolabel")
