"""Correct answers to chapter 20, in other styles than the reference."""
import json
import re
import time
import uuid

from solutions.ch20_capstone import (INSTRUCTION, MAX_BODY, MODEL_CREATED, MODEL_ID, api_error,
                                     sse_frames, validate_request)

from . import right


# -- assemble_prompt ----------------------------------------------------------------------
@right("ch20.assemble_prompt", style="running count of block lengths, joined once at the end")
def prompt_by_counting(question, passages, budget):
    head, tail = INSTRUCTION + "\n\n", f"Question: {question}\nAnswer:"
    used, blocks = len(head) + len(tail), []
    for i, p in enumerate(passages, start=1):
        block = f"[{i}] {p['chapter']} §{p['section']}\n{p['text']}\n\n"
        if used + len(block) > budget:
            break
        used += len(block)
        blocks.append(block)
    return head + "".join(blocks) + tail


@right("ch20.assemble_prompt", style="try every prefix length from the longest down")
def prompt_by_prefixes(question, passages, budget):
    for n in range(len(passages), -1, -1):
        parts = [INSTRUCTION, ""]
        for i in range(n):
            p = passages[i]
            parts.extend([f"[{i + 1}] {p['chapter']} §{p['section']}", p["text"], ""])
        parts.extend([f"Question: {question}", "Answer:"])
        prompt = "\n".join(parts)
        if len(prompt) <= budget or n == 0:
            return prompt


# -- sse_frames ---------------------------------------------------------------------------
@right("ch20.sse_frames", style="compact JSON, non-ASCII kept, a list of events joined")
def frames_compact(deltas, completion_id, model, created, finish_reason="stop", first=True,
                   last=True):
    def event(delta, finish):
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                 "model": model, "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": finish}]}
        return "data: " + json.dumps(chunk, separators=(",", ":"), ensure_ascii=False) + "\n\n"

    parts = [event({"role": "assistant", "content": ""}, None)] if first else []
    parts += [event({"content": d}, None) for d in deltas if d != ""]
    if last:
        parts += [event({}, finish_reason), "data: [DONE]\n\n"]
    return "".join(parts).encode("utf-8")


@right("ch20.sse_frames", style="keys in another order, bytes built up with +=")
def frames_reordered(deltas, completion_id, model, created, finish_reason="stop", first=True,
                     last=True):
    out = b""
    deltas_out = ([{"content": "", "role": "assistant"}] if first else []) + \
        [{"content": d} for d in deltas if d]
    finishes = [None] * len(deltas_out)
    if last:
        deltas_out.append({})
        finishes.append(finish_reason)
    for delta, fr in zip(deltas_out, finishes):
        chunk = {"choices": [{"finish_reason": fr, "delta": delta, "index": 0}], "model": model,
                 "created": created, "object": "chat.completion.chunk", "id": completion_id}
        out += b"data: " + json.dumps(chunk).encode() + b"\n\n"
    if last:
        out += b"data: [DONE]\n\n"
    return out


# -- validate_request ---------------------------------------------------------------------
def _error(status, message, param, code):
    return status, {"error": {"message": message, "type": "invalid_request_error", "param": param,
                              "code": code}}


@right("ch20.validate_request", style="a chain of early returns with type() checks")
def validate_early_returns(body, models):
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "Invalid JSON body.", None, "invalid_json")
    if type(req) is not dict:
        return _error(400, "The body must be a JSON object.", None, "invalid_json")
    if "model" not in req:
        return _error(400, "model is required", "model", "missing_required_parameter")
    if "messages" not in req:
        return _error(400, "messages is required", "messages", "missing_required_parameter")
    if type(req["model"]) is not str:
        return _error(400, "model: expected a string", "model", "invalid_type")
    if type(req["messages"]) is not list:
        return _error(400, "messages: expected a list", "messages", "invalid_type")
    if "stream" in req and type(req["stream"]) is not bool:
        return _error(400, "stream: expected a boolean", "stream", "invalid_type")
    mt = req.get("max_tokens")
    if mt is not None and not (type(mt) is int and mt > 0):
        return _error(400, "max_tokens: expected a positive integer", "max_tokens", "invalid_type")
    roles = {"system", "developer", "user", "assistant"}
    users = 0
    for m in req["messages"]:
        if type(m) is not dict or m.get("role") not in roles or type(m.get("content")) is not str:
            return _error(400, "bad message", "messages", "invalid_value")
        users += m["role"] == "user"
    if not users:
        return _error(400, "at least one user message", "messages", "invalid_value")
    if req["model"] not in models:
        return _error(404, f"model {req['model']} not found", "model", "model_not_found")
    return 200, {"model": req["model"], "messages": req["messages"],
                 "stream": req.get("stream", False), "max_tokens": mt}


