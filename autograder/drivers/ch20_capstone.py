"""Chapter 20 - what the checks need to run and judge a learner's code (public).

The exercises are pure functions of an HTTP app. ``run_frames`` calls the learner's
framing; ``run_handle`` drives the app and collects the bytes its body yields; ``run_two_streams`` opens two
streams before reading either and reads them in turn, as two concurrent clients would.
The comparisons read event streams strictly (``data: <json>\\n\\n``, nothing else, a last
``data: [DONE]\\n\\n``) and hand every JSON body and chunk to the ``openai`` package's own
types (``ChatCompletion``, ``ChatCompletionChunk``, ``Model``), the ones its client parses
responses with.
"""
from __future__ import annotations

import functools
import json
import re

from autograder.core import compare_equal


# --------------------------------------------------------------------------------------
# Prompt assembly
# --------------------------------------------------------------------------------------
def compare_prompt(expected, got) -> str | None:
    """The same prompt, character for character; says where the first difference is."""
    if not isinstance(got, str):
        return f"expected the prompt as a str, got {type(got).__name__}"
    if got == expected:
        return None
    e_lines, g_lines = expected.split("\n"), got.split("\n")
    for i, (e, g) in enumerate(zip(e_lines, g_lines)):
        if e != g:
            return (f"line {i + 1} differs: expected {e[:70]!r}, got {g[:70]!r} "
                    f"(prompt of {len(expected)} characters expected, yours has {len(got)})")
    return (f"expected {len(e_lines)} lines ({len(expected)} characters), got {len(g_lines)} "
            f"lines ({len(got)} characters)")


# --------------------------------------------------------------------------------------
# Server-sent events
# --------------------------------------------------------------------------------------
def _collect(chunks) -> bytes:
    out = []
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, (bytes, bytearray)):
            raise TypeError(f"item {i} of your stream is a {type(chunk).__name__}: yield bytes "
                            "(encode the text as UTF-8)")
        out.append(bytes(chunk))
    return b"".join(out)


def run_frames(fn, deltas, completion_id, model, created, finish_reason, first, last):
    """The bytes of ``fn(deltas, ..., first=first, last=last)``."""
    out = fn(list(deltas), completion_id, model, created, finish_reason, first=first, last=last)
    if not isinstance(out, (bytes, bytearray)):
        raise TypeError(f"sse_frames returned a {type(out).__name__}: return bytes (the events "
                        "joined, encoded as UTF-8)")
    return bytes(out)


def split_events(raw: bytes) -> tuple[list[str], str | None]:
    """The payloads of an event stream, read strictly: ``(payloads, problem)``."""
    if not isinstance(raw, (bytes, bytearray)):
        return [], f"expected bytes, got {type(raw).__name__}"
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return [], "the stream is not UTF-8"
    if not text:
        return [], None
    if not text.endswith("\n\n"):
        return [], "the stream does not end with a blank line: every event ends with \"\\n\\n\""
    payloads = []
    for i, block in enumerate(text[:-2].split("\n\n")):
        if "\n" in block:
            return [], (f"event {i + 1} spans several lines ({block[:60]!r}): each event is ONE "
                        "line 'data: ...' followed by a blank line")
        if not block.startswith("data: "):
            return [], f"event {i + 1} does not start with 'data: ': {block[:60]!r}"
        payloads.append(block[len("data: "):])
    return payloads, None


@functools.lru_cache(maxsize=1)
def _openai_types():
    from openai.types import Model
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    return ChatCompletion, ChatCompletionChunk, Model


def openai_parses(kind: str, obj) -> str | None:
    """None when the openai package's own type accepts ``obj``, else its complaint."""
    completion, chunk, model = _openai_types()
    cls = {"chunk": chunk, "completion": completion, "model": model}[kind]
    try:
        cls.model_validate(obj)
    except Exception as exc:  # pydantic.ValidationError
        first = str(exc).split("\n")[1:3]
        return f"the openai client cannot read it as {cls.__name__}: {' '.join(first)}"
    return None


def _loose(raw, fixed_ids: bool):
    """A stream as (payload, separator) pairs, JSON parsed, ids dropped unless fixed."""
    if not isinstance(raw, (bytes, bytearray)):
        return None
    out = []
    for payload, sep in re.findall(r"data: ?(.*?)(\r?\n\r?\n?|$)", bytes(raw).decode("utf-8", "replace")):
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = payload
        if isinstance(obj, dict) and not fixed_ids:
            obj = {k: v for k, v in obj.items() if k not in ("id", "created")}
        out.append((json.dumps(obj, sort_keys=True), sep))
    return out


