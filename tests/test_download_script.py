"""scripts/download.sh without a network: a stand-in `dfss` module plays Sophgo's server.

The stand-in either fails as dfss does offline ("No available server found", exit 1) or serves
files from a folder, so the failure path, the sha256 check and idempotence run here for real.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.baichuan_tokenizer_model import REPO, SHARED_MODEL, train_tokenizer

SCRIPT = REPO / "scripts" / "download.sh"
STUB = """
import os, shutil, sys
url = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--url="))
with open(os.environ["STUB_DFSS_LOG"], "a") as log:
    log.write(url + "\\n")
served = os.environ.get("STUB_DFSS_SERVE")
name = url.rsplit("/", 1)[-1]
if not served or not os.path.exists(os.path.join(served, name)):
    print("ERROR main.cpp:1040: No available server found")
    sys.exit(1)
shutil.copy(os.path.join(served, name), name)
"""


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    stub = tmp_path / "stub" / "dfss"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "__main__.py").write_text(STUB)
    root = tmp_path / "checkout"
    (root / "token_config").mkdir(parents=True)
    return {"root": root, "stub": stub.parent, "log": tmp_path / "dfss.log", "server": tmp_path / "server"}


def run(world: dict[str, Path], *items: str, serve: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(world["stub"]),
        "EDGECHAT_ROOT": str(world["root"]),
        "STUB_DFSS_LOG": str(world["log"]),
        **({"STUB_DFSS_SERVE": str(world["server"])} if serve else {}),
        **env,
    }
    return subprocess.run(["bash", str(SCRIPT), *items], capture_output=True, text=True, env=environment, timeout=60)


def calls(world: dict[str, Path]) -> list[str]:
    return world["log"].read_text().split() if world["log"].exists() else []


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".download")]


def serve_tokenizer(world: dict[str, Path], model: Path) -> None:
    world["server"].mkdir(exist_ok=True)
    with zipfile.ZipFile(world["server"] / "token_config.zip", "w") as z:
        z.write(model, "token_config/tokenizer.model")
        z.writestr("token_config/tokenization_baichuan.py", "# remote code we never run\n")


def test_offline_fails_clearly_and_leaves_nothing(world: dict[str, Path]) -> None:
    out = run(world)
    assert out.returncode == 1
    assert "could not download baichuan2-7b_int8_1dev.bmodel" in out.stderr and "no network" in out.stderr
    assert calls(world) == ["open@sophgo.com:sophon-demo/baichuan2/baichuan2-7b_int8_1dev.bmodel"]
    assert not leftovers(world["root"]) and not list((world["root"] / "models" / "BM1684X").iterdir())


def test_bmodels_are_fetched_once(world: dict[str, Path]) -> None:
    world["server"].mkdir()
    for kind in ("int8", "int4"):
        (world["server"] / f"baichuan2-7b_{kind}_1dev.bmodel").write_bytes(b"bmodel " + kind.encode())
    first = run(world, "int8", "int4", serve=True)
    assert first.returncode == 0, first.stderr
    assert (world["root"] / "models" / "BM1684X" / "baichuan2-7b_int4_1dev.bmodel").read_bytes() == b"bmodel int4"
    again = run(world, "int8", "int4")  # offline now: nothing left to fetch
    assert again.returncode == 0, again.stderr
    assert "have models/BM1684X/baichuan2-7b_int8_1dev.bmodel" in again.stdout
    assert len(calls(world)) == 2 and not leftovers(world["root"])


@pytest.mark.skipif(not SHARED_MODEL.is_file(), reason="needs Baichuan2's tokenizer.model beside the project")
def test_tokenizer_is_checked_and_kept(world: dict[str, Path]) -> None:
    serve_tokenizer(world, SHARED_MODEL)
    first = run(world, "tokenizer", serve=True)
    assert first.returncode == 0, first.stderr
    dest = world["root"] / "token_config" / "tokenizer.model"
    assert dest.read_bytes() == SHARED_MODEL.read_bytes()
    assert not (world["root"] / "token_config" / "tokenization_baichuan.py").exists()
    again = run(world, "tokenizer")
    assert again.returncode == 0 and "have token_config/tokenizer.model" in again.stdout
    assert len(calls(world)) == 1


def test_a_tokenizer_with_another_hash_is_refused(world: dict[str, Path], tmp_path: Path) -> None:
    serve_tokenizer(world, train_tokenizer(tmp_path / "other"))
    out = run(world, "tokenizer", serve=True)
    assert out.returncode == 1 and "sha256" in out.stderr and "not installed" in out.stderr
    assert not (world["root"] / "token_config" / "tokenizer.model").exists() and not leftovers(world["root"])
    accepted = run(world, "tokenizer", serve=True, EDGECHAT_SKIP_SHA256="1")
    assert accepted.returncode == 0 and (world["root"] / "token_config" / "tokenizer.model").exists()


def test_unknown_item(world: dict[str, Path]) -> None:
    out = run(world, "fp16")
    assert out.returncode == 1 and "choose from int8 int4 tokenizer" in out.stderr


def serve_hf(world: dict[str, Path], repo: str) -> str:
    """A file:// stand-in for huggingface.co holding REPO's config files (made in the test)."""
    from tests.sail.qwen_harness import write_token_config

    files = write_token_config(world["server"] / "hf" / repo / "resolve" / "main")
    (files / "config.json").write_text('{"model_type": "qwen3"}')
    return (world["server"] / "hf").as_uri()


