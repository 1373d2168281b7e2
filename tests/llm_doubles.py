"""HTTP test doubles that speak the OpenAI and Anthropic wire formats (no real LLM here).

A scripted server on 127.0.0.1: each request takes the next step of the script
(a reply, an HTTP error, a stall, malformed JSON, a body cut short); when the script
runs out it repeats its last step. It counts requests, so a replay can prove it made none.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reply(text):
    return ("reply", text)


class ScriptedLLM:
    def __init__(self, wire: str, script: list):
        self.wire, self.script, self.requests = wire, list(script), 0
        self.lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with double.lock:
                    double.requests += 1
                    step = double.script.pop(0) if len(double.script) > 1 else double.script[0]
                double.serve(self, step, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}/v1" if self.wire == "openai" else f"http://127.0.0.1:{port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def serve(self, handler, step, body):
        kind = step[0]
        if kind == "reply":
            payload = self.payload(step[1], body)
            self.send(handler, 200, json.dumps(payload).encode())
        elif kind == "status":
            _, status, headers = step
            error = {"error": {"type": "rate_limit_error" if status == 429 else "api_error", "message": f"status {status}"}}
            if self.wire == "anthropic":
                error = {"type": "error", **error}
            self.send(handler, status, json.dumps(error).encode(), headers)
        elif kind == "stall":
            time.sleep(step[1])
            try:
                self.send(handler, 200, json.dumps(self.payload("late", body)).encode())
            except OSError:
                pass
        elif kind == "malformed":
            self.send(handler, 200, b'{"choices": [ {"message": ')
        elif kind == "cut":
            handler.send_response(200)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", "5000")
            handler.end_headers()
            handler.wfile.write(b'{"id": "cut", "choices": [')
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)

    def payload(self, text, body):
        if self.wire == "openai":
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 100 + len(str(body)) // 50, "completion_tokens": 20 + len(text) // 4,
                              "total_tokens": 0}}
        return {"id": "x", "type": "message", "role": "assistant", "model": body.get("model", "m"),
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 100 + len(str(body)) // 50, "output_tokens": 20 + len(text) // 4}}

    @staticmethod
    def send(handler, status, data, headers=None):
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
