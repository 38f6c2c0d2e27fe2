"""The predictor cache is bounded (least recently used models go) and a batch answers every request."""

from __future__ import annotations

import asyncio
from pathlib import Path

from photolabel.adapters.http.batching import PredictorCache
from photolabel.embedding import ImageInput
from photolabel.model import Model


def test_lru_keeps_at_most_size_models_and_evicts_the_least_recently_used(trained_model: Path,
                                                                          small_data: Path) -> None:
    loads: list[str] = []

    def loader(model_id: str, path: str) -> Model:
        loads.append(model_id)
        return Model.load(path)

    image = ImageInput("x.jpg", data=min((small_data / "halter").iterdir()).read_bytes())

    async def scenario() -> None:
        cache = PredictorCache(2, loader=loader, max_wait_ms=1)
        try:
            for key in ("a", "b", "a", "c"):  # "b" is least recently used when "c" arrives
                batcher = await cache.get(key, str(trained_model))
                assert (await batcher.predict(image)).label in ("blouse", "halter", "sweater")
            assert len(cache) == 2 and "a" in cache and "c" in cache and "b" not in cache
            await cache.get("b", str(trained_model))
            assert "a" not in cache  # "a" was now the oldest
        finally:
            cache.close()

    asyncio.run(scenario())
    assert loads == ["a", "b", "c", "b"]  # a hit loads nothing; an evicted model loads again
