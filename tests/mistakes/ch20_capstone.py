"""Wrong answers to chapter 20, as learners write them."""
import json
import re
import time
import uuid

from solutions.ch20_capstone import (INSTRUCTION, MAX_BODY, MODEL_CREATED, MODEL_ID, api_error,
                                     json_response, sse_frames, validate_request)

from . import wrong


# -- assemble_prompt ----------------------------------------------------------------------
@wrong("ch20.assemble_prompt", diagnosis="from-zero")
def prompt_numbered_from_zero(question, passages, budget):
    def build(kept):
        lines = [INSTRUCTION, ""]
        for i, p in enumerate(kept):
            lines += [f"[{i}] {p['chapter']} §{p['section']}", p["text"], ""]
        return "\n".join(lines + [f"Question: {question}", "Answer:"])

    kept = list(passages)
    while kept and len(build(kept)) > budget:
        kept.pop()
    return build(kept)


@wrong("ch20.assemble_prompt", diagnosis="cut-mid-way")
def prompt_truncated_at_budget(question, passages, budget):
    body = INSTRUCTION + "\n\n"
    for i, p in enumerate(passages, start=1):
        body += f"[{i}] {p['chapter']} §{p['section']}\n{p['text']}\n\n"
    tail = f"Question: {question}\nAnswer:"
    room = budget - len(tail)
    if len(body) > room:
        body = body[:max(room, 0)].rstrip() + "\n\n"
    return body + tail


@wrong("ch20.assemble_prompt", diagnosis="skips")
def prompt_fills_gaps(question, passages, budget):
    def build(kept):
        lines = [INSTRUCTION, ""]
        for i, p in enumerate(kept, start=1):
            lines += [f"[{i}] {p['chapter']} §{p['section']}", p["text"], ""]
        return "\n".join(lines + [f"Question: {question}", "Answer:"])

    kept = []
    for p in passages:
        if len(build(kept + [p])) <= budget:
            kept.append(p)
    return build(kept)


@wrong("ch20.assemble_prompt", diagnosis="drops-best")
def prompt_drops_from_the_front(question, passages, budget):
    def build(kept):
        lines = [INSTRUCTION, ""]
        for i, p in enumerate(kept, start=1):
            lines += [f"[{i}] {p['chapter']} §{p['section']}", p["text"], ""]
        return "\n".join(lines + [f"Question: {question}", "Answer:"])

    kept = list(passages)
    while kept and len(build(kept)) > budget:
        kept.pop(0)
    return build(kept)


# -- sse_frames ---------------------------------------------------------------------------
def _chunk(cid, model, created, delta, finish):
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


@wrong("ch20.sse_frames", diagnosis="no-blank-line")
def frames_one_newline(deltas, completion_id, model, created, finish_reason="stop", first=True,
                       last=True):
    out = ""
    if first:
        out += "data: " + json.dumps(_chunk(completion_id, model, created,
                                            {"role": "assistant", "content": ""}, None)) + "\n"
    for d in deltas:
        if d:
            out += "data: " + json.dumps(_chunk(completion_id, model, created, {"content": d},
                                                None)) + "\n"
    if last:
        out += "data: " + json.dumps(_chunk(completion_id, model, created, {}, finish_reason)) + "\n"
        out += "data: [DONE]\n"
    return out.encode()


@wrong("ch20.sse_frames", diagnosis="done-as-json")
def frames_done_as_json(deltas, completion_id, model, created, finish_reason="stop", first=True,
                        last=True):
    events = []
    if first:
        events.append(_chunk(completion_id, model, created, {"role": "assistant", "content": ""},
                             None))
    events += [_chunk(completion_id, model, created, {"content": d}, None) for d in deltas if d]
    if last:
        events.append(_chunk(completion_id, model, created, {}, finish_reason))
        events.append({"done": True})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


