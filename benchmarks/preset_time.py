"""How long ``--preset best`` takes for 1,000 images, against a default training, in one run.

The 1,000 images: fashion-tiny's 300 photos and 700 of scikit-learn's bundled digits (70
per digit), 13 labels. The embedding cache is warmed first (one default training), so
both figures are what a user waits for once their images are embedded; the embedding
time itself is printed too. Usage: python benchmarks/preset_time.py [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets

import photolabel
from photolabel.dataset import Dataset, ImageRecord


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    datasets.DIGITS_PER_CLASS = 70
    items = datasets.fashion_tiny() + datasets.digits()
    labels = sorted({item.label for item in items})
    dataset = Dataset([ImageRecord(str(i.path), i.path, i.sha256, i.label) for i in items], tuple(labels))
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        timings = {}
        for name, settings in (("embedding + default", {}), ("default (warm)", {}), ("--preset best (warm)",
                                                                                      {"preset": "best"})):
            started = time.perf_counter()
            result = photolabel.train(dataset, Path(folder) / "m", cache_dir=cache, threads=args.threads,
                                      write_run_json=False, **settings)
            timings[name] = time.perf_counter() - started
            chosen = result.model.card.head
            print(f"{name:<24} {timings[name]:7.1f} s   {len(items)} images, head {chosen.name} "
                  f"{dict(chosen.params)}", flush=True)
        print(f"--preset best / default (warm): {timings['--preset best (warm)'] / timings['default (warm)']:.1f}x")


if __name__ == "__main__":
    main()
