"""Device names to torch devices: 'auto', what exists, and errors that list the available devices."""

from __future__ import annotations

import pytest
import torch

from xaibench import devices
from xaibench.devices import available_devices, resolve_device
from xaibench.errors import InputError


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_backend_count", lambda kind: 1 if kind == "cpu" else 0)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_backend_count", lambda kind: {"cpu": 1, "cuda": 2}.get(kind, 0))


def test_without_a_gpu(no_gpu) -> None:
    assert available_devices() == ["cpu"]
    assert resolve_device(None) == torch.device("cpu") == resolve_device("auto") == resolve_device(" CPU ")
    with pytest.raises(InputError, match=r"device 'cuda' is not available: no cuda device.*Available: cpu\."):
        resolve_device("cuda")
    with pytest.raises(InputError, match=r"unknown device 'gpu'\. Did you mean 'cuda'\? Available on this machine: cpu"):
        resolve_device("gpu")
    with pytest.raises(InputError, match=r"unknown device 'cdua'\. Did you mean 'cuda'\?"):
        resolve_device("cdua")
    with pytest.raises(InputError, match="invalid device 'cuda:x'"):
        resolve_device("cuda:x")


def test_with_two_gpus(two_gpus) -> None:
    assert available_devices() == ["cpu", "cuda:0", "cuda:1"]
    assert resolve_device(None) == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InputError, match=r"'cuda:2' is not available: cuda has 2 device\(s\)\. Available: cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")


def test_cli_prints_the_error_without_a_traceback(no_gpu, capsys, tmp_path) -> None:
    from xaibench.cli import main

    code = main(["explain", "--model", "builtin:digits-cnn", "--data", "builtin:digits", "--methods", "saliency",
                 "--out", str(tmp_path), "--device", "gpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("xaibench: error: unknown device 'gpu'") and "Traceback" not in err