class _Bad(Exception):
    def __init__(self, status, param, code):
        super().__init__(code)
        self.status, self.param, self.code = status, param, code


@right("ch20.validate_request", style="raise an exception per rule, catch it once")
def validate_with_exceptions(body, models):
    try:
        try:
            req = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Bad(400, None, "invalid_json")
        if not isinstance(req, dict):
            raise _Bad(400, None, "invalid_json")
        for name in ("model", "messages"):
            if name not in req:
                raise _Bad(400, name, "missing_required_parameter")
        types = {"model": (str,), "messages": (list,), "stream": (bool,)}
        for name, allowed in types.items():
            if name in req and not isinstance(req[name], allowed):
                raise _Bad(400, name, "invalid_type")
        mt = req.get("max_tokens")
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise _Bad(400, "max_tokens", "invalid_type")
        msgs = req["messages"]
        good = [isinstance(m, dict) and m.get("role") in ("system", "developer", "user",
                                                            "assistant")
                and isinstance(m.get("content"), str) for m in msgs]
        if not msgs or not all(good) or all(m["role"] != "user" for m in msgs):
            raise _Bad(400, "messages", "invalid_value")
        if req["model"] not in models:
            raise _Bad(404, "model", "model_not_found")
    except _Bad as bad:
        return _error(bad.status, f"invalid request ({bad.code})", bad.param, bad.code)
    return 200, {"model": req["model"], "messages": msgs, "stream": bool(req.get("stream")),
                 "max_tokens": mt}


# -- handle -------------------------------------------------------------------------------
def _json(status, payload, **extra):
    return status, {"content-type": "application/json", **extra}, [json.dumps(payload).encode()]


@right("ch20.handle", style="a routing table of (method, path) -> function")
def handle_by_table(method, path, headers, body, answer, page):
    def index():
        return 200, {"content-type": "text/html; charset=utf-8"}, [page.encode("utf-8")]

    def models():
        return _json(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model",
                                                        "created": MODEL_CREATED,
                                                        "owned_by": "course"}]})

    def chat():
        if int(headers.get("content-length", "0")) > MAX_BODY:
            return _json(*api_error(413, "too large", None, "request_too_large"))
        status, req = validate_request(body, [MODEL_ID])
        if status != 200:
            return _json(status, req)
        pieces, finish = answer(req["messages"])
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), req["model"]
        if not req["stream"]:
            return _json(200, {"id": cid, "object": "chat.completion", "created": created,
                               "model": model, "choices": [{
                                   "index": 0, "finish_reason": finish,
                                   "message": {"role": "assistant", "content": "".join(pieces)}}]})

        def events():
            yield sse_frames([], cid, model, created, finish, True, False)
            for piece in pieces:
                yield sse_frames([piece], cid, model, created, finish, False, False)
            yield sse_frames([], cid, model, created, finish, False, True)
        return 200, {"content-type": "text/event-stream", "cache-control": "no-cache"}, events()

    table = {("GET", "/"): index, ("GET", "/v1/models"): models,
             ("POST", "/v1/chat/completions"): chat}
    if (method, path) in table:
        return table[method, path]()
    allowed = [m for (m, p) in table if p == path]
    if allowed:
        return _json(*api_error(405, f"use {allowed[0]}", None, "method_not_allowed"),
                     allow=allowed[0])
    return _json(*api_error(404, f"no {path}", None, "unknown_url"))


