"""A run directory has one writer, verified contents and data, and a config checked before it exists."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import xaibench
from xaibench.errors import InputError
from xaibench.runner import layout, parse_config, run
from xaibench.store import load_curves, load_images, load_maps, load_results

BASE = {
    "name": "integrity",
    "seed": 1,
    "shard_size": 3,
    "model": {"spec": "builtin:digits-cnn"},
    "data": {"spec": "builtin:digits", "n": 6},
    "methods": {"grad": {"method": "saliency"}},
    "metrics": {"deletion": {"steps": 2}, "rma": {"metric": "relevance_mass_accuracy", "mask": "digit"}},
}


def _cfg(**changes):
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return parse_config(raw)


def _quiet_run(*args, **kwargs):
    return run(*args, progress=False, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity") / "run"
    _quiet_run(_cfg(), out)
    return out


@pytest.fixture
def copy_of(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    return out


def _without_seconds(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns="seconds")


def _holder(code: str, *args: str) -> subprocess.Popen:
    """A Python subprocess that prints 'ready' once `code` has set up, then sleeps."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


# --- one writer ----------------------------------------------------------------------------------


def test_a_live_writer_locks_the_directory_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; from pathlib import Path; from xaibench.runner.layout import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('ready', flush=True); time.sleep(60)")
    proc = _holder(code, str(out))
    try:
        with pytest.raises(InputError, match=rf"process {proc.pid} on host '{socket.gethostname()}'"):
            _quiet_run(_cfg(), out)
        assert not (out / layout.MANIFEST).exists()
    finally:
        proc.kill()
        proc.wait()
    assert (out / layout.LOCK).exists()  # the killed holder could not remove it: stale
    _quiet_run(_cfg(), out)
    assert not (out / layout.LOCK).exists()
    assert len(load_results(out)) == 6 * 2


def test_a_lock_held_on_another_host_is_refused_with_what_to_do(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / layout.LOCK).write_text(json.dumps({"host": "node-17", "pid": 4242, "since": "2026-01-01T00:00:00Z"}))
    with pytest.raises(InputError, match=r"process 4242 on host 'node-17'.*delete .*run.lock"):
        _quiet_run(_cfg(), out)


@pytest.mark.parametrize("hard_links", [True, False])
def test_the_lock_is_exclusive_with_or_without_hard_links(tmp_path, monkeypatch, hard_links):
    if not hard_links:
        monkeypatch.setattr(layout.os, "link", lambda *args: (_ for _ in ()).throw(PermissionError("no links")))
    with layout.run_lock(tmp_path) as me:
        assert json.loads((tmp_path / layout.LOCK).read_text())["token"] == me["token"]
        with pytest.raises(InputError, match=rf"process {os.getpid()} on host"), layout.run_lock(tmp_path):
            pass
    assert not (tmp_path / layout.LOCK).exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_clean_up_keeps_temporary_files_of_live_writers(copy_of):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = copy_of / "shards" / f".shard-00000.parquet.{layout.HOST_TAG}-{sleeper.pid}.ab12.tmp"
        dead_tmp = copy_of / "shards" / f".shard-00001.parquet.{layout.HOST_TAG}-{dead.pid}.cd34.tmp"
        live_tmp.write_bytes(b"being written")
        dead_tmp.write_bytes(b"left over")
        _quiet_run(_cfg(), copy_of, resume=True)
        assert live_tmp.exists() and not dead_tmp.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        _quiet_run(_cfg(), out)
    finally:
        os.umask(old)
    for path in (out / layout.MANIFEST, layout.results_path(out, 0), layout.maps_path(out, "grad", 0),
                 layout.commit_path(out, 0)):
        assert path.stat().st_mode & 0o777 == 0o644, path