@wrong("ch20.sse_frames", diagnosis="role-every-chunk")
def frames_role_everywhere(deltas, completion_id, model, created, finish_reason="stop",
                           first=True, last=True):
    out = []
    pieces = ([""] if first else []) + [d for d in deltas if d]
    for d in pieces:
        delta = {"role": "assistant", "content": d}
        out.append(b"data: " + json.dumps(_chunk(completion_id, model, created, delta,
                                                 None)).encode() + b"\n\n")
    if last:
        out.append(b"data: " + json.dumps(_chunk(completion_id, model, created, {},
                                                 finish_reason)).encode() + b"\n\n")
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


@wrong("ch20.sse_frames", diagnosis="finish-every-chunk")
def frames_finish_everywhere(deltas, completion_id, model, created, finish_reason="stop",
                             first=True, last=True):
    out = []
    if first:
        out.append({"role": "assistant", "content": ""})
    out += [{"content": d} for d in deltas if d]
    text = b""
    for delta in out:
        text += b"data: " + json.dumps(_chunk(completion_id, model, created, delta,
                                              finish_reason)).encode() + b"\n\n"
    if last:
        text += b"data: [DONE]\n\n"
    return text


@wrong("ch20.sse_frames", diagnosis="done-missing")
def frames_without_done(deltas, completion_id, model, created, finish_reason="stop", first=True,
                        last=True):
    events = []
    if first:
        events.append(_chunk(completion_id, model, created, {"role": "assistant", "content": ""},
                             None))
    events += [_chunk(completion_id, model, created, {"content": d}, None) for d in deltas if d]
    if last:
        events.append(_chunk(completion_id, model, created, {}, finish_reason))
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


# -- validate_request ---------------------------------------------------------------------
def _check(body, models, status_for_errors=None, bad_json_status=400, strict_stream=True,
           unknown_model_status=404):
    def error(status, message, param, code):
        return (status_for_errors or status), {"error": {
            "message": message, "type": "invalid_request_error", "param": param, "code": code}}

    try:
        req = json.loads(body)
    except ValueError:
        if bad_json_status == 500:
            return 500, {"error": {"message": "server error", "type": "server_error",
                                   "param": None, "code": None}}
        return error(bad_json_status, "bad JSON", None, "invalid_json")
    if not isinstance(req, dict):
        return error(400, "bad JSON", None, "invalid_json")
    for name in ("model", "messages"):
        if name not in req:
            return error(400, f"missing {name}", name, "missing_required_parameter")
    if not isinstance(req["model"], str):
        return error(400, "model must be a string", "model", "invalid_type")
    if not isinstance(req["messages"], list):
        return error(400, "messages must be a list", "messages", "invalid_type")
    if "stream" in req and strict_stream and not isinstance(req["stream"], bool):
        return error(400, "stream must be a boolean", "stream", "invalid_type")
    mt = req.get("max_tokens")
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
        return error(400, "max_tokens must be a positive integer", "max_tokens", "invalid_type")
    msgs = req["messages"]
    if not msgs or not all(isinstance(m, dict) and m.get("role") in
                           ("system", "developer", "user", "assistant")
                           and isinstance(m.get("content"), str) for m in msgs) \
            or not any(m["role"] == "user" for m in msgs):
        return error(400, "bad messages", "messages", "invalid_value")
    if req["model"] not in models:
        return error(unknown_model_status, "no such model", "model", "model_not_found")
    return 200, {"model": req["model"], "messages": msgs, "stream": bool(req.get("stream", False)),
                 "max_tokens": mt}


@wrong("ch20.validate_request", diagnosis="error-200")
def validate_always_200(body, models):
    return _check(body, models, status_for_errors=200)


@wrong("ch20.validate_request", diagnosis="bad-json-500")
def validate_bad_json_is_server_error(body, models):
    return _check(body, models, bad_json_status=500)


@wrong("ch20.validate_request", diagnosis="stream-truthy")
def validate_truthy_stream(body, models):
    return _check(body, models, strict_stream=False)


@wrong("ch20.validate_request", diagnosis="unknown-model-400")
def validate_unknown_model_400(body, models):
    return _check(body, models, unknown_model_status=400)


# -- handle -------------------------------------------------------------------------------
_PENDING = []   # the mistake: one list of pieces for every request


