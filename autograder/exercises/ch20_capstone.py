"""Chapter 20 - LLM systems: an OpenAI-compatible app as pure functions.

References, all independent of the course's solutions:
- prompt assembly: the rule re-derived by adding passage blocks to a running total (the
  solution shrinks a prompt instead);
- the event stream: OpenAI's streaming format as its API reference documents it, built
  here event by event; every chunk the checks accept must also be accepted by the
  ``openai`` package's ``ChatCompletionChunk`` (the type its client parses a stream into),
  and tests/test_ch20_capstone.py reads the course's server with the real client;
- validation, the app and citations: the stated rules, re-derived with a table of
  checks; JSON bodies must pass ``openai.types.chat.ChatCompletion`` / ``openai.types.Model``.
"""
from __future__ import annotations

import functools
import json
import random
import re
import uuid

from ..core import Case, Exercise, Mistake, hidden_seed, inherit, register
from ..drivers.ch20_capstone import (compare_citations, compare_prompt, compare_response,
                                     compare_stream, compare_two, compare_validation,
                                     run_frames, run_handle, run_two_streams)

CH = "ch20"
SOL = "solutions.ch20_capstone"
INSTRUCTION = ("Answer the question from the numbered passages of the book. Cite each "
               "passage you use as [n]. If they do not hold the answer, say so.")
MODEL = "book-rag"
MODEL_CREATED = 1_790_000_000
MAX_BODY = 1_000_000
PAGE = "<!doctype html><title>Ask the book</title><p>chat</p>"

SENTENCES = [
    "Reciprocal-rank fusion adds 1 / (k + rank) over the lists a document appears in.",
    "BM25 scores a document by the rare words it shares with the query.",
    "A KV cache keeps the keys and values of earlier tokens.",
    "Absmax quantisation scales a tensor by its largest magnitude.",
    "The grounding check asks whether the answer's words are in its passage.",
    "Speculative decoding lets a draft model guess tokens the large model checks.",
    "Mean pooling averages the token vectors over the real tokens only.",
    "RoPE rotates each pair of query and key coordinates by an angle.",
    "Überprüfung: the § sign and é count as one character each.",
]
SECTIONS = [("ch16", "Hybrid search: reciprocal-rank fusion"), ("ch16", "BM25: matching words"),
            ("ch06", "The KV cache"), ("ch18", "Absmax int8"), ("ch19", "Hallucination checks"),
            ("ch18", "Speculative decoding"), ("ch16", "Sentence embeddings"),
            ("ch13", "RoPE scaling"), ("ch02", "Bytes and characters")]


def _passages(picks, repeat=1):
    return [{"chapter": SECTIONS[i][0], "section": SECTIONS[i][1],
             "text": " ".join([SENTENCES[i]] * repeat)} for i in picks]


# ========================================================================================
# assemble_prompt
# ========================================================================================
def _prompt_expected(question, passages, budget):
    head = INSTRUCTION + "\n\n"
    tail = f"Question: {question}\nAnswer:"
    total, kept = len(head) + len(tail), []
    for i, p in enumerate(passages, start=1):
        block = f"[{i}] {p['chapter']} §{p['section']}\n{p['text']}\n\n"
        if total + len(block) > budget:
            break
        total += len(block)
        kept.append(block)
    return head + "".join(kept) + tail


def _prompt_len(question, passages):
    return len(_prompt_expected(question, passages, 10 ** 9))


def _prompt_cases(hidden: bool):
    q = "What does reciprocal-rank fusion add up?"
    three = _passages([0, 1, 4])
    full = _prompt_len(q, three)
    two = _prompt_len(q, three[:2])
    long_first = _passages([2], repeat=6) + _passages([3])   # the small one would fit
    specs = [
        ("three passages, room for all", q, three, full + 50),
        ("budget exactly the length of the prompt with two passages", q, three, two),
        ("one character short of two passages: one is kept, none is cut", q, three, two - 1),
        ("a long passage that does not fit ends the prompt (no skipping)", q, long_first,
         _prompt_len(q, long_first[:0]) + 200),
        ("not even the question fits: no passage", q, three, 40),
        ("no passages at all", q, [], 1000),
        ("'§' and accents count as one character each", "Was zählt?", _passages([8, 5, 6]),
         _prompt_len("Was zählt?", _passages([8, 5])) + 3),
    ]
    for name, question, passages, budget in specs:
        yield Case(name, (question, passages, budget),
                   expected=lambda a=(question, passages, budget): _prompt_expected(*a),
                   compare=compare_prompt)
    if hidden:
        for i in range(3):
            rng = random.Random(hidden_seed("ch20.assemble_prompt", i))
            picks = rng.sample(range(len(SENTENCES)), 5)
            passages = _passages(picks, repeat=rng.randint(1, 3))
            cut = rng.randint(1, 4)
            budget = _prompt_len(q, passages[:cut]) + rng.randint(0, 20)
            yield Case(f"hidden case {i + 1}", (q, passages, budget),
                       expected=lambda a=(q, passages, budget): _prompt_expected(*a),
                       compare=compare_prompt)


