"""The result store reads back exactly the committed shards of a run directory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import xaibench
from xaibench.errors import InputError
from xaibench import files
from xaibench.runner import layout
from xaibench.store import load_curves, load_images, load_manifest, load_maps, load_results


def _shard_rows(index: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(index)
    return pd.DataFrame(
        {
            "image_id": [f"s{index}-{i}" for i in range(n)],
            "shard": index,
            "method": "m",
            "metric": "x",
            "score": rng.random(n),
            "nan_reason": [None] * n,
        }
    )


def _commit(out, index: int, n: int = 3) -> pd.DataFrame:
    rows = _shard_rows(index, n)
    layout.write_parquet(layout.curves_path(out, index), pd.DataFrame(
        {"image_id": rows["image_id"], "method": "m", "metric": "x", "curve": [[1.0, 0.5, float(index)]] * n}
    ))
    layout.write_torch(layout.images_path(out, index), {
        "ids": list(rows["image_id"]), "positions": list(range(index * n, index * n + n)),
        "images": torch.full((n, 1, 2, 2), index, dtype=torch.uint8),
        "labels": torch.zeros(n, dtype=torch.long), "targets": torch.zeros(n, dtype=torch.long),
    })
    layout.write_torch(layout.maps_path(out, "m", index), {"key": "k", "maps": torch.full((n, 2, 2), float(index))})
    layout.write_parquet(layout.results_path(out, index), rows)
    return rows


@pytest.fixture
def run_dir(tmp_path):
    layout.write_json(tmp_path / layout.MANIFEST, {"config_hash": "h", "n_shards": 3, "config": {}})
    return tmp_path


def test_round_trip_in_shard_order(run_dir):
    # Written out of order: load_results returns shard order, values bit-identical.
    expected = [_commit(run_dir, k) for k in (2, 0, 1)]
    df = xaibench.load_results(run_dir)
    want = pd.concat([expected[1], expected[2], expected[0]], ignore_index=True)
    pd.testing.assert_frame_equal(df, want)
    assert load_manifest(run_dir)["config_hash"] == "h"


def test_partial_run_warns_and_ignores_uncommitted_files(run_dir):
    _commit(run_dir, 0)
    # Shard 1 was interrupted: maps, curves and images exist, the results file (commit marker) does not;
    # a stale temporary results file is left over.
    layout.write_torch(layout.maps_path(run_dir, "m", 1), {"key": "k", "maps": torch.ones(3, 2, 2)})
    layout.write_parquet(layout.curves_path(run_dir, 1), pd.DataFrame({"image_id": ["z"], "method": "m", "metric": "x", "curve": [[9.0]]}))
    (run_dir / "shards" / ".shard-00001.parquet.abc.tmp").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="only 1 of 3 shards"):
        df = load_results(run_dir)
    assert set(df["shard"]) == {0}
    assert set(load_curves(run_dir)["image_id"]) == {"s0-0", "s0-1", "s0-2"}
    assert load_maps(run_dir, "m").shape == (3, 2, 2) and float(load_maps(run_dir, "m").max()) == 0.0
    images = load_images(run_dir)
    assert images["images"].shape == (3, 1, 2, 2) and images["positions"] == [0, 1, 2]


def test_errors(tmp_path, run_dir):
    with pytest.raises(InputError, match="not a run directory"):
        load_results(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no finished shard"), pytest.warns(UserWarning):
        load_results(run_dir)
    with pytest.raises(InputError, match="no cached maps"):
        load_maps(run_dir, "m")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def boom(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.write_atomic(tmp_path / "a.json", boom)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_files_are_named_not_a_traceback(run_dir):
    _commit(run_dir, 0)
    results, maps = layout.results_path(run_dir, 0), layout.maps_path(run_dir, "m", 0)
    results.write_bytes(b"PAR1 not parquet")
    maps.write_bytes(b"")
    with pytest.raises(InputError, match=rf"{results} is corrupt"), pytest.warns(UserWarning):
        load_results(run_dir)
    with pytest.raises(InputError, match=rf"{maps} is corrupt"):
        load_maps(run_dir, "m")