@wrong("ch20.handle", diagnosis="shared-state")
def handle_with_a_global_buffer(method, path, headers, body, answer, page):
    routes = {"/": "GET", "/v1/models": "GET", "/v1/chat/completions": "POST"}
    if path not in routes:
        return json_response(*api_error(404, "unknown URL", None, "unknown_url"))
    if method != routes[path]:
        return json_response(*api_error(405, "method not allowed", None, "method_not_allowed"),
                             {"allow": routes[path]})
    if path == "/":
        return 200, {"content-type": "text/html; charset=utf-8"}, [page.encode()]
    if path == "/v1/models":
        return json_response(200, {"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": MODEL_CREATED, "owned_by": "course"}]})
    if int(headers.get("content-length", 0)) > MAX_BODY:
        return json_response(*api_error(413, "too large", None, "request_too_large"))
    status, req = validate_request(body, [MODEL_ID])
    if status != 200:
        return json_response(status, req)
    pieces, finish = answer(req["messages"])
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    if not req["stream"]:
        return json_response(200, {"id": cid, "object": "chat.completion", "created": created,
                                   "model": req["model"], "choices": [{
                                       "index": 0, "message": {"role": "assistant",
                                                               "content": "".join(pieces)},
                                       "finish_reason": finish}]})
    _PENDING[:] = list(pieces)

    def events():
        yield sse_frames([], cid, req["model"], created, finish, last=False)
        while _PENDING:
            yield sse_frames([_PENDING.pop(0)], cid, req["model"], created, finish, first=False,
                             last=False)
        yield sse_frames([], cid, req["model"], created, finish, first=False)
    return 200, {"content-type": "text/event-stream", "cache-control": "no-cache"}, events()


@wrong("ch20.handle", diagnosis="stream-ignored")
def handle_never_streams(method, path, headers, body, answer, page):
    if path == "/" and method == "GET":
        return 200, {"content-type": "text/html; charset=utf-8"}, [page.encode()]
    if path == "/v1/models" and method == "GET":
        return json_response(200, {"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": MODEL_CREATED, "owned_by": "course"}]})
    if path in ("/", "/v1/models", "/v1/chat/completions") and method not in ("GET", "POST") \
            or (path == "/v1/chat/completions" and method != "POST") \
            or (path in ("/", "/v1/models") and method != "GET"):
        allow = "POST" if path == "/v1/chat/completions" else "GET"
        return json_response(*api_error(405, "method not allowed", None, "method_not_allowed"),
                             {"allow": allow})
    if path != "/v1/chat/completions":
        return json_response(*api_error(404, "unknown URL", None, "unknown_url"))
    if int(headers.get("content-length", 0)) > MAX_BODY:
        return json_response(*api_error(413, "too large", None, "request_too_large"))
    status, req = validate_request(body, [MODEL_ID])
    if status != 200:
        return json_response(status, req)
    pieces, finish = answer(req["messages"])
    return json_response(200, {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
                               "created": int(time.time()), "model": req["model"],
                               "choices": [{"index": 0, "finish_reason": finish, "message": {
                                   "role": "assistant", "content": "".join(pieces)}}]})


@wrong("ch20.handle", diagnosis="405-as-404")
def handle_404_for_wrong_method(method, path, headers, body, answer, page):
    if (method, path) == ("GET", "/"):
        return 200, {"content-type": "text/html; charset=utf-8"}, [page.encode()]
    if (method, path) == ("GET", "/v1/models"):
        return json_response(200, {"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": MODEL_CREATED, "owned_by": "course"}]})
    if (method, path) != ("POST", "/v1/chat/completions"):
        return json_response(*api_error(404, f"no route {method} {path}", None, "unknown_url"))
    if int(headers.get("content-length", 0)) > MAX_BODY:
        return json_response(*api_error(413, "too large", None, "request_too_large"))
    status, req = validate_request(body, [MODEL_ID])
    if status != 200:
        return json_response(status, req)
    pieces, finish = answer(req["messages"])
    cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
    if req["stream"]:
        def events():
            yield sse_frames([], cid, req["model"], created, finish, last=False)
            for p in pieces:
                yield sse_frames([p], cid, req["model"], created, finish, first=False, last=False)
            yield sse_frames([], cid, req["model"], created, finish, first=False)
        return 200, {"content-type": "text/event-stream", "cache-control": "no-cache"}, events()
    return json_response(200, {"id": cid, "object": "chat.completion", "created": created,
                               "model": req["model"], "choices": [{
                                   "index": 0, "message": {"role": "assistant",
                                                           "content": "".join(pieces)},
                                   "finish_reason": finish}]})