def _prompt_wrong(kind):
    def build(question, kept, start=1):
        lines = [INSTRUCTION, ""]
        for i, p in enumerate(kept, start=start):
            lines += [f"[{i}] {p['chapter']} §{p['section']}", p["text"], ""]
        return "\n".join(lines + [f"Question: {question}", "Answer:"])

    def size(text):
        return len(text.encode("utf-8")) if kind == "bytes" else len(text)

    def fn(question, passages, budget):
        start = 0 if kind == "from-zero" else 1
        if kind == "cut-mid-way":
            prompt = build(question, passages)
            if size(prompt) <= budget:
                return prompt
            tail = f"\n\nQuestion: {question}\nAnswer:"
            return build(question, passages)[:max(budget - len(tail), 0)].rstrip() + tail
        if kind == "skips":
            kept = []
            for p in passages:
                if size(build(question, kept + [p])) <= budget:
                    kept.append(p)
            return build(question, kept)
        if kind == "drops-best":
            kept = list(passages)
            while kept and size(build(question, kept)) > budget:
                kept = kept[1:]
            return build(question, kept)
        if kind == "passages-only":
            kept, used = [], 0
            for p in passages:
                used += len(p["text"])
                if used > budget:
                    break
                kept.append(p)
            return build(question, kept)
        kept = list(passages)
        while kept and size(build(question, kept, start)) > budget:
            kept = kept[:-1]
        return build(question, kept, start)
    return fn


register(Exercise(
    id="ch20.assemble_prompt", chapter=CH, title="A prompt with numbered citations, under a budget",
    points=2, name="assemble_prompt", difficulty="*",
    signature="assemble_prompt(question: str, passages: list[dict], budget: int) -> str",
    reference="the rule re-derived by adding passage blocks to a running count of characters",
    solution=f"{SOL}:assemble_prompt", cases=_prompt_cases,
    mistakes=[
        Mistake("from-zero", "your passages are numbered from 0: citations are [1], [2], ... (the first "
                "passage is [1]; a reader, or a model, counts from one)", _prompt_wrong("from-zero")),
        Mistake("cut-mid-way", "you cut the prompt at the budget, in the middle of a passage: drop whole "
                "passages from the lowest-ranked end instead (a half passage can say the opposite of the "
                "whole)", _prompt_wrong("cut-mid-way")),
        Mistake("skips", "after a passage that did not fit you kept a lower-ranked one: stop at the first "
                "passage that does not fit, so the prompt holds the best passages[:n]", _prompt_wrong("skips")),
        Mistake("drops-best", "you dropped passages from the front: the first passage is the BEST ranked; "
                "drop from the end", _prompt_wrong("drops-best")),
        Mistake("bytes", "you counted bytes (UTF-8), not characters: '§' is 2 bytes but one character",
                _prompt_wrong("bytes")),
        Mistake("passages-only", "your budget counts only the passages' text: it is the length of the "
                "whole prompt (instruction, headers, question)", _prompt_wrong("passages-only")),
    ]))


# ========================================================================================
# sse_frames
# ========================================================================================
def _chunk(cid, model, created, delta, finish):
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _frames_expected(deltas, cid, model, created, finish_reason="stop", first=True, last=True):
    events = [_chunk(cid, model, created, {"role": "assistant", "content": ""}, None)] if first else []
    events += [_chunk(cid, model, created, {"content": d}, None) for d in deltas if d != ""]
    if last:
        events.append(_chunk(cid, model, created, {}, finish_reason))
    out = "".join("data: " + json.dumps(e, ensure_ascii=False) + "\n\n" for e in events)
    return (out + ("data: [DONE]\n\n" if last else "")).encode("utf-8")


