"""Loading a bmodel on the emulated TPU (each of the four installs): every bad input is one line,
and a wheel of another API generation than detected is one line too, never a TypeError."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgechat.clients import client_for
from edgechat.engines import sail_api
from tests.baichuan_tokenizer_model import train_tokenizer
from tests.sail.harness import GREEDY_24, MAX_LEN, Mode, load_error, open_runtime, sail, vocab_of


def test_no_sophon_sail(bmodel: Path, token_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sophon.sail", None)  # import sophon.sail now raises ImportError
    message = load_error(bmodel, token_dir)
    assert "sophon-sail wheel (3.8.0" in message and ">= 3.9" in message and "README" in message


def test_missing_bmodel(tmp_path: Path, token_dir: Path, mode: Mode) -> None:
    assert "bmodel not found" in load_error(tmp_path / "nope.bmodel", token_dir)


def test_a_file_that_is_not_a_bmodel(tmp_path: Path, token_dir: Path, mode: Mode) -> None:
    junk = tmp_path / "junk.bmodel"
    junk.write_bytes(b"\x00" * 64)
    message = load_error(junk, token_dir)
    assert "sophon-sail could not load" in message and "SailEngineError: EngineLLM related error!" in message


@pytest.mark.parametrize("omit", ["lm_head", "embedding_cache", "block_cache_1", "block_0"])
def test_a_bmodel_lacking_graphs(tmp_path: Path, token_dir: Path, mode: Mode, omit: str) -> None:
    path = sail.write_bmodel(
        tmp_path / "partial.bmodel", max_len=MAX_LEN, vocab=vocab_of(token_dir), omit_graphs=[omit], quant=mode.quant
    )
    message = load_error(path, token_dir)
    assert "lacks the graphs of a Baichuan2 bmodel" in message and omit in message


def test_dev_id_out_of_range_is_refused_before_sail_exits(bmodel: Path, token_dir: Path) -> None:
    message = load_error(bmodel, token_dir, "--dev_ids", "3")
    assert "--dev_ids 3" in message and "0..0" in message


def test_a_tokenizer_of_another_family(bmodel: Path, tmp_path: Path) -> None:
    train_tokenizer(tmp_path, with_chat_markers=False)
    assert "is not Baichuan2's tokenizer" in load_error(bmodel, tmp_path)


def test_a_tokenizer_whose_vocab_does_not_match_the_model(tmp_path: Path, mode: Mode) -> None:
    """Graph shapes do not reveal the vocabulary, so the first out-of-vocabulary id is the tell."""
    small = train_tokenizer(tmp_path / "small").parent
    big = sail.write_bmodel(tmp_path / "big.bmodel", max_len=MAX_LEN, vocab=125696, seed=3, quant=mode.quant)
    rt = open_runtime(big, small)
    try:
        client = client_for(rt, sampling=GREEDY_24)
        text = "".join(client.chat_stream("hello", []))
        assert text == "" and client.last_stats.error is not None
        assert "outside the tokenizer's vocabulary of 700" in client.last_stats.error
        assert "--token does not belong to --bmodel" in client.last_stats.error
    finally:
        rt.close()


def test_a_wheel_of_the_other_generation_is_one_line(
    bmodel: Path, token_dir: Path, mode: Mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata that lies about the API (say, a rebuilt wheel) must not surface as a TypeError."""
    other = "3.8.0" if mode.index_keyed else "3.9.4"
    monkeypatch.setattr(sail_api, "installed_wheel", lambda: ("sophon", other))
    message = load_error(bmodel, token_dir)
    assert f"sophon-sail {other}" in message and "does not answer EngineLLM's graph queries" in message
    assert "edgechat speaks sail 3.8 (name-keyed) and >= 3.9 (index-keyed)" in message


def test_a_source_build_without_metadata_is_probed(
    bmodel: Path, token_dir: Path, mode: Mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sail built from source and put on PYTHONPATH has no dist-info: one call tells the API apart."""
    monkeypatch.setattr(sail_api, "installed_wheel", lambda: (None, None))
    rt = open_runtime(bmodel, token_dir, "--max-running", "1")
    try:
        assert "version unknown" in rt.info["device"] and rt.info["sail_version"] is None
        assert ("index-keyed" if mode.index_keyed else "name-keyed") in rt.info["device"]
        client = client_for(rt, sampling=GREEDY_24)
        assert "".join(client.chat_stream("hi", [])) and client.last_stats.error is None
    finally:
        rt.close()


def test_a_two_tpu_bmodel_is_refused_in_one_line(
    tmp_path: Path, token_dir: Path, mode: Mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAIL_EMULATOR_TPU_NUM", "2")
    path = sail.write_bmodel(
        tmp_path / "baichuan2-7b_int8_2dev.bmodel", max_len=MAX_LEN, vocab=1000, devices=2, quant=mode.quant
    )
    message = load_error(path, token_dir, "--dev_ids", "0,1")
    assert "is compiled for 2 TPUs" in message and "use a _1dev bmodel with one --dev_ids" in message
    assert "sophon-sail could not load" in load_error(path, token_dir, "--dev_ids", "0")  # sail needs both


@pytest.mark.parametrize("ids", [["0,1"], ["0", "1"]])
def test_a_one_tpu_bmodel_on_two_ids_loads_on_both(
    bmodel: Path, token_dir: Path, monkeypatch: pytest.MonkeyPatch, ids: list[str]
) -> None:
    """Each TPU gets its own engine (and the bmodel's weights), with --max-running slots each."""
    monkeypatch.setenv("SAIL_EMULATOR_TPU_NUM", "2")
    rt = open_runtime(bmodel, token_dir, "--dev_ids", *ids, "--max-running", "2")
    try:
        assert rt.info["tpus"] == [0, 1] and rt.info["kv_slots"] == 4 and "TPU [0, 1]" in rt.info["device"]
        assert [c.tpu for c in rt.backend.stats().scheduler.chips] == [0, 1]
    finally:
        rt.close()
    assert "names a TPU twice" in load_error(bmodel, token_dir, "--dev_ids", "1,1")