def compare_events(expected: bytes, got: bytes, fixed_ids: bool = True) -> str | None:
    """Two event streams: framing read strictly, then the chunks compared as JSON."""
    if isinstance(got, (bytes, bytearray)) and bytes(got) == bytes(expected):
        return None
    e_payloads, e_problem = split_events(expected)
    if e_problem:   # ``expected`` is a wrong stream (a mistake's): compare loosely
        same = _loose(expected, fixed_ids) == _loose(got, fixed_ids)
        return None if same else "a different stream"
    g_payloads, problem = split_events(got)
    if problem:
        return problem
    closed = bool(e_payloads) and e_payloads[-1] == "[DONE]"
    if not closed:   # a part of a stream: no [DONE] expected
        if "[DONE]" in g_payloads:
            return "'data: [DONE]' is sent only at the end (last=True)"
        e_payloads, g_payloads = e_payloads + ["[DONE]"], g_payloads + ["[DONE]"]
    if not g_payloads or g_payloads[-1] != "[DONE]":
        last = g_payloads[-1][:60] if g_payloads else ""
        return f"the last event must be exactly 'data: [DONE]' (not JSON), got 'data: {last}'"
    if "[DONE]" in g_payloads[:-1]:
        return "'data: [DONE]' comes before the end of the stream"
    e_chunks = [json.loads(p) for p in e_payloads[:-1]]
    g_chunks = []
    for i, p in enumerate(g_payloads[:-1]):
        try:
            g_chunks.append(json.loads(p))
        except ValueError:
            return f"event {i + 1} is not JSON: {p[:60]!r}"
        problem = openai_parses("chunk", g_chunks[-1])
        if problem:
            return f"event {i + 1}: {problem}"
    if not fixed_ids and g_chunks:
        ids = {c.get("id") for c in g_chunks}
        created = {c.get("created") for c in g_chunks}
        if len(ids) != 1 or not str(next(iter(ids))).startswith("chatcmpl-"):
            return f"every chunk of a stream carries the same id 'chatcmpl-...', got {sorted(map(str, ids))[:3]}"
        if len(created) != 1 or not isinstance(next(iter(created)), int):
            return "every chunk of a stream carries the same integer 'created'"
        for c in g_chunks:
            c["id"], c["created"] = e_chunks[0]["id"], e_chunks[0]["created"]
    if len(g_chunks) != len(e_chunks):
        return (f"expected {len(e_chunks)} chunks before [DONE] (a role chunk, one per piece, a "
                f"finishing chunk), got {len(g_chunks)}")
    for i, (e, g) in enumerate(zip(e_chunks, g_chunks)):
        if e != g:
            ec, gc = e.get("choices", [{}])[0], (g.get("choices") or [{}])[0]
            if ec != gc:
                return f"chunk {i + 1}: expected choices[0] = {json.dumps(ec)[:90]}, got {json.dumps(gc)[:90]}"
            keys = sorted(k for k in set(e) | set(g) if e.get(k) != g.get(k))
            return f"chunk {i + 1}: field(s) {keys} differ: expected {json.dumps({k: e.get(k) for k in keys})[:90]}"
    return None


def compare_stream(expected, got) -> str | None:
    """The exact stream: same events, framed as OpenAI frames them."""
    return compare_events(expected, got)


# --------------------------------------------------------------------------------------
# Validation and errors
# --------------------------------------------------------------------------------------
def _error_problem(expected: dict, got) -> str | None:
    if not isinstance(got, dict) or set(got) != {"error"} or not isinstance(got["error"], dict):
        return 'an error body is {"error": {"message", "type", "param", "code"}}'
    e, g = expected["error"], got["error"]
    if set(g) != {"message", "type", "param", "code"}:
        return f'the error object has the keys {sorted(g)}; OpenAI\'s has message, type, param, code'
    if not isinstance(g["message"], str) or not g["message"]:
        return "the error needs a message (a non-empty string) saying what is wrong"
    for key in ("type", "param", "code"):
        if g[key] != e[key]:
            return f"error {key}: expected {e[key]!r}, got {g[key]!r}"
    return None