def _frames_cases(hidden: bool):
    specs = [
        ("two pieces", ["Hello", " world."], "chatcmpl-abc123", "stop", True, True),
        ("an answer with its sources (newlines inside a piece)",
         ["Reciprocal-rank", " fusion", " [1]", "\n\nSources:", "\n[1]", " ch16", " §Hybrid", " search"],
         "chatcmpl-7f3e", "stop", True, True),
        ("no pieces at all", [], "chatcmpl-empty", "stop", True, True),
        ("empty pieces are skipped", ["", "Yes", "", "."], "chatcmpl-e2", "stop", True, True),
        ("stopped by the length limit", ["One", " two", " three"], "chatcmpl-len", "length", True, True),
        ("refused by a filter; unicode and quotes", ["I can't", " help: \"§\" é"], "chatcmpl-cf",
         "content_filter", True, True),
        ("the opening of a stream (last=False)", [], "chatcmpl-s1", "stop", True, False),
        ("one piece in the middle of a stream", [" fusion"], "chatcmpl-s1", "stop", False, False),
        ("the end of a stream (first=False)", [], "chatcmpl-s1", "stop", False, True),
    ]
    for name, deltas, cid, finish, first, last in specs:
        args = (deltas, cid, MODEL, 1_790_000_123, finish, first, last)
        yield Case(name, args, expected=lambda a=args: _frames_expected(*a), run=run_frames,
                   compare=compare_stream)
    if hidden:
        for i in range(2):
            rng = random.Random(hidden_seed("ch20.sse_frames", i))
            words = rng.choice(SENTENCES).split(" ")
            deltas = [words[0]] + [" " + w for w in words[1:]]
            args = (deltas, f"chatcmpl-{rng.getrandbits(48):012x}", MODEL, rng.randint(1_700_000_000, 1_800_000_000),
                    rng.choice(["stop", "length"]), True, True)
            yield Case(f"hidden case {i + 1}", args, expected=lambda a=args: _frames_expected(*a),
                       run=run_frames, compare=compare_stream)


def _frames_wrong(kind):
    def fn(deltas, completion_id, model, created, finish_reason="stop", first=True, last=True):
        end = b"\n" if kind == "no-blank-line" else b"\n\n"

        def event(delta, finish):
            return b"data: " + json.dumps(_chunk(completion_id, model, created, delta, finish)).encode() + end

        every = finish_reason if kind == "finish-every-chunk" else None
        pieces = [d for d in deltas if d]
        out = []
        if first and kind != "no-role-chunk":
            out.append(event({"role": "assistant", "content": ""}, every))
        for j, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece} if kind == "role-every-chunk" else {"content": piece}
            fr = finish_reason if kind == "finish-on-last-piece" and last and j == len(pieces) - 1 else every
            out.append(event(delta, fr))
        if last:
            if kind not in ("finish-every-chunk", "finish-on-last-piece") or not pieces:
                out.append(event({}, finish_reason))
            if kind == "done-as-json":
                out.append(b'data: {"done": true}' + end)
            elif kind != "done-missing":
                out.append(b"data: [DONE]" + end)
        return b"".join(out)
    return fn


register(Exercise(
    id="ch20.sse_frames", chapter=CH, title="Server-sent events, framed as OpenAI frames them", points=2,
    name="sse_frames", difficulty="*",
    signature="sse_frames(deltas: list[str], completion_id: str, model: str, created: int, "
              "finish_reason: str = 'stop', first: bool = True, last: bool = True) -> bytes",
    reference="OpenAI's streaming chat-completion format, built event by event; every chunk must be "
              "accepted by openai.types.chat.ChatCompletionChunk (openai 3.57)",
    solution=f"{SOL}:sse_frames", cases=_frames_cases,
    mistakes=[
        Mistake("no-blank-line", "your events end with one newline: an event ends with a BLANK line "
                "('\\n\\n'), or the client reads all of them as one event", _frames_wrong("no-blank-line")),
        Mistake("done-missing", "the stream does not end with 'data: [DONE]': OpenAI's clients wait for it "
                "to know the answer is complete", _frames_wrong("done-missing")),
        Mistake("done-as-json", "you sent the end as JSON: the last event is the literal text "
                "'data: [DONE]', not a JSON object", _frames_wrong("done-as-json")),
        Mistake("role-every-chunk", "every chunk repeats the role: only the first delta says "
                "{'role': 'assistant'}; the others carry only 'content'", _frames_wrong("role-every-chunk")),
        Mistake("finish-every-chunk", "every chunk carries the finish_reason: it is null until the last "
                "chunk (an empty delta), which alone says why the answer stopped",
                _frames_wrong("finish-every-chunk")),
        Mistake("no-role-chunk", "the stream does not open with the role chunk (delta {'role': "
                "'assistant', 'content': ''})", _frames_wrong("no-role-chunk")),
        Mistake("finish-on-last-piece", "you put the finish_reason on the last piece: OpenAI sends it in a "
                "chunk of its own, with an empty delta, after the last piece",
                _frames_wrong("finish-on-last-piece")),
    ]))


