"""A small OpenAI-compatible chat-completions server backed by a workspace model (default: the embedded
SmolLM2-Instruct), so that a class can share one explainer, and so that the HTTP labelling path is
tested against a real server offline. ``mistudio serve-chat [--model default] [--port 8000]``.

Endpoints: ``POST /v1/chat/completions`` (and ``/chat/completions``), ``GET /v1/models``. Answers one
request at a time; with ``require_key`` set, requests must carry ``Authorization: Bearer <key>``.
Limits: bodies up to 1 MB, prompts up to 16,000 characters, answers up to 512 tokens; a request that
waits more than 60 s for the model gets 503 (retry) rather than queueing without end; bad parameters
get 400."""

from __future__ import annotations

import hmac
import json
import math
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..core.workspace import Workspace
from ..features.labeling import LocalChat

MAX_BODY_BYTES, MAX_PROMPT_CHARS, MAX_NEW_TOKENS, WAIT_SECONDS = 1 << 20, 16_000, 512, 60.0


def parse_request(body) -> tuple[list[dict[str, str]], int, float]:
    """(messages, max_tokens, temperature) of a chat-completions body, or ValueError naming the problem."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
    ):
        raise ValueError("messages must be a non-empty list of {role, content} with text content")
    chars = sum(len(m["content"]) for m in messages)
    if chars > MAX_PROMPT_CHARS:
        raise ValueError(f"the messages hold {chars:,} characters; at most {MAX_PROMPT_CHARS:,} are served")
    mt = body.get("max_tokens")
    mt = 64 if mt is None else mt
    if isinstance(mt, bool) or not isinstance(mt, int) or not 1 <= mt <= MAX_NEW_TOKENS:
        raise ValueError(f"max_tokens must be an integer from 1 to {MAX_NEW_TOKENS}")
    t = body.get("temperature")
    t = 0.0 if t is None else t
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= 2:
        raise ValueError("temperature must be a number from 0 to 2")
    return [{"role": str(m.get("role", "user")), "content": m["content"]} for m in messages], mt, float(t)


class _ChatHandler(BaseHTTPRequestHandler):
    """OpenAI's chat-completions protocol over one workspace model (set by :func:`make_server`)."""

    chat: LocalChat
    lock: threading.Lock
    require_key: str | None
    wait_seconds: float

    def _send(self, code: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"error": {"message": message, "type": "invalid_request_error"}})

    def _authorised(self) -> bool:
        if not self.require_key:
            return True
        got = self.headers.get("Authorization", "")
        if hmac.compare_digest(got.encode(), f"Bearer {self.require_key}".encode()):
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
                        "data": [{"id": self.chat.name, "object": "model", "owned_by": "mistudio"}],
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
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "a Content-Length header is required")
            return
        if not 0 <= length <= MAX_BODY_BYTES:
            self._error(413, f"the body is {length:,} bytes; at most {MAX_BODY_BYTES:,} are read")
            return
        try:
            messages, max_tokens, temperature = parse_request(json.loads(self.rfile.read(length) or b"{}"))
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            self._error(400, f"bad request: {exc}")
            return
        if not self.lock.acquire(timeout=self.wait_seconds):
            self._error(503, f"the model is busy; waited {self.wait_seconds:g} s: retry later")
            return
        try:
            text = self.chat.chat(messages, max_tokens, temperature)
        finally:
            self.lock.release()
        self._send(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.chat.name,
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


def make_server(
    ws: Workspace,
    model: str = "default",
    host: str = "127.0.0.1",
    port: int = 8000,
    require_key: str | None = None,
    wait_seconds: float = WAIT_SECONDS,
) -> ThreadingHTTPServer:
    """The server, not yet serving; ``server.model_lock`` is held while one request uses the model, and
    a request that cannot take it within ``wait_seconds`` is answered 503."""
    chat = LocalChat(ws, model)
    lock = threading.Lock()

    handler = type(
        "Handler",
        (_ChatHandler,),
        {"chat": chat, "lock": lock, "require_key": require_key, "wait_seconds": wait_seconds},
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.model_lock = lock  # type: ignore[attr-defined]
    return server