def compare_validation(expected, got) -> str | None:
    """``(status, payload)``: the status; for an error its type, param and code (any
    message); else the normalised request."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a pair (status, payload), got {type(got).__name__}"
    e_status, e_payload = expected
    g_status, g_payload = got
    if g_status != e_status:
        what = e_payload["error"]["code"] if "error" in e_payload else "a valid request"
        return f"status {g_status!r}, expected {e_status} ({what})"
    if "error" in e_payload:
        return _error_problem(e_payload, g_payload)
    return compare_equal(e_payload, g_payload)


# --------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------
def scripted_answer(answers: dict, messages: list) -> tuple:
    """A stand-in for the pipeline: the answer to the last user message, word by word."""
    question = [m["content"] for m in messages if m.get("role") == "user"][-1]
    text, finish = answers.get(question, ["I do not know.", "stop"])
    return iter(re.findall(r"\s*\S+", text)), finish


def _response(result) -> dict:
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise TypeError(f"handle must return (status, headers, body_chunks), got {type(result).__name__}")
    status, headers, chunks = result
    if not isinstance(headers, dict):
        raise TypeError(f"the response headers must be a dict, got {type(headers).__name__}")
    return {"status": status, "headers": {str(k).lower(): str(v) for k, v in headers.items()},
            "body": chunks}


def run_handle(fn, method, path, headers, body, answers, page):
    """One request through ``handle``: ``{"status", "headers", "body": bytes}``."""
    answer = functools.partial(scripted_answer, answers)
    r = _response(fn(method, path, dict(headers), body, answer, page))
    r["body"] = _collect(r["body"])
    return r


def run_two_streams(fn, body_a, body_b, answers, page):
    """Two streaming requests opened one after the other, then read in turn, one chunk
    of each at a time (two clients whose streams overlap): ``[response_a, response_b]``."""
    answer = functools.partial(scripted_answer, answers)
    head = {"content-type": "application/json"}
    opened = []
    for body in (body_a, body_b):
        r = _response(fn("POST", "/v1/chat/completions", {**head, "content-length": str(len(body))},
                         body, answer, page))
        r["iter"], r["parts"] = iter(r["body"]), []
        opened.append(r)
    live = [True, True]
    while any(live):
        for i, r in enumerate(opened):
            if live[i]:
                try:
                    chunk = next(r["iter"])
                except StopIteration:
                    live[i] = False
                    continue
                if not isinstance(chunk, (bytes, bytearray)):
                    raise TypeError("yield bytes from the stream")
                r["parts"].append(bytes(chunk))
    return [{"status": r["status"], "headers": r["headers"], "body": b"".join(r["parts"])}
            for r in opened]


def _media(headers: dict) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def compare_response(expected, got) -> str | None:
    """One response: status, content type, then the body by its kind (an error, a chat
    completion, the list of models, an event stream, the page)."""
    if not isinstance(got, dict) or not {"status", "headers", "body"} <= set(got):
        return "expected a response"
    if got["status"] != expected["status"]:
        return f"status {got['status']!r}, expected {expected['status']}"
    e_type, g_type = _media(expected["headers"]), _media(got["headers"])
    if g_type != e_type:
        return f"content-type {g_type or '(none)'!r}, expected {e_type!r}"
    for key in ("allow", "cache-control"):
        if key in expected["headers"] and got["headers"].get(key) != expected["headers"][key]:
            return f"header {key!r}: expected {expected['headers'][key]!r}, got {got['headers'].get(key)!r}"
    if e_type == "text/event-stream":
        return compare_events(expected["body"], got["body"], fixed_ids=False)
    if e_type != "application/json":
        return None if got["body"] == expected["body"] else "the page is not the one given"
    e = json.loads(expected["body"])
    try:
        g = json.loads(got["body"])
    except ValueError:
        return f"the body is not JSON: {got['body'][:60]!r}"
    if "error" in e:
        return _error_problem(e, g)
    if e.get("object") == "list":
        for item in g.get("data", []) if isinstance(g, dict) else []:
            problem = openai_parses("model", item)
            if problem:
                return problem
        return compare_equal(e, g)
    problem = openai_parses("completion", g)
    if problem:
        return problem
    if not str(g.get("id", "")).startswith("chatcmpl-") or not isinstance(g.get("created"), int):
        return "a chat completion has an id 'chatcmpl-...' and an integer 'created'"
    g = {**g, "id": e["id"], "created": e["created"]}
    g.pop("usage", None)
    g.pop("system_fingerprint", None)
    return compare_equal(e, g)


def compare_two(expected, got) -> str | None:
    """Two overlapping streams: each equal to its own answer, with different ids."""
    if not isinstance(got, list) or len(got) != 2:
        return "expected two responses"
    for name, e, g in zip(("first", "second"), expected, got):
        problem = compare_response(e, g)
        if problem:
            return f"the {name} of two overlapping streams: {problem}"
    ids = [split_events(g["body"])[0][0] for g in got]
    if json.loads(ids[0])["id"] == json.loads(ids[1])["id"]:
        return "two requests got the same completion id: make a fresh one per request"
    return None


# --------------------------------------------------------------------------------------
# Citations
# --------------------------------------------------------------------------------------
def compare_citations(expected, got) -> str | None:
    """The same list of ``{"n", "chapter", "section"}``, in the same order."""
    if not isinstance(got, list):
        return f"expected a list of dicts, got {type(got).__name__}"
    if [c.get("n") if isinstance(c, dict) else c for c in got] != [c["n"] for c in expected]:
        return (f"cited numbers {[c.get('n') if isinstance(c, dict) else c for c in got]}, "
                f"expected {[c['n'] for c in expected]}")
    return compare_equal(expected, got)


__all__ = ["compare_prompt", "run_frames", "split_events", "openai_parses", "compare_events",
           "compare_stream", "compare_validation", "scripted_answer", "run_handle", "run_two_streams",
           "compare_response", "compare_two", "compare_citations"]