# ========================================================================================
# validate_request
# ========================================================================================
def _err(status, param, code):
    return status, {"error": {"message": "(any message)", "type": "invalid_request_error",
                              "param": param, "code": code}}


def _validate_expected(body, models):
    try:
        req = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return _err(400, None, "invalid_json")
    if type(req) is not dict:
        return _err(400, None, "invalid_json")
    for name in ["model", "messages"]:
        if name not in req:
            return _err(400, name, "missing_required_parameter")
    checks = {
        "model": lambda v: type(v) is str,
        "messages": lambda v: type(v) is list,
        "stream": lambda v: type(v) is bool,
        "max_tokens": lambda v: v is None or (type(v) is int and v >= 1),
    }
    for name, ok in checks.items():
        if name in req and not ok(req[name]):
            return _err(400, name, "invalid_type")
    msgs = req["messages"]
    fine = len(msgs) > 0
    for m in msgs:
        fine = fine and type(m) is dict and m.get("role") in ("system", "developer", "user", "assistant") \
            and type(m.get("content")) is str
    if not fine or "user" not in [m["role"] for m in msgs]:
        return _err(400, "messages", "invalid_value")
    if req["model"] not in models:
        return _err(404, "model", "model_not_found")
    return 200, {"model": req["model"], "messages": msgs, "stream": req.get("stream", False),
                 "max_tokens": req.get("max_tokens")}


def _body(obj) -> bytes:
    return json.dumps(obj).encode("utf-8")


USER = [{"role": "user", "content": "What is BM25?"}]
VALIDATION_SPECS = [
    ("a valid request", _body({"model": MODEL, "messages": USER})),
    ("a valid streaming request with a system message and max_tokens",
     _body({"model": MODEL, "stream": True, "max_tokens": 50,
            "messages": [{"role": "system", "content": "Be brief."}, *USER]})),
    ("not JSON", b'{"model": "book-rag", "messages": [}'),
    ("JSON but not an object", b'["book-rag"]'),
    ("not UTF-8", b'{"model": "\xff\xfe"}'),
    ("model missing", _body({"messages": USER})),
    ("messages missing", _body({"model": MODEL})),
    ("model is not a string", _body({"model": 3, "messages": USER})),
    ("messages is a string", _body({"model": MODEL, "messages": "What is BM25?"})),
    ("stream is the string 'true'", _body({"model": MODEL, "messages": USER, "stream": "true"})),
    ("stream is 1", _body({"model": MODEL, "messages": USER, "stream": 1})),
    ("max_tokens is true", _body({"model": MODEL, "messages": USER, "max_tokens": True})),
    ("max_tokens is 0", _body({"model": MODEL, "messages": USER, "max_tokens": 0})),
    ("max_tokens null is allowed", _body({"model": MODEL, "messages": USER, "max_tokens": None})),
    ("messages empty", _body({"model": MODEL, "messages": []})),
    ("a message without content", _body({"model": MODEL, "messages": [{"role": "user"}]})),
    ("an unknown role", _body({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]})),
    ("no user message", _body({"model": MODEL, "messages": [{"role": "system", "content": "hi"}]})),
    ("unknown model", _body({"model": "gpt-9", "messages": USER})),
    ("unknown model and bad stream: the type comes first",
     _body({"model": "gpt-9", "messages": USER, "stream": "yes"})),
]


