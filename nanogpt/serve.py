"""`nanogpt serve`: a minimal HTTP endpoint for a model, on the standard library's http.server alone.

POST /generate with a JSON object {"prompt": TEXT, and optionally "max_new_tokens", "num_samples",
"temperature", "top_k", "seed"} answers {"samples": [...], "tokens_per_sec": N}: the samples `nanogpt sample`
draws with the same settings. GET / describes the model. One request at a time (the model is not shared between
threads); the prompt is text only (never FILE:, which would read the server's files); a request's size and the
tokens it may ask for are capped; bad requests get a 400 with a one-line error.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch

from nanogpt.config import resolve_sample
from nanogpt.data.tokenizer import Tokenizer
from nanogpt.errors import UserError
from nanogpt.model import GPT
from nanogpt.runtime import Placement
from nanogpt.sample import draw_continuation, encode_prompt
from nanogpt.settings import SampleSettings

MAX_BODY_BYTES = 64 * 1024
REQUEST_TOKENS_MAX = 4096  # num_samples x max_new_tokens of one request: no request holds the server for long
REQUEST_KEYS = ("max_new_tokens", "num_samples", "temperature", "top_k", "seed")


class BadRequest(UserError):
    """A request the server answers with 400 and this message."""


def parse_request(body: bytes, defaults: SampleSettings) -> tuple[str, SampleSettings]:
    """The prompt and the settings of one /generate request: the server's settings with the request's on top."""
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("the body is not JSON: expected {\"prompt\": TEXT, ...}") from None
    if not isinstance(request, dict) or not isinstance(request.get("prompt"), str) or not request["prompt"]:
        raise BadRequest("expected a JSON object with a non-empty \"prompt\" string")
    unknown = sorted(set(request) - {"prompt", *REQUEST_KEYS})
    if unknown:
        raise BadRequest(f"unknown keys {unknown}: expected prompt and any of {list(REQUEST_KEYS)}")
    entry = {k: getattr(defaults, k) for k in (*REQUEST_KEYS, "device", "dtype")}
    entry.update({k: request[k] for k in REQUEST_KEYS if k in request})
    settings = resolve_sample({"model": defaults.model, **entry}, "request")
    if settings.num_samples * settings.max_new_tokens > REQUEST_TOKENS_MAX:
        raise BadRequest(f"request.num_samples x max_new_tokens = {settings.num_samples * settings.max_new_tokens}: "
                         f"expected at most {REQUEST_TOKENS_MAX}")
    return request["prompt"], settings


def generate(model: GPT, tok: Tokenizer, prompt: str, settings: SampleSettings,
             placement: Placement) -> tuple[list[str], float]:
    """`nanogpt sample`'s samples for this prompt (the same draws for the same seed), and the tokens/s."""
    ids = encode_prompt(tok, prompt)
    generator = torch.Generator(device=placement.device).manual_seed(settings.seed)
    t0 = time.perf_counter()
    samples = [tok.decode(draw_continuation(model, ids, settings, placement, generator, None))
               for _ in range(settings.num_samples)]
    return samples, settings.num_samples * settings.max_new_tokens / (time.perf_counter() - t0)


def make_server(model: GPT, tok: Tokenizer, defaults: SampleSettings, placement: Placement, host: str,
                port: int) -> HTTPServer:
    """A server bound to (host, port) (port 0: any free one, read back from server.server_address)."""
    model.eval().to(placement.device)
    about = {"model": defaults.model, "block_size": model.config.block_size, "vocab_size": model.config.vocab_size,
             "tokenizer": tok.kind, "defaults": {k: getattr(defaults, k) for k in REQUEST_KEYS}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/":
                return self._reply(404, {"error": f"no {self.path}: expected GET / or POST /generate"})
            self._reply(200, about)

        def do_POST(self) -> None:
            if self.path != "/generate":
                return self._reply(404, {"error": f"no {self.path}: expected POST /generate"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY_BYTES:
                return self._reply(413 if length > MAX_BODY_BYTES else 400,
                                   {"error": f"Content-Length {self.headers.get('Content-Length')!r}: expected a "
                                             f"JSON body of 1 to {MAX_BODY_BYTES} bytes"})
            try:
                prompt, settings = parse_request(self.rfile.read(length), defaults)
                samples, tps = generate(model, tok, prompt, settings, placement)
            except UserError as e:
                return self._reply(400, {"error": " ".join(str(e).split())})
            self._reply(200, {"samples": samples, "tokens_per_sec": round(tps, 1)})

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # one line per request on stderr
            print(f"nanogpt serve: {self.address_string()} {format % args}", file=sys.stderr)

    return HTTPServer((host, port), Handler)
