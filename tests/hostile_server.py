"""A hostile OpenAI-compatible model server for tests: its model id, its answers and its error
messages are attacks on the page (tests/hostile_answers.py). It streams `/v1/chat/completions`
as vLLM does; the question "case NAME" gets that case's answer, "fail" gets a 500 whose message
is hostile too. Runs in a thread on a free 127.0.0.1 port."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

from harness.servers import ThreadServer
from tests.hostile_answers import Hostile


class HostileServer(ThreadServer):
    def __init__(self, answers: list[Hostile], sink: str) -> None:
        self.answers = {a.name: a.text for a in answers}
        self.model_id = f"evil ![m](http://{sink}/model-id.png) <img src=http://{sink}/model-id-html.png>"
        self.error = f"boom ![e](http://{sink}/error.png) [x](javascript:alert(1))"
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self._json(200, {"object": "list", "data": [{"id": server.model_id, "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = body["messages"][-1]["content"]
                if question == "fail":
                    self._json(500, {"error": {"message": server.error, "type": "server_error"}})
                    return
                text = server.answers.get(question.removeprefix("case "), "no such case")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                third = max(1, len(text) // 3)  # in pieces: the page renders partial Markdown too
                for piece in (text[:third], text[third : 2 * third], text[2 * third :]):
                    self._event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _event(self, chunk: dict) -> None:
                chunk = {"id": "x", "object": "chat.completion.chunk", "model": server.model_id, **chunk}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            def _json(self, status: int, doc: dict) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)
        self.url = f"http://{self.address}/v1"