def test_a_qwen_bmodel_and_its_config_folder(world: dict[str, Path]) -> None:
    world["server"].mkdir()
    name = "qwen3-4b-awq_w4bf16_seq512_bm1684x_1dev_20250514_161445.bmodel"
    (world["server"] / name).write_bytes(b"bmodel qwen3")
    hf = serve_hf(world, "Qwen/Qwen3-4B-AWQ")
    out = run(world, "qwen3-4b", serve=True, EDGECHAT_HF_BASE=hf)
    assert out.returncode == 0, out.stderr
    assert calls(world) == [f"open@sophgo.com:/ext_model_information/LLM/LLM-TPU/{name}"]
    folder = world["root"] / "models" / "qwen3-4b"
    assert (folder / name).read_bytes() == b"bmodel qwen3"
    assert f"--bmodel models/qwen3-4b/{name} --token models/qwen3-4b/config" in out.stdout

    from edgechat.token_config import load_token_config

    assert load_token_config(folder / "config").tokenizer.token_id("<|im_end|>") is not None
    again = run(world, "qwen3-4b", EDGECHAT_HF_BASE="file:///nowhere")  # offline: nothing left to fetch
    assert again.returncode == 0 and "have models/qwen3-4b bmodel" in again.stdout, again.stderr
    assert len(calls(world)) == 1 and not leftovers(world["root"])


def test_deepseek_r1_comes_as_one_zip(world: dict[str, Path]) -> None:
    world["server"].mkdir()
    with zipfile.ZipFile(world["server"] / "deepseek-r1-distill-qwen-1-5b.zip", "w") as z:
        z.writestr("deepseek-r1-distill-qwen-1-5b/r1-1.5b_int4_seq512_1dev.bmodel", "bmodel r1")
        z.writestr("deepseek-r1-distill-qwen-1-5b/config/tokenizer.json", "{}")
    out = run(world, "deepseek-r1-1.5b", serve=True)
    assert out.returncode == 0, out.stderr
    where = "models/deepseek-r1-1.5b/deepseek-r1-distill-qwen-1-5b"
    assert f"--bmodel {where}/r1-1.5b_int4_seq512_1dev.bmodel --token {where}/config" in out.stdout


def test_a_config_download_that_fails_installs_nothing(world: dict[str, Path]) -> None:
    world["server"].mkdir()
    (world["server"] / "qwen2.5-7b-instruct-awq_w4bf16_seq2048_bm1684x_1dev_20250616_191537.bmodel").write_bytes(b"b")
    out = run(world, "qwen2.5-7b", serve=True, EDGECHAT_HF_BASE=(world["server"] / "empty").as_uri())
    assert out.returncode == 1 and "could not download tokenizer.json of Qwen/Qwen2.5-7B-Instruct-AWQ" in out.stderr
    assert not (world["root"] / "models" / "qwen2.5-7b" / "config" / "tokenizer.json").exists()
    assert not leftovers(world["root"])