def _validate_cases(hidden: bool):
    for name, body in VALIDATION_SPECS:
        yield Case(name, (body, [MODEL]), expected=lambda b=body: _validate_expected(b, [MODEL]),
                   compare=compare_validation)
    if hidden:
        for i in range(3):
            rng = random.Random(hidden_seed("ch20.validate_request", i))
            req = {"model": rng.choice([MODEL, "other-model"]), "messages": USER}
            broken = rng.choice(["stream", "max_tokens", "messages", "none"])
            if broken == "stream":
                req["stream"] = rng.choice(["false", 0, None])
            elif broken == "max_tokens":
                req["max_tokens"] = rng.choice([-3, 2.5, "10"])
            elif broken == "messages":
                req["messages"] = [{"role": "user", "content": rng.randint(0, 9)}]
            body = _body(req)
            yield Case(f"hidden case {i + 1}", (body, [MODEL]),
                       expected=lambda b=body: _validate_expected(b, [MODEL]), compare=compare_validation)


def _validate_wrong(kind):
    def fn(body, models):
        if kind == "bad-json-500":
            try:
                json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                return 500, {"error": {"message": "Internal error", "type": "server_error", "param": None,
                                       "code": None}}
        if kind == "stream-truthy":
            try:
                req = json.loads(body)
                if isinstance(req, dict) and "stream" in req and not isinstance(req["stream"], bool):
                    req["stream"] = bool(req["stream"])
                    body = json.dumps(req).encode()
            except ValueError:
                pass
        if kind == "bool-max-tokens":
            try:
                req = json.loads(body)
                if isinstance(req, dict) and isinstance(req.get("max_tokens"), bool):
                    req["max_tokens"] = int(req["max_tokens"])
                    body = json.dumps(req).encode()
            except ValueError:
                pass
        status, payload = _validate_expected(body, models)
        if kind == "error-200" and status != 200:
            return 200, payload
        if kind == "unknown-model-400" and status == 404:
            return 400, payload
        if kind == "missing-param-null" and status == 400 and payload["error"]["code"] == \
                "missing_required_parameter":
            payload["error"]["param"] = None
        return status, payload
    return fn


register(Exercise(
    id="ch20.validate_request", chapter=CH, title="Validating a request, OpenAI-style errors", points=2,
    name="validate_request", difficulty="**",
    signature="validate_request(body: bytes, models: list[str]) -> (status: int, payload: dict)",
    reference="the stated rules re-derived as a table of checks (OpenAI's error object: message, type, "
              "param, code)",
    solution=f"{SOL}:validate_request", cases=_validate_cases,
    mistakes=[
        Mistake("error-200", "you answered an error with status 200: a client (and the openai package) "
                "decides by the STATUS whether a request failed; 400 for a bad request, 404 for an unknown "
                "model", _validate_wrong("error-200")),
        Mistake("bad-json-500", "a body that is not JSON got a 500: that is the CLIENT's error, 400 with code "
                "'invalid_json' (a 500 makes clients retry a request that can never work)",
                _validate_wrong("bad-json-500")),
        Mistake("stream-truthy", "you accepted a non-boolean 'stream' (\"true\", 1): it must be true or false, "
                "else 400 'invalid_type'", _validate_wrong("stream-truthy")),
        Mistake("unknown-model-400", "an unknown model is 404 'model_not_found' (what OpenAI answers), not "
                "400", _validate_wrong("unknown-model-400")),
        Mistake("bool-max-tokens", "max_tokens=true passed as 1: in Python a bool is an int, check it "
                "first", _validate_wrong("bool-max-tokens")),
        Mistake("missing-param-null", "a missing field must be named in 'param' ('model' or 'messages'), so "
                "the client can say which", _validate_wrong("missing-param-null")),
    ]))


# ========================================================================================
# handle: the whole app
# ========================================================================================
ANSWERS = {
    "What is BM25?": ["BM25 scores documents by shared rare words [1]\n\nSources:\n[1] ch16 §BM25: matching words",
                      "stop"],
    "What does RRF add?": ["It adds 1 / (k + rank) per list [1]\n\nSources:\n[1] ch16 §Hybrid search",
                           "stop"],
    "How do I hack a phone?": ["I can't help with that.", "content_filter"],
}


def _json_resp(status, payload, extra=None):
    return status, {"content-type": "application/json", **(extra or {})}, [json.dumps(payload).encode()]


