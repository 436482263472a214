"""Shared fixtures: the read-only ../shared data folder (tests skip cleanly without it), a ZeroMQ
context and a detector address for the socket tests."""

from __future__ import annotations

import bz2
import shutil
from pathlib import Path

import pytest
import zmq

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def needs_dials() -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which("dials.find_spots") is None, reason="DIALS is not installed")


@pytest.fixture(scope="session")
def unpacked(tmp_path_factory):
    """Decompress a .bz2 file from shared/ once per session; returns a function path -> path."""
    root = tmp_path_factory.mktemp("unpacked")
    cache: dict[Path, Path] = {}

    def unpack(path: Path) -> Path:
        path = Path(path)
        if path not in cache:
            out = root / path.parent.name / path.name.removesuffix(".bz2")
            out.parent.mkdir(parents=True, exist_ok=True)
            with bz2.open(path, "rb") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            cache[path] = out
        return cache[path]

    return unpack


@pytest.fixture
def ctx():
    """A ZeroMQ context, destroyed (linger 0) after the test."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def url(tmp_path):
    """An ipc:// address in the test's own folder, where a detector (sender) binds."""
    return f"ipc://{tmp_path / 'detector.ipc'}"
