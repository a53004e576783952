"""HTTP routes for programs on the LAN, on the page's own port (`streamlit run web_demo.py`):

    GET  /v1/models              the one model this box serves
    POST /v1/chat/completions    OpenAI's chat completions, streamed (SSE) or whole
    GET  /metrics                Prometheus text format (edgechat.metrics)
    GET  /healthz                200 + {alive, backend, model, loaded_at}, 503 when the engine died

Every answer goes through a ChatClient over the shared runtime's backend, exactly as a page
session's does: same queue, same figures. `routes` admits a request, `completion` answers it (the
first event of the answer decides the status: a refusal is a 429/400/503, anything else is a 200
that streams), `errors` maps what went wrong to OpenAI's error body. A client that hangs up
cancels its answer within a scheduler step.
"""

from edgechat.api.routes import MAX_BODY_BYTES, api_routes

__all__ = ["MAX_BODY_BYTES", "api_routes"]