class _Stream:
    """An iterator object holding its own state (one per request)."""

    def __init__(self, pieces, cid, model, created, finish):
        self.pieces, self.args = iter(pieces), (cid, model, created, finish)
        self.state = "open"

    def __iter__(self):
        return self

    def __next__(self):
        cid, model, created, finish = self.args
        if self.state == "open":
            self.state = "pieces"
            return sse_frames([], cid, model, created, finish, last=False)
        if self.state == "pieces":
            for piece in self.pieces:
                if piece:
                    return sse_frames([piece], cid, model, created, finish, first=False,
                                      last=False)
            self.state = "end"
            return sse_frames([], cid, model, created, finish, first=False)
        raise StopIteration


@right("ch20.handle", style="if/elif routing, the stream an iterator class")
def handle_with_iterator_class(method, path, headers, body, answer, page):
    if path == "/":
        if method != "GET":
            return _json(*api_error(405, "GET only", None, "method_not_allowed"), allow="GET")
        return 200, {"content-type": "text/html; charset=utf-8"}, [page.encode()]
    elif path == "/v1/models":
        if method != "GET":
            return _json(*api_error(405, "GET only", None, "method_not_allowed"), allow="GET")
        return _json(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model",
                                                        "created": MODEL_CREATED,
                                                        "owned_by": "course"}]})
    elif path == "/v1/chat/completions":
        if method != "POST":
            return _json(*api_error(405, "POST only", None, "method_not_allowed"), allow="POST")
        size = headers.get("content-length")
        if size is not None and int(size) > MAX_BODY:
            return _json(*api_error(413, "body too large", None, "request_too_large"))
        status, req = validate_request(body, [MODEL_ID])
        if status != 200:
            return _json(status, req)
        pieces, finish = answer(req["messages"])
        cid = "chatcmpl-" + uuid.uuid4().hex[:20]
        if req["stream"]:
            return 200, {"content-type": "text/event-stream", "cache-control": "no-cache"}, \
                _Stream(pieces, cid, req["model"], int(time.time()), finish)
        return _json(200, {"id": cid, "object": "chat.completion", "created": int(time.time()),
                           "model": req["model"], "choices": [{
                               "index": 0, "message": {"role": "assistant",
                                                       "content": "".join(pieces)},
                               "finish_reason": finish}]})
    return _json(*api_error(404, "unknown URL", None, "unknown_url"))


# -- parse_citations ----------------------------------------------------------------------
@right("ch20.parse_citations", style="split lines and brackets by hand, no regular expression")
def citations_by_hand(answer):
    cut = answer.find("\nSources:")
    text, sources = (answer, "") if cut < 0 else (answer[:cut], answer[cut + len("\nSources:"):])
    table = {}
    for line in sources.split("\n"):
        if line.startswith("[") and "] " in line and " §" in line:
            num, rest = line[1:].split("] ", 1)
            chapter, section = rest.split(" §", 1)
            if num.isdigit():
                table[int(num)] = (chapter.strip(), section.strip())
    out, seen, i = [], set(), 0
    while True:
        i = text.find("[", i)
        if i < 0:
            break
        j = text.find("]", i)
        if j < 0:
            break
        inner = text[i + 1:j]
        if inner.isdigit() and int(inner) in table and int(inner) not in seen:
            seen.add(int(inner))
            out.append({"n": int(inner), "chapter": table[int(inner)][0],
                        "section": table[int(inner)][1]})
        i += 1
    return out


@right("ch20.parse_citations", style="one regular expression per part, dict.fromkeys for order")
def citations_by_regex(answer):
    text = answer.split("\nSources:")[0]
    sources = dict((int(n), (c, s.strip())) for n, c, s in
                   re.findall(r"^\[(\d+)\] (ch\d{2}) §(.+)$", answer, re.M))
    return [{"n": n, "chapter": sources[n][0], "section": sources[n][1]}
            for n in dict.fromkeys(map(int, re.findall(r"\[(\d+)\]", text))) if n in sources]
