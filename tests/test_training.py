"""The trainer end to end on a tiny budget: files written, model loadable, resume after SIGKILL
gives the same model bitwise, clear errors for bad runs."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from xaibench.errors import InputError
from xaibench.models import load_model, model_hash
from xaibench.training import load_train_config, train
from xaibench.training.engine import LOG_COLUMNS

TINY = {
    "seed": 3, "device": "cpu", "setting": "fl+fp+ap", "epochs": 2, "batch_size": 32, "optimizer": "adam",
    "lr": 0.01, "schedule": "onecycle", "selection": "accuracy",
    "model": {"spec": "builtin:digits-cnn"}, "data": {"spec": "builtin:digits", "n": 160, "val_fraction": 0.25},
}


def test_train_writes_model_log_and_config(tmp_path):
    result = train(TINY, tmp_path / "run", progress=False)
    out = tmp_path / "run"
    assert result.model_path == out / "model.pt" and result.config_hash == load_train_config(out / "train.toml").hash
    assert list(result.log.columns) == list(LOG_COLUMNS) and list(result.log["epoch"]) == [0, 1]
    assert result.log["selected"].sum() == 1 and int(result.log.loc[result.log["selected"], "epoch"].iloc[0]) == result.best_epoch
    assert result.log[["loss", "val_accuracy", "ece", "adaece", "seconds"]].notna().all().all()
    model = load_model(f"file:{result.model_path}", device="cpu")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    best = torch.load(out / "checkpoints" / f"epoch-{result.best_epoch:04d}.pt", weights_only=True)
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())
    # a finished run is returned as it is; without resume the directory is refused
    again = train(TINY, out, resume=True, progress=False)
    assert again.best_epoch == result.best_epoch and model_hash(load_model(f"file:{again.model_path}", device="cpu")) == model_hash(model)
    with pytest.raises(InputError, match="already holds a training run"):
        train(TINY, out, progress=False)
    with pytest.raises(InputError, match="refusing to resume"):
        train({**TINY, "seed": 4}, out, resume=True, progress=False)


def test_a_damaged_last_checkpoint_is_named_with_what_to_do(tmp_path, capsys):
    from xaibench.cli import main

    out = tmp_path / "run"
    train(TINY, out, progress=False)
    (out / "model.pt").unlink()  # as if interrupted before the end
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:2000])  # truncated
    with pytest.raises(InputError, match=rf"checkpoint {last} is damaged \(.*\).*delete it to run again from the start"):
        train(TINY, out, resume=True, progress=False)
    assert main(["train", str(out / "train.toml"), "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "last.ckpt is damaged" in err and "Traceback" not in err
    last.unlink()  # what the message says: the run starts again in the same directory
    assert list(train(TINY, out, resume=True, progress=False).log["epoch"]) == [0, 1]


def test_fp_needs_a_feature_map(tmp_path):
    with pytest.raises(InputError, match=r"feature map \[B, K, h, w\].*'fc'"):
        train({**TINY, "setting": "fp", "feature_layer": "fc"}, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written: the fixed config can use the directory


@pytest.fixture
def one_thread():
    """One intra-op thread: OpenMP is not fork-safe, and bitwise equality needs the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resume_after_sigkill_is_bitwise_identical(tmp_path, one_thread):
    cfg = {**TINY, "setting": "fp", "epochs": 4, "selection": "last", "data": {**TINY["data"], "n": 200}}
    reference = train(cfg, tmp_path / "reference", progress=False)
    out = tmp_path / "killed"
    # A forked copy of this process (the libraries already imported) trains and is killed with SIGKILL
    # as soon as the checkpoint of epoch 0 is on disk.
    proc = multiprocessing.get_context("fork").Process(target=train, args=(cfg, out), kwargs={"progress": False})
    proc.start()
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert last.exists() and not (out / "model.pt").exists()  # killed after epoch 0, before the end
    resumed = train(cfg, out, resume=True, progress=False)
    assert list(resumed.log["epoch"]) == [0, 1, 2, 3]
    a = torch.load(reference.model_path, weights_only=True)["state_dict"]
    b = torch.load(resumed.model_path, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cols = ["loss", "accuracy", "val_accuracy", "ece"]
    assert reference.log[cols].equals(resumed.log[cols])
    assert Path(resumed.model_path).is_file()


def test_early_stopping_and_label_permutation(tmp_path):
    from xaibench.training import parse_train_config
    from xaibench.training.engine import split_data

    cfg = {**TINY, "setting": "baseline", "epochs": 6, "patience": 1, "lr": 1e-9, "schedule": "constant",
           "selection": "accuracy+ece"}
    result = train(cfg, tmp_path / "run", progress=False)
    assert list(result.log["epoch"]) == [0, 1]  # no gain in validation accuracy after epoch 0: stopped
    (tmp_path / "run" / "model.pt").unlink()  # as if killed after the last checkpoint, before the model file
    again = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert list(again.log["epoch"]) == [0, 1] and again.model_path.is_file()
    plain = split_data(parse_train_config(TINY))
    permuted = split_data(parse_train_config({**TINY, "label_permutation": True}))
    assert plain[0].indices == permuted[0].indices and plain[1].indices == permuted[1].indices
    before, after = plain[0].labels + plain[1].labels, permuted[0].labels + permuted[1].labels
    assert sorted(before) == sorted(after) and sum(a != b for a, b in zip(before, after)) > 0.7 * len(before)


def test_too_short_onecycle_schedule_is_refused_before_writing(tmp_path):
    with pytest.raises(InputError, match=r"onecycle.*0.25 x 4 steps"):
        train({**TINY, "epochs": 1}, tmp_path / "run", progress=False)  # 120 images / 32 = 4 steps
    assert not (tmp_path / "run").exists()


def test_cli_train(tmp_path, capsys):
    from xaibench.cli import main
    from xaibench.training import parse_train_config

    config = tmp_path / "train.toml"
    config.write_text(parse_train_config({**TINY, "epochs": 2, "schedule": "cosine"}).to_toml())
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "model " in capsys.readouterr().out and (tmp_path / "run" / "model.pt").is_file()
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2  # exists: needs --resume
    assert "--resume" in capsys.readouterr().err
    config.write_text(config.read_text().replace('setting = "fl+fp+ap"', 'setting = "fl+fp+pa"'))
    assert main(["train", str(config), "--out", str(tmp_path / "other")]) == 2
    assert "Did you mean 'fl+fp+ap'" in capsys.readouterr().err


def test_seed_outside_lightnings_range_is_a_config_error():
    from xaibench.training import parse_train_config

    with pytest.raises(InputError, match=r"seed: must be in \[0, 2\*\*32\)"):
        parse_train_config({"seed": 2**40, "model": {"spec": "builtin:digits-cnn"}, "data": {"spec": "builtin:digits"}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_training_on_a_missing_gpu_is_a_clear_error(tmp_path):
    from xaibench.training import train

    cfg = {"device": "cuda", "model": {"spec": "builtin:digits-cnn"}, "data": {"spec": "builtin:digits"}}
    with pytest.raises(InputError, match="no cuda device on this machine"):
        train(cfg, tmp_path / "t")
