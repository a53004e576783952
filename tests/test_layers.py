"""Imports point down the layers: page / terminal / API -> conversation -> client -> backend ->
scheduler -> engines -> plain types (README's "How it works" draws them; the design notes, which are
not in this repository, live in ../shared/DESIGN.md beside the checkout). Read from the source
(ast), not by importing."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# Each module may import only modules of a LOWER rank. A new module must be placed here.
LAYERS: dict[str, int] = {
    "edgechat": 0,
    "edgechat.types": 0,
    "edgechat.errors": 0,
    "edgechat.stats": 0,  # typed engine-wide figures, one record per layer
    "edgechat.tokenizers": 1,
    "edgechat.tokenizers.gguf": 1,
    "edgechat.tokenizers.baichuan": 2,
    "edgechat.tokenizers.hf": 2,  # a config folder's tokenizer.json (Qwen, Llama) through `tokenizers`
    "edgechat.owner": 1,
    "edgechat.safe_markdown": 1,
    "edgechat.reasoning": 1,  # a reasoning model's <think> part told apart from its answer
    "edgechat.ui_text": 1,
    "edgechat.access": 1,
    "edgechat.store_db": 1,
    "edgechat.records": 1,  # a chat's records: their shape, the one rule that checks them, their caps
    "edgechat.templates": 3,
    "edgechat.store": 3,
    "edgechat.token_config": 4,  # --token DIR: tokenizer + chat template of a TPU model
    "edgechat.export": 2,
    "edgechat.config": 2,
    "edgechat.config_values": 1,  # settings' values from text, checked; the embedded model's path
    "edgechat.metrics": 1,
    "edgechat.openai_schema": 3,
    "edgechat.structured": 2,  # response_format -> GBNF with llama-cpp-python's converter
    "edgechat.engines": 3,
    "edgechat.engines.base": 1,  # the engine protocol and its Feed: any engine module may import it
    "edgechat.engines.llamacpp": 3,
    "edgechat.engines.streams": 1,  # which llama.cpp KV stream holds which sequence
    "edgechat.engines.sampling": 2,  # per-sequence sampling over a llama.cpp context's logits
    "edgechat.engines.sail_api": 1,  # the sail engine's adapter to the two sophon-sail API generations
    "edgechat.engines.sail_bmodel": 2,  # what a Baichuan2 or LLM-TPU bmodel must look like
    "edgechat.engines.sail_memory": 2,  # verifying the sail engine's TPU allocations
    "edgechat.engines.sail_history": 2,  # history K/V: dynamic block_kv_i prefill, park/restore
    "edgechat.engines.sail_batch": 2,  # decode steps: batch 1, and batch-N graphs (N sequences per call)
    "edgechat.engines.sail_heads": 2,  # lm_head / greedy_head and the mask value of a bmodel
    "edgechat.engines.sail": 3,
    "edgechat.engines.sail_chips": 4,  # one SailEngine per TPU of --dev_ids, as one engine
    "edgechat.remote": 3,  # the remote Backend: an OpenAI-compatible server answers
    "edgechat.kvcache": 1,
    "edgechat.prefixes": 1,  # block-hash index of token prefixes
    "edgechat.sequences": 2,
    "edgechat.sharing": 3,  # prefixes shared across sessions, pinned prefixes
    "edgechat.room": 4,  # the KV manager: layout, resident / idle / parked caches
    "edgechat.planner": 5,  # decide / update: the queue, admissions, feeds, finishing
    "edgechat.execute": 5,  # the execute step: every engine call of a plan
    "edgechat.scheduler": 6,
    "edgechat.backend": 7,
    "edgechat.client": 8,
    "edgechat.conversation": 9,
    "edgechat.chats": 10,
    "edgechat.runtime": 10,
    "edgechat.clients": 11,  # a person's client and conversation over the runtime
    "edgechat.api.errors": 10,  # a failure as OpenAI's error body, with its status
    "edgechat.api": 11,  # the package's face: hands on api_routes
    "edgechat.api.completion": 11,  # one admitted chat completion, whole or SSE
    "edgechat.api.routes": 12,  # the routes, and the steps that admit a request
    "edgechat.server": 12,
    "baichuan2": 13,
    "edgechat.tls": 13,  # --tls: the certificate Streamlit serves (uses server.box_names)
    "edgechat.page": 14,
    "edgechat.page.session": 14,
    "edgechat.page.copy_button": 13,  # one click copies an answer's Markdown, on plain HTTP too
    "edgechat.page.tab_title": 13,  # the tab title says queued / answering / answered
    "edgechat.page.messages": 14,
    "edgechat.page.join_qr": 14,  # the page's address as text and QR code, the HTTPS fingerprint
    "edgechat.page.sidebar": 15,
    "web_demo": 16,
}
PLAIN = {"edgechat", "edgechat.types", "edgechat.errors", "edgechat.stats"}  # import nothing of ours at all


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in LAYERS}
    return found


def sources() -> list[Path]:
    return [*sorted((REPO / "edgechat").rglob("*.py")), REPO / "baichuan2.py", REPO / "web_demo.py"]


def test_every_module_has_a_layer() -> None:
    missing = [module_name(p) for p in sources() if module_name(p) not in LAYERS]
    assert not missing, f"place these modules in tests/test_layers.py LAYERS: {missing}"


def test_imports_point_down_only() -> None:
    upward = []
    for path in sources():
        me = module_name(path)
        for other in our_imports(path) - {me}:
            if other.startswith(me + "."):  # a package importing its own submodules
                continue
            if LAYERS[other] >= LAYERS[me] or (me in PLAIN):
                upward.append(f"{me} ({LAYERS[me]}) imports {other} ({LAYERS[other]})")
    assert not upward, "\n".join(upward)


def test_engines_import_neither_the_scheduler_nor_the_settings() -> None:
    for path in (REPO / "edgechat" / "engines").glob("*.py"):
        imports = our_imports(path)
        assert not imports & {"edgechat.scheduler", "edgechat.config", "edgechat.templates", "edgechat.backend"}, path
