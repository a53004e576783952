"""Fixtures of the sail tests. `mode` is module-scoped and parametrized over the four emulated
installs, so every module that uses it (directly or through `bmodel`/`runtime`) runs once per
install: sail 3.8 / 3.9 x int8 / int4 bmodel."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgechat.runtime import Runtime
from tests.baichuan_tokenizer_model import SHARED_MODEL, train_tokenizer
from tests.sail.harness import MAX_LEN, MODE_IDS, MODES, Mode, open_runtime, sail, vocab_of


@pytest.fixture(scope="module", params=MODES, ids=MODE_IDS)
def mode(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mode]:
    dist, version, quant = request.param
    site = tmp_path_factory.mktemp(f"site-{dist}-{version}")
    sail.install_as(site, version, dist)
    sys.path.insert(0, str(site))
    try:
        yield Mode(dist, version, quant, site)
    finally:
        sys.path.remove(str(site))


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Baichuan2's tokenizer from ../shared (linked, not copied), or a trained stand-in."""
    directory = tmp_path_factory.mktemp("token_config")
    if SHARED_MODEL.is_file():
        (directory / "tokenizer.model").symlink_to(SHARED_MODEL)
    else:
        train_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def bmodel(mode: Mode, tmp_path_factory: pytest.TempPathFactory, token_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("models") / "baichuan2-emulated.bmodel"
    return sail.write_bmodel(
        path,
        layers=2,
        hidden=32,
        heads=4,
        intermediate=64,
        max_len=MAX_LEN,
        vocab=vocab_of(token_dir),
        quant=mode.quant,
    )


@pytest.fixture(scope="module")
def runtime(bmodel: Path, token_dir: Path) -> Iterator[Runtime]:
    rt = open_runtime(bmodel, token_dir, "--max-running", "3")
    yield rt
    rt.close()
