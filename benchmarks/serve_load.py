"""Load test of `photolabel serve`: latency and throughput of single-image predictions.

One run of this script:
  1. starts `photolabel serve` on 127.0.0.1 (a fresh DATA_DIR) and trains a model on
     the example data through POST /v1/train;
  2. from a SEPARATE load process (a minimal asyncio HTTP/1.1 client with keep-alive),
     sends --count single-image predict requests (raw image/jpeg bodies of a 300x300
     JPEG) at concurrency 1 and then 16, and prints p50/p99 latency, requests/s and
     errors for each;
  3. measures the core's batch embedding throughput (embed_images, batch 32, same
     image bytes) in this process, with the server idle, and prints the ratio
     requests/s at concurrency 16 / batch images/s.

Targets for issue 3: p50 at concurrency 1 <= 40 ms; ratio >= 0.7; zero errors.
Usage: python benchmarks/serve_load.py [--count 400]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "fashion-tiny"
IMAGE = DATA / "sweater" / "1087.jpg"  # 300x300


# --- the load process ------------------------------------------------------------------
async def _one_connection(host: str, port: int, path: str, body: bytes, jobs: asyncio.Queue,
                          latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        while True:
            try:
                jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            status = int(status_line.split()[1]) if status_line else 0
            if status != 200 or b'"label"' not in payload:
                errors.append(f"{status} {payload[:200]!r}")
    finally:
        writer.close()


async def _load(url: str, model: str, count: int, concurrency: int) -> dict:
    host, port = url.split("//")[1].split(":")
    body = IMAGE.read_bytes()
    path = f"/v1/models/{model}/predict"
    jobs: asyncio.Queue = asyncio.Queue()
    for i in range(count):
        jobs.put_nowait(i)
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    await asyncio.gather(*[_one_connection(host, int(port), path, body, jobs, latencies, errors)
                           for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "rps": len(latencies) / elapsed,
    }


def load_main(url: str, model: str, count: int, concurrency: int) -> None:
    print(json.dumps(asyncio.run(_load(url, model, count, concurrency))))


# --- the orchestrating process ---------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, timeout: float) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not become ready")


def _train(url: str) -> str:
    import httpx

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for label in ("blouse", "halter", "sweater"):
            tar.add(DATA / label, arcname=label)
    response = httpx.post(f"{url}/v1/train", files={"data": ("fashion.tar.gz", buffer.getvalue())}, timeout=60)
    response.raise_for_status()
    job_id = response.json()["job_id"]
    for _ in range(600):
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()
        if job["status"] == "ready":
            return job["model_id"]
        if job["status"] == "error":
            raise SystemExit(f"training failed: {job['error']}")
        time.sleep(0.5)
    raise SystemExit("training did not finish")


def _batch_throughput(cache_dir: str) -> float:
    from photolabel.backbones import get_backbone
    from photolabel.embedding import ImageInput, embed_images

    backbone = get_backbone("efficientnet-lite0", cache_dir=cache_dir)
    body = IMAGE.read_bytes()
    inputs = [ImageInput(f"copy-{i}", data=body) for i in range(320)]
    embed_images(inputs[:32], backbone, batch_size=32)
    start = time.perf_counter()
    embed_images(inputs, backbone, batch_size=32, workers=os.cpu_count() or 2)
    return len(inputs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--load", nargs=4, metavar=("URL", "MODEL", "COUNT", "CONCURRENCY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        url, model, count, concurrency = args.load
        load_main(url, model, int(count), int(concurrency))
        return
    from PIL import Image

    with Image.open(IMAGE) as image:
        size = image.size
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="photolabel-bench-") as tmp:
        cache_dir = os.environ.get("PHOTOLABEL_CACHE_DIR") or str(Path(tmp) / "cache")
        env = dict(os.environ, DATA_DIR=str(Path(tmp) / "data"), PHOTOLABEL_CACHE_DIR=cache_dir)
        server = subprocess.Popen(
            [sys.executable, "-m", "photolabel.adapters.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            _wait_ready(url, 120)
            model = _train(url)
            print(f"server {url}, model {model[:16]}…, image {IMAGE.name} {size[0]}x{size[1]} JPEG, "
                  f"{args.count} requests per level, cores={os.cpu_count()}")
            results = []
            for concurrency in (1, 16):
                out = subprocess.run(
                    [sys.executable, __file__, "--load", url, model, str(args.count), str(concurrency)],
                    check=True, capture_output=True, text=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(result)
                print(f"concurrency {concurrency:>2}: p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                      f"{result['rps']:7.1f} req/s  errors {result['errors']}"
                      + (f"  first error: {result['first_error']}" if result["errors"] else ""))
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        batch = _batch_throughput(cache_dir)
    print(f"core batch embedding throughput (batch 32, same image): {batch:7.1f} images/s")
    print(f"p50 at concurrency 1: {results[0]['p50_ms']:.1f} ms (target <= 40)")
    print(f"ratio req/s at concurrency 16 / batch images/s: {results[1]['rps'] / batch:.2f} (target >= 0.7)")
    print(f"errors: {sum(r['errors'] for r in results)} (target 0)")


if __name__ == "__main__":
    main()