def _handle_with(validate, frames):
    """The reference app built on the given parts (for the inherited mistakes)."""
    def app(method, path, headers, body, answer, page):
        allowed = {"/": "GET", "/v1/models": "GET", "/v1/chat/completions": "POST"}.get(path)
        if allowed is None:
            return _json_resp(*_err(404, None, "unknown_url"))
        if method != allowed:
            return _json_resp(*_err(405, None, "method_not_allowed"), {"allow": allowed})
        if path == "/":
            return 200, {"content-type": "text/html; charset=utf-8"}, [page.encode()]
        if path == "/v1/models":
            return _json_resp(200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": MODEL_CREATED, "owned_by": "course"}]})
        if int(headers.get("content-length", "0")) > MAX_BODY:
            return _json_resp(*_err(413, None, "request_too_large"))
        status, req = validate(body, [MODEL])
        if status != 200:
            return _json_resp(status, req)
        pieces, finish = answer(req["messages"])
        cid = "chatcmpl-" + uuid.uuid4().hex
        if req["stream"]:
            def events(model=req["model"]):
                yield frames([], cid, model, 1_790_000_000, finish, True, False)
                for piece in pieces:
                    if piece:
                        yield frames([piece], cid, model, 1_790_000_000, finish, False, False)
                yield frames([], cid, model, 1_790_000_000, finish, False, True)
            return 200, {"content-type": "text/event-stream", "cache-control": "no-cache"}, events()
        return _json_resp(200, {"id": cid, "object": "chat.completion", "created": 1_790_000_000,
                                "model": req["model"],
                                "choices": [{"index": 0, "message": {"role": "assistant",
                                                                     "content": "".join(pieces)},
                                             "finish_reason": finish}]})
    return app


_REF_APP = _handle_with(_validate_expected, _frames_expected)


def _request(body, stream=None):
    head = {"content-type": "application/json", "content-length": str(len(body))}
    return head, body


def _handle_cases(hidden: bool):
    chat = lambda q, stream: _body({"model": MODEL, "messages": [{"role": "user", "content": q}],  # noqa: E731
                                    **({"stream": True} if stream else {})})
    specs = [
        ("routes", "GET / serves the chat page", "GET", "/", {}, b""),
        ("routes", "GET /v1/models", "GET", "/v1/models", {}, b""),
        ("routes", "an unknown path is 404", "GET", "/v1/engines", {}, b""),
        ("routes", "GET on /v1/chat/completions is 405, allow POST", "GET", "/v1/chat/completions", {}, b""),
        ("routes", "POST on /v1/models is 405, allow GET", "POST", "/v1/models", {}, b""),
        ("completions", "a chat completion", "POST", "/v1/chat/completions", *_request(chat("What is BM25?", False))),
        ("completions", "a refused question keeps its finish_reason", "POST", "/v1/chat/completions",
         *_request(chat("How do I hack a phone?", False))),
        ("stream", "a streamed chat completion", "POST", "/v1/chat/completions",
         *_request(chat("What does RRF add?", True))),
        ("stream", "a streamed refusal", "POST", "/v1/chat/completions",
         *_request(chat("How do I hack a phone?", True))),
        ("errors", "bad JSON is 400", "POST", "/v1/chat/completions", *_request(b"{not json")),
        ("errors", "unknown model is 404", "POST", "/v1/chat/completions",
         *_request(_body({"model": "gpt-9", "messages": USER}))),
        ("errors", "a wrong type is 400", "POST", "/v1/chat/completions",
         *_request(_body({"model": MODEL, "messages": USER, "stream": "yes"}))),
        ("errors", "a body over MAX_BODY is 413 (the server did not read it)", "POST", "/v1/chat/completions",
         {"content-type": "application/json", "content-length": str(5 * MAX_BODY)}, b""),
    ]
    for group, name, method, path, headers, body in specs:
        args = (method, path, headers, body, ANSWERS, PAGE)
        yield Case(name, args, expected=lambda a=args: run_handle(_REF_APP, *a), run=run_handle,
                   compare=compare_response, group=group)
    two = (chat("What is BM25?", True), chat("What does RRF add?", True), ANSWERS, PAGE)
    yield Case("two streams read in turn do not mix", two,
               expected=lambda a=two: run_two_streams(_REF_APP, *a), run=run_two_streams,
               compare=compare_two, group="concurrency")
    if hidden:
        for i in range(2):
            rng = random.Random(hidden_seed("ch20.handle", i))
            q = rng.choice(sorted(ANSWERS))
            args = ("POST", "/v1/chat/completions", *_request(chat(q, rng.random() < 0.5)), ANSWERS, PAGE)
            yield Case(f"hidden case {i + 1}", args, expected=lambda a=args: run_handle(_REF_APP, *a),
                       run=run_handle, compare=compare_response, group="completions")


def _handle_wrong(kind):
    shared = {"pieces": []}

    def shared_app(method, path, headers, body, answer, page):
        status, out_headers, chunks = _REF_APP(method, path, headers, body, answer, page)
        if out_headers.get("content-type") != "text/event-stream":
            return status, out_headers, chunks
        req = json.loads(body)
        pieces, finish = answer(req["messages"])
        shared["pieces"] = list(pieces)          # one buffer for every request
        cid = "chatcmpl-" + uuid.uuid4().hex

        def events():
            yield _frames_expected([], cid, req["model"], 1_790_000_000, finish, True, False)
            while shared["pieces"]:
                yield _frames_expected([shared["pieces"].pop(0)], cid, req["model"], 1_790_000_000,
                                       finish, False, False)
            yield _frames_expected([], cid, req["model"], 1_790_000_000, finish, False, True)
        return status, out_headers, events()

    base = shared_app if kind == "shared-state" else _REF_APP

    def app(method, path, headers, body, answer, page):
        if kind == "413-ignored":
            headers = {k: v for k, v in headers.items() if k != "content-length"}
        if kind == "405-as-404" and path in ("/v1/models", "/v1/chat/completions", "/") and \
                method != {"/": "GET", "/v1/models": "GET"}.get(path, "POST"):
            return _json_resp(*_err(404, None, "unknown_url"))
        if kind == "stream-ignored" and method == "POST":
            try:
                req = json.loads(body)
                if isinstance(req, dict) and req.get("stream") is True:
                    req.pop("stream")
                    body = json.dumps(req).encode()
            except ValueError:
                pass
        status, out_headers, chunks = base(method, path, headers, body, answer, page)
        if kind == "error-as-200" and status >= 400:
            status = 200
        return status, out_headers, chunks
    return app


def _compose_validate(validate):
    return _handle_with(validate, _frames_expected)


def _compose_frames(frames):
    return _handle_with(_validate_expected, frames)


register(Exercise(
    id="ch20.handle", chapter=CH, title="The app as a pure function", points=3, name="handle",
    difficulty="**",
    signature="handle(method: str, path: str, headers: dict, body: bytes, answer, page: str) -> "
              "(status: int, headers: dict, body_chunks: Iterable[bytes])",
    reference="the stated routes re-derived here; JSON bodies must be accepted by openai's ChatCompletion "
              "and Model types, stream chunks by ChatCompletionChunk",
    solution=f"{SOL}:handle", cases=_handle_cases,
    mistakes=[
        Mistake("shared-state", "two streams read in turn got each other's words: your stream keeps its "
                "pieces somewhere shared (a global, a class attribute); each request needs its own generator",
                _handle_wrong("shared-state")),
        Mistake("stream-ignored", "with \"stream\": true you answered one JSON body: stream the answer as "
                "server-sent events (content-type text/event-stream)", _handle_wrong("stream-ignored")),
        Mistake("405-as-404", "a known path called with the wrong method is 405 (with an 'allow' header), "
                "not 404", _handle_wrong("405-as-404")),
        Mistake("413-ignored", "a body over MAX_BODY must be refused with 413 by its content-length, before "
                "anything reads it", _handle_wrong("413-ignored")),
        Mistake("error-as-200", "an error went out with status 200: send the status of the error",
                _handle_wrong("error-as-200")),
        *inherit("ch20.validate_request", _compose_validate),
        *inherit("ch20.sse_frames", _compose_frames),
    ]))


# ========================================================================================
# parse_citations
# ========================================================================================
def _citations_expected(answer):
    body, sep, tail = answer.partition("\nSources:")
    table = {}
    for line in tail.splitlines():
        parts = line.strip().split(" ", 2)
        if (len(parts) == 3 and re.fullmatch(r"\[\d+\]", parts[0]) and re.fullmatch(r"ch\d\d", parts[1])
                and parts[2].startswith("§") and line.startswith("[")):
            table[int(parts[0][1:-1])] = {"chapter": parts[1], "section": parts[2][1:].strip()}
    order = []
    for m in re.finditer(r"\[(\d+)\]", body):
        n = int(m.group(1))
        if n in table and n not in order:
            order.append(n)
    return [{"n": n, **table[n]} for n in order]


CITATION_SPECS = [
    ("one citation", "Reciprocal-rank fusion [1]\n\nSources:\n[1] ch16 §Hybrid search: reciprocal-rank fusion"),
    ("two citations, the second cited first",
     "BM25 [2] and dense search [1] fail in opposite ways [2].\n\nSources:\n[1] ch16 §Sentence embeddings\n"
     "[2] ch16 §BM25: matching words"),
    ("numbers that are not 1, 2, ...",
     "See [3] and [5].\n\nSources:\n[3] ch18 §Speculative decoding\n[5] ch06 §The KV cache"),
    ("a marker without a source line is left out",
     "Yes [1], and [4].\n\nSources:\n[1] ch19 §Hallucination checks"),
    ("a source never cited is left out", "Only [2].\n\nSources:\n[1] ch02 §Bytes\n[2] ch13 §RoPE scaling"),
    ("no citation at all", "I do not know: no passage of the book answers this."),
    ("a section title with brackets and numbers",
     "Softmax [1].\n\nSources:\n[1] ch04 §Exercise 2 (**): masked softmax [causal]"),
]


def _citation_cases(hidden: bool):
    for name, text in CITATION_SPECS:
        yield Case(name, (text,), expected=lambda t=text: _citations_expected(t), compare=compare_citations)
    if hidden:
        for i in range(2):
            rng = random.Random(hidden_seed("ch20.parse_citations", i))
            ns = rng.sample(range(1, 9), 3)
            body = " ".join(f"{SENTENCES[rng.randrange(8)]} [{n}]" for n in ns + ns[:1])
            lines = "\n".join(f"[{n}] {SECTIONS[j][0]} §{SECTIONS[j][1]}"
                              for n, j in zip(sorted(ns), rng.sample(range(8), 3)))
            text = f"{body}\n\nSources:\n{lines}"
            yield Case(f"hidden case {i + 1}", (text,), expected=lambda t=text: _citations_expected(t),
                       compare=compare_citations)


def _citations_wrong(kind):
    def fn(answer):
        body, _, tail = answer.partition("\nSources:")
        rows = re.findall(r"^\[(\d+)\] (ch\d\d) §(.*)$", tail, re.M)
        if kind == "from-zero":     # the n-th marker read as the n-th line, counting from 0
            out, seen = [], []
            for n in map(int, re.findall(r"\[(\d+)\]", body)):
                if n not in seen and 0 <= n - 1 < len(rows):
                    seen.append(n)
                    out.append({"n": n, "chapter": rows[n - 1][1], "section": rows[n - 1][2].strip()})
            return out
        table = {int(n): (ch, sec.split(" ")[0] if kind == "first-word" else sec.strip())
                 for n, ch, sec in rows}
        text = answer if kind == "sources-counted" else body
        out = []
        for n in map(int, re.findall(r"\[(\d+)\]", text)):
            if n in table and (kind == "repeats-kept" or n not in [c["n"] for c in out]):
                out.append({"n": n, "chapter": table[n][0], "section": table[n][1]})
        return out
    return fn


register(Exercise(
    id="ch20.parse_citations", chapter=CH, title="Citations back out of an answer", points=1,
    name="parse_citations",
    signature="parse_citations(answer: str) -> list[dict]",
    reference="the stated format re-derived by splitting lines (no regular expression for the sources)",
    solution=f"{SOL}:parse_citations", cases=_citation_cases,
    mistakes=[
        Mistake("from-zero", "you looked marker [n] up as the n-th line of the sources: match it by its "
                "NUMBER (sources need not be numbered 1, 2, 3, ...)", _citations_wrong("from-zero")),
        Mistake("repeats-kept", "a source cited twice is listed twice: keep each number once, where it is "
                "first cited", _citations_wrong("repeats-kept")),
        Mistake("sources-counted", "you also counted the '[n]' at the start of the source lines as "
                "citations: markers are read in the text before 'Sources:' only",
                _citations_wrong("sources-counted")),
        Mistake("first-word", "the section title stops at its first space: it is everything after '§'",
                _citations_wrong("first-word")),
    ]))
