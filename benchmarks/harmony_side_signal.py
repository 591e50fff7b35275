"""What the bytes and the timing of HARMONY's picture responses still say about the sides:
``python -m benchmarks.harmony_side_signal [--examples 40] [--size 224] [--rounds 15]``.

A throw-away study where the two maps differ as much as they can in compressibility (original: a
smooth heat map; fine-tuned: the same map plus pixel noise), served by the real server
(``xaibench harmony serve`` on loopback) to one logged-in annotator. For every example, the left and
right maps are fetched ``rounds`` times each, in a shuffled order. Reported, per side (fine-tuned /
original), as an annotator with developer tools would see them:

- bytes: the files as given (what the server sent before pictures were re-encoded) and the bytes
  served now; how often "the larger file is the fine-tuned map" is right;
- time: median time to the last byte, per example the difference fine-tuned - original of the
  medians (median and a bootstrap 95% interval over examples), and how often "the slower map is
  the fine-tuned one" is right, with a two-sided binomial p-value.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import random
import re
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import binomtest

CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _study(root: Path, examples: int, size: int, seed: int) -> Path:
    from xaibench.harmony.sample import make_sample_dataset

    make_sample_dataset(root, conditions=1, examples=examples, size=size, seed=seed)
    rng = np.random.default_rng(seed)
    for folder in sorted((root / "c0").iterdir()):
        smooth = np.asarray(Image.open(folder / "original.png"), dtype=np.int16)
        noisy = np.clip(smooth + rng.integers(-40, 41, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / "finetuned.png")
    return root


def _accuracy(right: int, n: int) -> str:
    return f"{right}/{n} = {right / n:.2f} (binomial p = {binomtest(right, n).pvalue:.2g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from tests.harmony_testing import LiveServer, make_annotator, use_home  # the test suite's scaffolding

    tmp = Path(tempfile.mkdtemp(prefix="harmony-side-signal-"))
    home = use_home(tmp / "home")
    data = _study(tmp / "study", args.examples, args.size, args.seed)
    from xaibench.harmony.dataset import load_dataset

    load_dataset(data, assign=False)
    make_annotator("bench", "bench password 1")
    from django.db import connections

    connections.close_all()

    given = {}  # example key -> (fine-tuned bytes, original bytes) as given
    for folder in sorted((data / "c0").iterdir()):
        given[folder.name] = ((folder / "finetuned.png").stat().st_size, (folder / "original.png").stat().st_size)

    rng = random.Random(args.seed)
    with LiveServer(home, threads=4) as server:
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        page = opener.open(server.url + "/accounts/login/").read().decode()
        body = urllib.parse.urlencode({"username": "bench", "password": "bench password 1",
                                       "csrfmiddlewaretoken": CSRF_RE.search(page).group(1)}).encode()
        opener.open(urllib.request.Request(server.url + "/accounts/login/", data=body)).read()
        for n in range(1, args.examples + 1):  # create the presentations (sides) first
            opener.open(f"{server.url}/card/1/{n}/").read()
        requests = [(n, slot) for n in range(1, args.examples + 1) for slot in ("left", "right")] * args.rounds
        rng.shuffle(requests)
        times: dict[tuple[int, str], list[float]] = {}
        served: dict[tuple[int, str], set[int]] = {}
        for n, slot in requests:
            start = time.perf_counter()
            with opener.open(f"{server.url}/card/1/{n}/picture/{slot}.png") as response:
                length = len(response.read())
            times.setdefault((n, slot), []).append(time.perf_counter() - start)
            served.setdefault((n, slot), set()).add(length)

    from xaibench.harmony.models import Assignment, Example, Presentation
    from xaibench.harmony.views import example_order

    order = example_order(Assignment.objects.get(annotator__username="bench"))
    rows = []
    for n, example_id in enumerate(order, start=1):
        left_is_ft = Presentation.objects.get(annotator__username="bench", example_id=example_id).finetuned_left
        ft, orig = ("left", "right") if left_is_ft else ("right", "left")
        key = Example.objects.get(pk=example_id).key
        rows.append({
            "given": given[key],
            "served": (served[(n, ft)], served[(n, orig)]),
            "ms": (1000 * float(np.median(times[(n, ft)])), 1000 * float(np.median(times[(n, orig)]))),
        })

    m = len(rows)
    given_ft, given_orig = np.array([r["given"] for r in rows]).T
    print(f"{m} examples, {args.size}x{args.size} maps, {args.rounds} fetches per map, seed {args.seed}")
    print(f"bytes as given:  fine-tuned median {np.median(given_ft):,.0f}, original {np.median(given_orig):,.0f}; "
          f"'larger = fine-tuned' right in {_accuracy(int((given_ft > given_orig).sum()), m)}")
    lengths = {length for r in rows for side in r["served"] for length in side}
    same = sum(r["served"][0] == r["served"][1] and len(r["served"][0]) == 1 for r in rows)
    print(f"bytes served:    {sorted(lengths)} (distinct lengths); both sides the same length in {same}/{m} examples")
    ms_ft, ms_orig = np.array([r["ms"] for r in rows]).T
    diff = ms_ft - ms_orig
    boot = np.random.default_rng(args.seed).choice(diff, (2000, m)).mean(1)
    print(f"time served:     median fine-tuned {np.median(ms_ft):.2f} ms, original {np.median(ms_orig):.2f} ms; "
          f"fine-tuned - original per example: mean {diff.mean():+.3f} ms "
          f"(bootstrap 95% {np.percentile(boot, 2.5):+.3f} to {np.percentile(boot, 97.5):+.3f})")
    print(f"                 'slower = fine-tuned' right in {_accuracy(int((diff > 0).sum()), m)}")


if __name__ == "__main__":
    main()