# --- verified contents ---------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_corrupt_results_file_is_named_never_a_traceback(copy_of, damage):
    path = layout.results_path(copy_of, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(InputError, match=rf"{path}.* is corrupt"):
        load_results(copy_of)
    with pytest.raises(InputError, match=rf"results file {path} is corrupt"):
        _quiet_run(_cfg(), copy_of, resume=True)


def test_a_same_size_bit_flip_is_caught_by_the_recorded_hash(copy_of):
    """A flipped bit that leaves the file readable and its size unchanged: load_results verifies the
    sha256 by default; verify=False compares sizes only and reads the changed rows."""
    before = load_results(copy_of)
    path = layout.results_path(copy_of, 0)
    data = bytearray(path.read_bytes())
    for pos in range(len(data) // 4, len(data)):  # the first flip that leaves the table readable and changed
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        path.write_bytes(flipped)
        try:
            changed = not load_results(copy_of, verify=False).equals(before)
        except InputError:
            changed = False
        if changed:
            break
    else:
        pytest.fail("no readable single-bit change found")
    with pytest.raises(InputError, match=rf"{path} is corrupt \(its sha256 differs"):
        load_results(copy_of)
    load_maps(copy_of, "grad", verify=True)  # the other files are intact


@pytest.mark.parametrize(("key", "value"), [("positions", None), ("n_shards", "2"), ("positions", [0, "1"]),
                                             ("config", []), ("n_shards", True)])
def test_a_manifest_with_wrong_types_is_named(copy_of, key, value):
    path = copy_of / layout.MANIFEST
    manifest = json.loads(path.read_text())
    manifest[key] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=rf"run.json is corrupt \('{key}' must be .*--overwrite"):
        _quiet_run(_cfg(), copy_of, resume=True)
    with pytest.raises(InputError, match="run.json is corrupt"):
        load_results(copy_of)


def test_a_commit_record_with_wrong_types_is_named(copy_of):
    path = layout.commit_path(copy_of, 0)
    record = json.loads(path.read_text())
    next(iter(record["files"].values()))["size"] = "12"
    path.write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"commit record .* is corrupt \(files\[.*'size' must be int"):
        load_results(copy_of)


def test_corrupt_caches_are_recomputed_on_resume(finished, copy_of):
    for path in (layout.curves_path(copy_of, 0), layout.images_path(copy_of, 1), layout.maps_path(copy_of, "grad", 0)):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="curves/shard-00000.parquet is corrupt"):
        load_curves(copy_of)
    with pytest.raises(InputError, match="images/shard-00001.pt is corrupt"):
        load_images(copy_of)
    with pytest.warns(UserWarning, match="recomputing shard 0: .*curves.*corrupt"):
        _quiet_run(_cfg(), copy_of, resume=True)
    pd.testing.assert_frame_equal(_without_seconds(load_results(copy_of)), _without_seconds(load_results(finished)))
    pd.testing.assert_frame_equal(load_curves(copy_of), load_curves(finished))
    torch.testing.assert_close(load_maps(copy_of, "grad"), load_maps(finished, "grad"))
    torch.testing.assert_close(load_images(copy_of)["images"], load_images(finished)["images"])


def test_a_shard_without_commit_record_is_recorded_on_resume(copy_of):
    """A run directory of an older xaibench (or a deleted record): its readable results are kept."""
    record = layout.commit_path(copy_of, 0)
    want = json.loads(record.read_text())
    record.unlink()
    before = load_results(copy_of)
    _quiet_run(_cfg(), copy_of, resume=True)
    assert json.loads(record.read_text()) == want
    pd.testing.assert_frame_equal(load_results(copy_of), before)


def test_a_corrupt_manifest_is_named_and_overwrite_starts_again(copy_of):
    (copy_of / layout.MANIFEST).write_text('{"config_hash": "ab')
    with pytest.raises(InputError, match=r"run.json is corrupt"):
        load_results(copy_of)
    with pytest.raises(InputError, match=r"run.json is corrupt.*--overwrite"):
        _quiet_run(_cfg(), copy_of, resume=True)
    _quiet_run(_cfg(), copy_of, overwrite=True)
    assert len(load_results(copy_of)) == 12


def test_overwrite_replaces_a_run_of_another_config(copy_of):
    changed = _cfg(metrics={"deletion": {"steps": 3}})
    with pytest.raises(InputError, match="--overwrite"):
        _quiet_run(changed, copy_of)
    _quiet_run(changed, copy_of, overwrite=True)
    df = load_results(copy_of)
    assert set(df["config_hash"]) == {changed.hash} and set(df["metric"]) == {"deletion"}


# --- data and model identity ---------------------------------------------------------------------