@wrong("ch20.handle", diagnosis="ch20.sse_frames:no-blank-line")
def handle_with_single_newlines(method, path, headers, body, answer, page):
    routes = {"/": "GET", "/v1/models": "GET", "/v1/chat/completions": "POST"}
    if path not in routes:
        return json_response(*api_error(404, "unknown URL", None, "unknown_url"))
    if method != routes[path]:
        return json_response(*api_error(405, "method not allowed", None, "method_not_allowed"),
                             {"allow": routes[path]})
    if path == "/":
        return 200, {"content-type": "text/html; charset=utf-8"}, [page.encode()]
    if path == "/v1/models":
        return json_response(200, {"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": MODEL_CREATED, "owned_by": "course"}]})
    if int(headers.get("content-length", 0)) > MAX_BODY:
        return json_response(*api_error(413, "too large", None, "request_too_large"))
    status, req = validate_request(body, [MODEL_ID])
    if status != 200:
        return json_response(status, req)
    pieces, finish = answer(req["messages"])
    cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
    if not req["stream"]:
        return json_response(200, {"id": cid, "object": "chat.completion", "created": created,
                                   "model": req["model"], "choices": [{
                                       "index": 0, "message": {"role": "assistant",
                                                               "content": "".join(pieces)},
                                       "finish_reason": finish}]})

    def line(delta, fr):
        return ("data: " + json.dumps({"id": cid, "object": "chat.completion.chunk",
                                       "created": created, "model": req["model"],
                                       "choices": [{"index": 0, "delta": delta,
                                                    "finish_reason": fr}]}) + "\n").encode()

    def events():
        yield line({"role": "assistant", "content": ""}, None)
        for p in pieces:
            if p:
                yield line({"content": p}, None)
        yield line({}, finish)
        yield b"data: [DONE]\n"
    return 200, {"content-type": "text/event-stream", "cache-control": "no-cache"}, events()


# -- parse_citations ----------------------------------------------------------------------
@wrong("ch20.parse_citations", diagnosis="from-zero")
def citations_by_position(answer):
    text, _, sources = answer.partition("\nSources:")
    lines = [l for l in sources.strip().split("\n") if l.strip()]
    out = []
    for n in dict.fromkeys(int(x) for x in re.findall(r"\[(\d+)\]", text)):
        if n - 1 < len(lines):
            m = re.match(r"\[\d+\] (ch\d\d) §(.*)", lines[n - 1])
            out.append({"n": n, "chapter": m.group(1), "section": m.group(2).strip()})
    return out


@wrong("ch20.parse_citations", diagnosis="repeats-kept")
def citations_with_repeats(answer):
    text, _, sources = answer.partition("\nSources:")
    table = {int(n): (ch, sec.strip()) for n, ch, sec in
             re.findall(r"^\[(\d+)\] (ch\d\d) §(.*)$", sources, re.M)}
    return [{"n": n, "chapter": table[n][0], "section": table[n][1]}
            for n in (int(x) for x in re.findall(r"\[(\d+)\]", text)) if n in table]


@wrong("ch20.parse_citations", diagnosis="sources-counted")
def citations_from_everywhere(answer):
    table = {int(n): (ch, sec.strip()) for n, ch, sec in
             re.findall(r"^\[(\d+)\] (ch\d\d) §(.*)$", answer, re.M)}
    out = []
    for n in (int(x) for x in re.findall(r"\[(\d+)\]", answer)):
        if n in table and n not in [c["n"] for c in out]:
            out.append({"n": n, "chapter": table[n][0], "section": table[n][1]})
    return out
