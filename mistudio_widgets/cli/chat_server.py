"""A small OpenAI-compatible chat-completions server backed by a workspace model (default: the embedded
SmolLM2-Instruct), so that a class can share one explainer, and so that the HTTP labelling path is
tested against a real server offline. ``mistudio serve-chat [--model default] [--port 8000]``.

Endpoints: ``POST /v1/chat/completions`` (and ``/chat/completions``), ``GET /v1/models``. Answers one
request at a time; with ``require_key`` set, requests must carry ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hmac
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..core.workspace import Workspace
from ..features.labeling import LocalChat


def make_server(
    ws: Workspace,
    model: str = "default",
    host: str = "127.0.0.1",
    port: int = 8000,
    require_key: str | None = None,
) -> ThreadingHTTPServer:
    chat = LocalChat(ws, model)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, obj) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if not require_key:
                return True
            got = self.headers.get("Authorization", "")
            if hmac.compare_digest(got.encode(), f"Bearer {require_key}".encode()):
                return True
            self._send(401, {"error": {"message": "invalid API key", "type": "invalid_request_error"}})
            return False

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                if self._authorised():
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [{"id": chat.name, "object": "model", "owned_by": "mistudio"}],
                        },
                    )
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._send(404, {"error": {"message": "not found"}})
                return
            if not self._authorised():
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                messages = body["messages"]
                if not isinstance(messages, list) or not all(
                    isinstance(m, dict) and "content" in m for m in messages
                ):
                    raise ValueError("messages must be a list of {role, content}")
                max_tokens = min(int(body.get("max_tokens") or 64), 512)
                temperature = float(body.get("temperature") or 0.0)
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                self._send(
                    400, {"error": {"message": f"bad request: {exc}", "type": "invalid_request_error"}}
                )
                return
            with lock:
                text = chat.chat(
                    [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in messages],
                    max_tokens,
                    temperature,
                )
            self._send(
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": chat.name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )

        def log_message(self, fmt: str, *args) -> None:
            """One line per request on stderr: client, request line, status (never headers: never a key)."""
            sys.stderr.write(f"{self.address_string()} [{self.log_date_time_string()}] {fmt % args}\n")
            sys.stderr.flush()

    return ThreadingHTTPServer((host, port), Handler)
