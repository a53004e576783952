"""A Baichuan GGUF gets the Baichuan2 chat format on the llama.cpp backend, picked from its metadata.

The test writes a tiny Baichuan-architecture GGUF with the `gguf` package (random weights, a
Baichuan2-shaped vocab with `<reserved_106>`/`<reserved_107>` at ids 195/196), then loads it the
way the page does: llama.cpp reads the file and its metadata, and the runtime chooses the template.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from edgechat.clients import client_for
from edgechat.config import parse_settings
from edgechat.runtime import load_runtime
from edgechat.types import SamplingParams

N_EMBD, N_HEAD, N_FF, N_CTX = 32, 4, 64, 256


def vocab() -> tuple[list[str], list[int]]:
    """Baichuan2's layout where the template looks: unk/bos/eos at 0..2, user/assistant markers at
    195/196, and the byte-fallback pieces llama.cpp's SentencePiece vocab needs."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<filler_{i}>" for i in range(3, 195)]
    tokens += ["<reserved_106>", "<reserved_107>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["▁", "▁hi", "▁What", "▁is", "▁2", "+", "?", "h", "i"]
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 196 + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (len(tokens) - len(types))
    return tokens, types


def write_tiny_baichuan(path: Path) -> None:
    tokens, types = vocab()
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "baichuan")
    w.add_name("tiny-baichuan2-test")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(1)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", weight(n_vocab, N_EMBD))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", weight(N_EMBD, N_EMBD))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", weight(N_FF, N_EMBD))
    w.add_tensor("blk.0.ffn_up.weight", weight(N_FF, N_EMBD))
    w.add_tensor("blk.0.ffn_down.weight", weight(N_EMBD, N_FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_baichuan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-baichuan2.gguf"
    write_tiny_baichuan(path)
    return path


def test_baichuan_gguf_gets_the_baichuan2_template_and_answers(tiny_baichuan: Path) -> None:
    reader = gguf.GGUFReader(tiny_baichuan)  # what convert_hf_to_gguf.py writes for Baichuan2
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "baichuan"

    settings = parse_settings(["--model", str(tiny_baichuan), "--context-length", "128", "--max-sessions", "1"], env={})
    runtime = load_runtime(settings)
    try:
        assert runtime.info["template"] == "baichuan2"
        client = client_for(runtime, settings)
        ids = client.prompt_ids(
            "hi", [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
        )
        # <reserved_106> question <reserved_107> answer <reserved_106> question <reserved_107>: no eos between
        assert [t for t in ids if t in (2, 195, 196)] == [195, 196, 195, 196]
        assert ids[-1] == 196
        # The llama.cpp backend runs it end to end (random weights: what it says is noise).
        list(client.chat_stream("hi", sampling=SamplingParams(temperature=0.0, max_new_tokens=4)))
        assert client.last_stats.error is None and client.last_stats.completion_tokens >= 1
        hi = client.prompt_ids("hi")
        assert hi[0] == 195 and hi[-1] == 196 and client.last_stats.prompt_tokens == len(hi)
    finally:
        runtime.close()