def _png(path, value: int, size=(12, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def _folder(root, n_per_class: int = 3, masks: bool = True):
    for cls in ("a", "b"):
        for i in range(n_per_class):
            _png(root / "test" / cls / f"img{i}.png", 10 * ord(cls) + i)
            if masks:
                mask = np.zeros((12, 12), dtype=np.uint8)
                mask[2:6, 2:6] = 255
                path = root / "masks" / "test" / cls / f"img{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(path)
    return root


def _folder_cfg(root, **data):
    return _cfg(data={"spec": f"folder:{root}", **data}, metrics={"deletion": {"steps": 2}, "rma": {
        "metric": "relevance_mass_accuracy"}}, shard_size=2)


def test_resume_refuses_changed_data_naming_what_changed(tmp_path):
    root = _folder(tmp_path / "data")
    out = tmp_path / "run"
    _quiet_run(_folder_cfg(root), out)
    layout.results_path(out, 2).unlink()  # as if interrupted before the last shard
    _png(root / "test" / "a" / "img1.png", 99)  # same id, other pixels
    with pytest.raises(InputError, match=r"content of 1 selected images changed \('a/img1'\)"):
        _quiet_run(_folder_cfg(root), out, resume=True)
    _png(root / "test" / "a" / "img1.png", 10 * ord("a") + 1)  # restored
    _png(root / "test" / "a" / "img0b.png", 5)  # one image more
    with pytest.raises(InputError, match="the split now has 7 images, the run started with 6"):
        _quiet_run(_folder_cfg(root), out, resume=True)
    (root / "test" / "a" / "img0b.png").unlink()
    _quiet_run(_folder_cfg(root), out, resume=True)
    df = load_results(out)
    assert not df.duplicated(["image_id", "method", "metric"]).any() and df["image_id"].nunique() == 6
    manifest = layout.read_manifest(out)
    assert manifest["image_ids"] == ["a/img0", "a/img1", "a/img2", "b/img0", "b/img1", "b/img2"]
    assert len(manifest["image_hashes"]) == 6 and len(manifest["data_hash"]) == 64


def test_model_hash_error_says_why_and_what_to_do(copy_of):
    manifest = json.loads((copy_of / layout.MANIFEST).read_text())
    manifest["model_hash"] = "0" * 64
    (copy_of / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"its weights changed.*restore the original weights.*--overwrite"):
        _quiet_run(_cfg(), copy_of, resume=True)


@pytest.mark.parametrize("spec", ["torchvision:squeezenet1_1", "timm:test_convnext"])
def test_random_init_models_are_seeded(spec):
    pytest.importorskip(spec.split(":")[0])
    torch.manual_seed(123)
    from xaibench.models import model_hash

    a = model_hash(xaibench.load_model(spec, device="cpu", seed=5))
    state = torch.get_rng_state()
    b = model_hash(xaibench.load_model(spec, device="cpu", seed=5))
    assert a == b and torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert model_hash(xaibench.load_model(spec, device="cpu", seed=6)) != a


# --- validation before the directory is written ---------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"metrics": {"mprt": {"metric": "model_parameter_randomisation", "order": "sideways"}}}, r"order must be one of"),
        ({"methods": {"cam": {"method": "gradcam", "layer": "features.99"}}}, r"features.99"),
        ({"metrics": {"rma": {"metric": "relevance_mass_accuracy", "mask": "box"}}}, r"needs a human mask.*digit, square"),
    ],
)
def test_a_bad_config_fails_before_the_directory_exists(tmp_path, changes, pattern):
    out = tmp_path / "run"
    with pytest.raises(InputError, match=pattern):
        _quiet_run(_cfg(**changes), out)
    assert not out.exists()


def test_a_missing_mask_file_is_named_before_the_directory_exists(tmp_path):
    root = _folder(tmp_path / "data")
    missing = root / "masks" / "test" / "b" / "img2.png"
    missing.unlink()
    out = tmp_path / "run"
    with pytest.raises(InputError, match=rf"\[metrics.rma\] needs mask 'mask'.*missing {missing}"):
        _quiet_run(_folder_cfg(root), out)
    assert not out.exists()


def test_images_of_different_sizes_fail_before_the_directory_exists(tmp_path):
    root = _folder(tmp_path / "data", masks=False)
    _png(root / "test" / "b" / "img2.png", 3, size=(16, 12))
    out = tmp_path / "run"
    cfg = _cfg(data={"spec": f"folder:{root}"}, metrics={"deletion": {"steps": 2}})
    with pytest.raises(InputError, match=r"different sizes.*'b/img2': 12x16.*image_size"):
        _quiet_run(cfg, out)
    assert not out.exists()
    _quiet_run(_cfg(data={"spec": f"folder:{root}", "image_size": 12}, metrics={"deletion": {"steps": 2}}), out)


def test_config_accepts_on_error_skip(tmp_path):
    root = _folder(tmp_path / "data", masks=False)
    (root / "test" / "a" / "img1.png").write_bytes(b"not a png")
    cfg = _cfg(data={"spec": f"folder:{root}", "on_error": "skip"}, metrics={"deletion": {"steps": 2}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet_run(cfg, tmp_path / "run")
    assert any("skipped 1 of 6 images" in str(w.message) for w in caught)
    assert sorted(load_results(tmp_path / "run")["image_id"].unique()) == ["a/img0", "a/img2", "b/img0", "b/img1", "b/img2"]
    with pytest.raises(InputError, match=r"\[data\].on_error: must be one of"):
        _cfg(data={"spec": f"folder:{root}", "on_error": "ignore"})
