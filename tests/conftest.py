"""Shared test fixtures. Keep tests deterministic: every random draw is seeded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium; Playwright cannot download browsers here

# Trained built-in models are cached here between local test runs (ignored by git).
os.environ.setdefault("XAIBENCH_CACHE_DIR", str(REPO / ".pytest_cache" / "xaibench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


class TinyCNN(torch.nn.Module):
    """A small random-init CNN (3x16x16 -> 5 classes) for fast oracle tests."""

    def __init__(self, num_classes: int = 5, channels: int = 3) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1),
            torch.nn.ReLU(),
        )
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def images() -> torch.Tensor:
    """A batch of 4 random images [4, 3, 16, 16] in [0, 1]."""
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default=None,
                     help="device of the tests that take `on_device` (cpu, cuda, cuda:1); default: "
                          "XAIBENCH_TEST_DEVICE, else cpu and, where present, cuda")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise `on_device` over the test devices: the one chosen by ``--device`` or
    XAIBENCH_TEST_DEVICE (a device this machine lacks fails the test), else cpu and cuda if present."""
    if "on_device" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--device") or os.environ.get("XAIBENCH_TEST_DEVICE")
        devices = [chosen] if chosen else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        metafunc.parametrize("on_device", devices)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that takes `on_device` is a ``device`` test (``pytest -m device`` selects them)."""
    for item in items:
        if "on_device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


OPTIONAL = "optional suite not run"  # marks the skips of `_require`, listed at the end of the run


def _require(condition: bool, reason: str) -> None:
    """Skip when `condition` fails; with the CI environment variable set, fail instead. `reason` says
    what is missing and how to install it."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (required when CI is set)")
        pytest.skip(f"{OPTIONAL}: {reason}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Close the run with the suites that `_require` skipped and what would make them run, so a green
    local run does not hide that the browser, database or published-study tests did not run."""
    skipped: dict[str, set[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if OPTIONAL in reason:
            test_file = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
            skipped.setdefault(reason.split(f"{OPTIONAL}: ", 1)[-1], set()).add(test_file)
    if skipped:
        terminalreporter.section("optional suites not run (CI=true .ci/run installs and requires them)")
        for reason, files in sorted(skipped.items()):
            terminalreporter.write_line(f"{', '.join(sorted(files))}: {reason}")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The chromium binary for Playwright (and Playwright itself): skipped locally, required in CI."""
    _require(CHROMIUM.exists(), f"{CHROMIUM} is missing (browser tests; on Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _require(False, "playwright is not installed (browser tests; pip install 'xaibench[dev]')")
    return CHROMIUM


@pytest.fixture(scope="session")
def legacy_db() -> Path:
    """The published HARMONY study database in ../shared/data: skipped locally, required in CI."""
    db = SHARED_DATA / "harmony_study_2024.sqlite3"
    _require(db.is_file(), f"published study database not found: {db} (put harmony_study_2024.sqlite3 there)")
    return db
