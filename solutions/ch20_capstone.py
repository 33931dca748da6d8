"""Chapter 20 - LLM systems: the capstone.

Reference solutions. The docstrings of the exercise functions are the specification the
learner reads; their bodies are the reference solution. The rest is PROVIDED: the book
as a document store (its chapters cut into sections and chunks), the hybrid index built
on chapter 16's parts, an extractive reader, the safety layer of chapter 19, the
pipeline, the HTTP server that wraps ``handle``, the chat page, and the question set.
"""

from __future__ import annotations

import difflib
import json
import random
import re
import threading
import time
import uuid
from pathlib import Path

import torch
from tqdm.auto import tqdm

from solutions.ch16_rag import (
    BM25,
    dense_search,
    embed_texts,
    load_minilm,
    reciprocal_rank_fusion,
    recursive_split,
    support_score,
    tokenize,
)
from solutions.ch19_evaluation import output_filter, rule_filter, squad_scores

# --------------------------------------------------------------------------------------
# Provided: the book as a document store
# --------------------------------------------------------------------------------------
CHAPTER_FILE = re.compile(r"^ch(\d\d)_[a-z0-9_]+\.(md|ipynb)$")


def _course_roots() -> list[Path]:
    """Where the course's files may be: beside the ``solutions`` package Python imports,
    the folder the course was installed from (``pip install -e``), the working directory
    and the folders above it."""
    import importlib.metadata
    import importlib.util

    roots = []
    spec = importlib.util.find_spec("solutions")
    for p in (spec.submodule_search_locations or []) if spec else []:
        roots.append(Path(p).resolve().parent)
    try:
        dist = importlib.metadata.distribution("build-an-llm-course")
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        if url.startswith("file://"):
            roots.append(Path(url[len("file://") :]))
    except (importlib.metadata.PackageNotFoundError, ValueError):
        pass
    return roots + [Path.cwd(), *Path.cwd().parents]


def _notebook_markdown(path: Path) -> str:
    """The Markdown cells of a chapter notebook, joined: its prose without its code."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join(
        "".join(c["source"]) for c in cells if c["cell_type"] == "markdown"
    )


def book_sources(before: int = 20) -> tuple[str, dict[str, str]]:
    """The Markdown of every chapter numbered below ``before``: ``(where, {"ch16":
    text})``.

    First choice: the chapter sources ``content/chNN_*.md`` of the course (the
    repository, or the copy it was installed from). Else the chapter notebooks
    ``chNN_*.ipynb`` found in the working directory, the folder above it or that
    folder's sub-folders (a learner's downloaded notebooks, or the folders of an
    nbgrader release): their Markdown cells hold the same prose.
    """
    for root in _course_roots():
        found = sorted((root / "content").glob("ch[0-9][0-9]_*.md"))
        found = [p for p in found if int(p.name[2:4]) < before]
        if found:
            return str(root / "content"), {
                p.name[:4]: p.read_text(encoding="utf-8") for p in found
            }
    here = Path.cwd()
    notebooks = {}
    for folder in [here, here.parent, *sorted(here.parent.glob("*/"))]:
        for p in sorted(folder.glob("ch[0-9][0-9]_*.ipynb")):
            if CHAPTER_FILE.match(p.name) and int(p.name[2:4]) < before:
                notebooks.setdefault(p.name[:4], p)
    if notebooks:
        where = ", ".join(sorted({str(p.parent) for p in notebooks.values()}))
        return where, {ch: _notebook_markdown(p) for ch, p in sorted(notebooks.items())}
    raise FileNotFoundError(
        "the book's chapters were not found: neither content/chNN_*.md beside the"
        " course's code nor chapter notebooks chNN_*.ipynb here or beside this folder."
        " Install the course from its repository (pip install -e) or put the chapter"
        " notebooks here."
    )


def anchor(title: str) -> str:
    """The HTML id the book gives a heading, the way docutils makes it: lower case,
    accents dropped, every run of other characters a hyphen, no digit or hyphen at the
    start ("16. Hybrid search: RRF" -> "hybrid-search-rrf")."""
    import unicodedata

    slug = unicodedata.normalize("NFKD", title.lower())
    slug = slug.encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(slug.split()))
    return re.sub(r"^[-0-9]+|-+$", "", slug)


def clean_markdown(text: str) -> str:
    """Prose for retrieval: no HTML tags, emphasis, template fields or link targets."""
    text = re.sub(r"\{\{[^}]*\}\}", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)  # [words](link) -> words
    text = re.sub(r"\*\*|__", "", text)
    text = re.sub(r"(?<![\w*$])\*(?=\S)([^*\n]+?)\*(?![\w*])", r"\1", text)
    return text


def sections(markdown: str) -> list[dict]:
    """Cut a chapter's Markdown into sections at its headings (``#`` to ``####``).

    Fenced blocks (code cells, exercise and provided blocks) and the front matter are
    left out: the store holds the prose. Returns ``{"title", "anchor", "text"}`` for
    each section with text, in order; the text before the first ``##`` belongs to the
    chapter's title.
    """
    out, title, lines, fence = [], None, [], None
    body = re.sub(r"\A---\n.*?\n---\n", "", markdown, flags=re.S)
    for line in body.split("\n"):
        stripped = line.strip()
        if fence:
            if stripped.startswith(fence):
                fence = None
            continue
        m = re.match(r"^(`{3,}|~{3,})", stripped)
        if m:
            fence = m.group(1)
            continue
        h = re.match(r"^#{1,4}\s+(.*)$", line)
        if h:
            if title is not None and "".join(lines).strip():
                out.append(
                    {
                        "title": title,
                        "anchor": anchor(title),
                        "text": clean_markdown("\n".join(lines)).strip(),
                    }
                )
            title, lines = h.group(1).strip(), []
            continue
        lines.append(line)
    if title is not None and "".join(lines).strip():
        out.append(
            {
                "title": title,
                "anchor": anchor(title),
                "text": clean_markdown("\n".join(lines)).strip(),
            }
        )
    return out


def chunk_book(
    chapters: dict[str, str], split, chunk_size: int = 600, chunk_overlap: int = 100
) -> list[dict]:
    """Every section of every chapter, cut by ``split`` (chapter 16's recursive
    splitter).

    A chunk never crosses a section boundary, so it can cite its section:
    ``{"id", "chapter", "section", "anchor", "text"}``.
    """
    chunks = []
    for ch, markdown in chapters.items():
        for sec in sections(markdown):
            title = re.sub(r"^\d+\.\s+", "", sec["title"])  # "16. RAG" -> "RAG"
            for piece in split(
                sec["text"], ["\n\n", "\n", " ", ""], chunk_size, chunk_overlap
            ):
                if len(piece.split()) >= 5:
                    chunks.append(
                        {
                            "id": len(chunks),
                            "chapter": ch,
                            "section": title,
                            "anchor": sec["anchor"],
                            "text": piece,
                        }
                    )
    return chunks


def cite(passage: dict) -> str:
    """How an answer names a passage's source: "ch16 §Hybrid search"."""
    return f"{passage['chapter']} §{passage['section']}"


# --------------------------------------------------------------------------------------
# Exercise: prompt assembly with numbered citations under a budget
# --------------------------------------------------------------------------------------
INSTRUCTION = (
    "Answer the question from the numbered passages of the book. Cite each "
    "passage you use as [n]. If they do not hold the answer, say so."
)


def assemble_prompt(question: str, passages: list[dict], budget: int) -> str:
    """The prompt for ``question`` with as many of the best passages as fit in
    ``budget``.

    passages: dicts with "chapter", "section" and "text", best ranked first. The prompt
    is these lines joined with "\\n": ``INSTRUCTION``, an empty line, then for each kept
    passage, numbered i = 1, 2, ... in rank order, the line ``f"[{i}] {chapter}
    §{section}"``, the passage's text (whole) and an empty line, and last ``f"Question:
    {question}"`` and ``"Answer:"``. Keep the largest number n such that the prompt
    holding passages[:n] has at most ``budget`` characters: drop passages from the
    LOWEST-ranked end, never cut one, never skip one to keep a lower-ranked one. If not
    even the question fits, return the prompt with no passage. Returns the prompt (str).
    """

    def prompt(kept):
        lines = [INSTRUCTION, ""]
        for i, p in enumerate(kept, start=1):
            lines += [f"[{i}] {p['chapter']} §{p['section']}", p["text"], ""]
        return "\n".join(lines + [f"Question: {question}", "Answer:"])

    n = len(passages)
    while n > 0 and len(prompt(passages[:n])) > budget:
        n -= 1
    return prompt(passages[:n])


# --------------------------------------------------------------------------------------
# Exercise: server-sent events, framed as OpenAI frames them
# --------------------------------------------------------------------------------------
def sse_frames(
    deltas: list[str],
    completion_id: str,
    model: str,
    created: int,
    finish_reason: str = "stop",
    first: bool = True,
    last: bool = True,
) -> bytes:
    """Frame an answer's pieces as OpenAI's streaming chat completion: bytes to send.

    Each event is ``b"data: " + json + b"\\n\\n"`` (one line of JSON, then a blank
    line), where the JSON is a ``chat.completion.chunk``::

        {"id": completion_id, "object": "chat.completion.chunk", "created": created,
         "model": model, "choices": [{"index": 0, "delta": DELTA, "finish_reason": FR}]}

    With ``first``, the first event has DELTA ``{"role": "assistant", "content": ""}``;
    then one event per non-empty piece with DELTA ``{"content": piece}``; with ``last``,
    one more with DELTA ``{}`` and FR ``finish_reason`` (FR is ``None`` in all the
    others), and the line ``b"data: [DONE]\\n\\n"``, which is not JSON. A whole answer
    is ``sse_frames(pieces, ...)``; a server that streams frames the opening with
    ``last=False``, each piece as it arrives with ``first=False, last=False`` and the
    end with ``first=False``: the concatenation is the same bytes.
    """

    def event(delta, finish):
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n"

    events = [event({"role": "assistant", "content": ""}, None)] if first else []
    events += [event({"content": piece}, None) for piece in deltas if piece]
    if last:
        events += [event({}, finish_reason), b"data: [DONE]\n\n"]
    return b"".join(events)


# --------------------------------------------------------------------------------------
# Exercise: request validation, answered with OpenAI-style errors
# --------------------------------------------------------------------------------------
ROLES = ("system", "developer", "user", "assistant")


def api_error(
    status: int,
    message: str,
    param: str | None,
    code: str | None,
    kind: str = "invalid_request_error",
) -> tuple[int, dict]:
    """``(status, {"error": {"message", "type", "param", "code"}})``: OpenAI's
    errors."""
    return status, {
        "error": {"message": message, "type": kind, "param": param, "code": code}
    }


def validate_request(body: bytes, models: list[str]) -> tuple[int, dict]:
    """Check a chat-completion request body; return ``(status, payload)``.

    Errors are ``(status, {"error": {"message": str, "type": "invalid_request_error",
    "param": str | None, "code": str}})`` (``api_error`` builds them); the first rule
    that fails decides:

    1. ``body`` is not UTF-8 JSON, or not a JSON object: 400, param None,
       code "invalid_json".
    2. "model", then "messages", absent: 400, param that name, code
       "missing_required_parameter".
    3. Wrong types, checked in this order: "model" not a string; "messages" not a list;
       "stream" present and not a boolean (true/false, not "true" nor 1); "max_tokens"
       present, not null and not an int >= 1 (a boolean is not an int here): 400, param
       that name, code "invalid_type".
    4. "messages" empty, or one of them not an object with "role" in ``ROLES`` and a
       string "content", or no message with role "user": 400, param "messages", code
       "invalid_value".
    5. "model" not in ``models``: 404, param "model", code "model_not_found".

    Otherwise ``(200, {"model": str, "messages": list, "stream": bool,
    "max_tokens": int | None})`` (stream False and max_tokens None when absent).
    """
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        request = None
    if not isinstance(request, dict):
        return api_error(
            400, "The body of the request is not a JSON object.", None, "invalid_json"
        )
    for name in ("model", "messages"):
        if name not in request:
            return api_error(
                400,
                f"Missing required parameter: '{name}'.",
                name,
                "missing_required_parameter",
            )
    max_tokens = request.get("max_tokens")
    wrong = [
        ("model", not isinstance(request["model"], str), "a string"),
        ("messages", not isinstance(request["messages"], list), "an array"),
        (
            "stream",
            "stream" in request and not isinstance(request["stream"], bool),
            "a boolean",
        ),
        (
            "max_tokens",
            max_tokens is not None
            and (
                isinstance(max_tokens, bool)
                or not isinstance(max_tokens, int)
                or max_tokens < 1
            ),
            "an integer >= 1",
        ),
    ]
    for name, bad, expected in wrong:
        if bad:
            return api_error(
                400,
                f"Invalid type for '{name}': expected {expected}.",
                name,
                "invalid_type",
            )
    messages = request["messages"]
    ok = (
        messages
        and all(
            isinstance(m, dict)
            and m.get("role") in ROLES
            and isinstance(m.get("content"), str)
            for m in messages
        )
        and any(m["role"] == "user" for m in messages)
    )
    if not ok:
        return api_error(
            400,
            "'messages' must be a non-empty list of {role, content} "
            "objects with at least one user message.",
            "messages",
            "invalid_value",
        )
    if request["model"] not in models:
        return api_error(
            404,
            f"The model '{request['model']}' does not exist.",
            "model",
            "model_not_found",
        )
    return 200, {
        "model": request["model"],
        "messages": messages,
        "stream": request.get("stream", False),
        "max_tokens": max_tokens,
    }


# --------------------------------------------------------------------------------------
# Exercise: the whole app as a pure function
# --------------------------------------------------------------------------------------
MAX_BODY = 1_000_000  # bytes; a larger request is refused with 413 before it is read
MODEL_ID = "book-rag"
MODEL_CREATED = 1_790_000_000


def json_response(status: int, payload: dict, extra: dict | None = None):
    """``(status, headers, [body])`` for a JSON payload."""
    headers = {"content-type": "application/json", **(extra or {})}
    return status, headers, [json.dumps(payload).encode("utf-8")]


def handle(method: str, path: str, headers: dict, body: bytes, answer, page: str):
    """The app: one HTTP request in, ``(status, headers, body_chunks)`` out.

    headers: the request's headers, names in lower case; body: its bytes (empty when
    the server refused to read a body over ``MAX_BODY``). ``answer(messages)`` returns
    ``(pieces, finish_reason)``: the answer's pieces (an iterable of str) and why it
    stopped. Response headers are a dict with lower-case names; body_chunks an iterable
    of bytes, sent in order. Routes:

    - ``GET /``: 200, "text/html; charset=utf-8", the ``page``.
    - ``GET /v1/models``: 200, JSON ``{"object": "list", "data": [{"id": MODEL_ID,
      "object": "model", "created": MODEL_CREATED, "owned_by": "course"}]}``.
    - ``POST /v1/chat/completions``: if the "content-length" header is over
      ``MAX_BODY``, 413 (``api_error``, param None, code "request_too_large"); else
      ``validate_request(body, [MODEL_ID])``, and its error as JSON if any. Then
      ``answer(messages)``. With ``stream`` true: 200, "text/event-stream", headers
      also "cache-control": "no-cache", and the body a generator that yields the
      opening frame, then each piece framed as ``answer`` produces it, then the end
      (``sse_frames``; nothing may be shared between two requests). Without: 200, JSON
      ``{"id", "object": "chat.completion", "created", "model", "choices": [{"index": 0,
      "message": {"role": "assistant", "content": the joined pieces},
      "finish_reason": finish_reason}]}``. The id is "chatcmpl-" and a fresh random hex
      string per request; created is ``int(time.time())``.
    - A known path with another method: 405, header "allow" (the method it takes),
      code "method_not_allowed"; any other path: 404, code "unknown_url" (param None).

    JSON bodies are sent with "content-type": "application/json".
    """
    routes = {"/": "GET", "/v1/models": "GET", "/v1/chat/completions": "POST"}
    if path not in routes:
        return json_response(
            *api_error(404, f"Unknown URL: {method} {path}", None, "unknown_url")
        )
    if method != routes[path]:
        return json_response(
            *api_error(
                405, f"{method} is not allowed on {path}.", None, "method_not_allowed"
            ),
            {"allow": routes[path]},
        )
    if path == "/":
        return 200, {"content-type": "text/html; charset=utf-8"}, [page.encode("utf-8")]
    if path == "/v1/models":
        return json_response(
            200,
            {
                "object": "list",
                "data": [
                    {
                        "id": MODEL_ID,
                        "object": "model",
                        "created": MODEL_CREATED,
                        "owned_by": "course",
                    }
                ],
            },
        )
    if int(headers.get("content-length") or 0) > MAX_BODY:
        return json_response(
            *api_error(
                413, f"The body is over {MAX_BODY} bytes.", None, "request_too_large"
            )
        )
    status, request = validate_request(body, [MODEL_ID])
    if status != 200:
        return json_response(status, request)
    pieces, finish = answer(request["messages"])
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if request["stream"]:

        def events(model=request["model"]):  # a new generator for every request
            yield sse_frames([], cid, model, created, finish, last=False)
            for piece in pieces:  # framed as the answer produces them
                if piece:
                    yield sse_frames(
                        [piece], cid, model, created, finish, first=False, last=False
                    )
            yield sse_frames([], cid, model, created, finish, first=False)

        return (
            200,
            {"content-type": "text/event-stream", "cache-control": "no-cache"},
            events(),
        )
    return json_response(
        200,
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": request["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces)},
                    "finish_reason": finish,
                }
            ],
        },
    )


# --------------------------------------------------------------------------------------
# Exercise: citations back out of an answer
# --------------------------------------------------------------------------------------
def parse_citations(answer: str) -> list[dict]:
    """The sources an answer cites, in the order it first cites them.

    An answer is its text, then optionally a line "Sources:" followed by one line per
    source, ``"[n] chNN §Section title"``. In the text (everything before "Sources:"), a
    marker is ``[n]`` with n a positive integer. Return one ``{"n": n, "chapter":
    "chNN", "section": title}`` per DISTINCT marker of the text, in order of first
    appearance, taking chapter and section from the source line with the same n (the
    section title is everything after "§", stripped). A marker with no source line is
    left out; so is a source line that the text never cites.
    """
    text, _, listing = answer.partition("\nSources:")
    sources = {}
    for line in listing.split("\n"):
        m = re.match(r"^\s*\[(\d+)\]\s+(ch\d\d)\s+§(.*)$", line)
        if m:
            sources[int(m.group(1))] = (m.group(2), m.group(3).strip())
    out, seen = [], set()
    for n in (int(x) for x in re.findall(r"\[(\d+)\]", text)):
        if n in sources and n not in seen:
            seen.add(n)
            out.append({"n": n, "chapter": sources[n][0], "section": sources[n][1]})
    return out


# --------------------------------------------------------------------------------------
# Provided: the hybrid index and the reader
# --------------------------------------------------------------------------------------
class BookIndex:
    """BM25 and MiniLM vectors over the chunks, fused by reciprocal rank (ch. 16)."""

    def __init__(self, chunks: list[dict], embed, parts: dict, depth: int = 50):
        self.chunks, self.embed, self.parts, self.depth = chunks, embed, parts, depth
        self.bm25 = parts["BM25"]([tokenize(c["text"]) for c in chunks])
        self.vectors = embed([c["text"] for c in chunks])
        self.queries: dict[str, torch.Tensor] = {}

    def prepare(self, questions: list[str], block: int = 256):
        """Embed many questions ahead, in large batches (faster than one by one)."""
        new = [q for q in dict.fromkeys(questions) if q not in self.queries]
        for i in range(0, len(new), block):
            self.queries.update(zip(new[i : i + block], self.embed(new[i : i + block])))

    def query_vector(self, question: str) -> torch.Tensor:
        vector = self.queries.get(question)
        return self.embed([question])[0] if vector is None else vector

    def search(self, question: str, k: int, mode: str = "hybrid") -> list[dict]:
        """The k best chunks for a question: "hybrid", "bm25" or "dense"."""
        depth = min(self.depth, len(self.chunks))
        scores = torch.as_tensor(self.bm25.get_scores(tokenize(question)))
        lexical = scores.topk(depth)
        dense = self.parts["dense_search"](
            self.query_vector(question)[None], self.vectors, depth
        )
        dense = (dense[0][0], dense[1][0])
        if mode == "bm25":
            ids = lexical[1]
        elif mode == "dense":
            ids = dense[1]
        else:
            ids = self.parts["reciprocal_rank_fusion"]([lexical, dense])[1]
        return [self.chunks[i] for i in ids[:k].tolist()]


BLANK = "____"
NO_ANSWER = "I do not know: no passage of the book answers this."


def sentences_of(text: str) -> list[str]:
    """The sentences of a passage (a full stop, ! or ? and a space end one)."""
    flat = re.sub(r"\s+", " ", text).strip()
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z(\"'$])", flat) if s]


def complete(sentence: str) -> bool:
    """A whole sentence, not the cut end of one at a chunk's edge: it opens with a
    capital, a digit, a quote, a bracket or code, and ends with a full stop, ! or ?."""
    return bool(re.match(r"^[A-Z0-9\"'(`$*]", sentence)) and sentence.endswith(
        (".", "!", "?")
    )


def _words(text: str) -> list[tuple[str, int, int]]:
    return [
        (m.group().lower(), m.start(), m.end())
        for m in re.finditer(r"[\w'’\-]+|[^\w\s]", text)
    ]


def fill_blank(question: str, sentence: str) -> str | None:
    """The words of ``sentence`` that stand where the question has its blank."""
    q = _words(question.replace(BLANK, " QQBLANKQQ "))
    s = _words(sentence)
    at = [w for w, _, _ in q].index("qqblankqq")
    matcher = difflib.SequenceMatcher(
        None, [w for w, _, _ in q], [w for w, _, _ in s], autojunk=False
    )
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "replace" and i1 <= at < i2 and j2 > j1:
            span = sentence[s[j1][1] : s[j2 - 1][2]].strip(" ,;:")
            return span or None
    return None


class Reader:
    """An extractive reader on MiniLM: the answer is read out of a passage, never made
    up.

    It embeds the question and every sentence of the passages and takes the sentence
    closest in meaning (cosine). A fill-in-the-blank question ("... ____ ...") is
    answered with the words of that sentence that stand in the blank; any other with the
    sentence itself. The answer cites its passage: "reciprocal-rank fusion [2]". Without
    passages it can only say it does not know. Sentence vectors are cached
    (thread-safe).
    """

    def __init__(self, embed):
        self.embed, self.cache, self.lock = embed, {}, threading.Lock()

    def vectors(self, texts: list[str]) -> torch.Tensor:
        with self.lock:
            new = [t for t in dict.fromkeys(texts) if t not in self.cache]
            if new:
                for t, v in zip(new, self.embed(new)):
                    self.cache[t] = v
            return torch.stack([self.cache[t] for t in texts])

    def prepare(
        self, questions: list[str], passage_lists: list[list[dict]], block: int = 512
    ):
        """Embed questions and their passages' sentences ahead, in large batches."""
        texts = [q.replace(BLANK, " ").strip() for q in questions]
        texts += [
            s
            for passages in passage_lists
            for p in passages
            for s in sentences_of(p["text"])
        ]
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for i in range(0, len(new), block):
            self.vectors(new[i : i + block])

    def candidates(
        self, question: str, passages: list[dict], top: int = 5
    ) -> list[tuple[str, int]]:
        """The ``top`` best answers ``(words, passage number)``, best first."""
        found = [
            (i, s)
            for i, p in enumerate(passages, start=1)
            for s in sentences_of(p["text"])
        ]
        found = [(i, s) for i, s in found if complete(s)] or found
        if not found:
            return []
        q = self.vectors([question.replace(BLANK, " ").strip()])[0]
        scores = self.vectors([s for _, s in found]) @ q
        out = []
        for j in scores.argsort(descending=True).tolist():
            i, sentence = found[j]
            span = fill_blank(question, sentence) if BLANK in question else sentence
            if span:
                out.append((span, i))
            if len(out) == top:
                break
        return out

    def answer(self, question: str, passages: list[dict]) -> tuple[str, int | None]:
        """``(answer, n)``: the answer's words and the number of the cited passage."""
        found = self.candidates(question, passages, top=1)
        return found[0] if found else (NO_ANSWER, None)


# --------------------------------------------------------------------------------------
# Provided: the pipeline
# --------------------------------------------------------------------------------------
REFUSAL = "I can't help with that. I answer questions about this book."


def wrap(text: str, width: int = 88, indent: str = "") -> str:
    """``text`` folded at ``width`` characters for printing: the lines of a paragraph
    are joined and refilled; citation headers, formulas, "Sources:" and the question
    keep lines of their own."""
    import textwrap

    hard = ("[", "$$", "Sources:", "Question:", "Answer:", "->")
    out, para = [], []

    def flush():
        if para:
            out.append(textwrap.fill(" ".join(para), width, initial_indent=indent,
                                     subsequent_indent=indent))
            para.clear()

    for line in text.split("\n"):
        if not line.strip():
            flush()
            out.append("")
        elif line.lstrip().startswith(hard):
            flush()
            para.append(line.strip())
            flush()
        else:
            para.append(line.strip())
    flush()
    return "\n".join(out)


def pieces_of(text: str) -> list[str]:
    """An answer cut into the pieces a stream sends: each word with the space before."""
    return re.findall(r"\s*\S+", text)


class Pipeline:
    """prompt management -> retrieval -> model -> safety layer, for the book's
    questions.

    ``parts`` maps each part's name to the function used (the learner's or the
    course's). ``ask(question)`` returns a dict: the answer text with its "Sources:"
    list, the passages, the prompt, the citations, whether the answer is grounded in the
    passage it cites, and the finish reason ("content_filter" when a filter stopped it).
    """

    def __init__(
        self,
        index: BookIndex,
        reader: Reader,
        parts: dict,
        k: int = 3,
        budget: int = 2400,
        retrieval: str = "hybrid",
    ):
        self.index, self.reader, self.parts = index, reader, parts
        self.k, self.budget, self.retrieval = k, budget, retrieval

    def ask(self, question: str) -> dict:
        out = {
            "question": question,
            "passages": [],
            "prompt": "",
            "citations": [],
            "grounded": False,
            "finish_reason": "stop",
            "withheld": 0,
        }
        if rule_filter(question):  # input filter
            return {
                **out,
                "text": REFUSAL,
                "span": "",
                "finish_reason": "content_filter",
            }
        found = self.index.search(question, self.k, self.retrieval) if self.k else []
        prompt = self.parts["assemble_prompt"](question, found, self.budget)
        kept = found[: len(re.findall(r"^\[\d+\] ch\d\d §", prompt, re.M))]
        # the model proposes answers, best first; the output filter withholds the ones
        # that look like a leaked secret, and the best answer left is given
        proposed = self.reader.candidates(question, kept)
        allowed = [(span, n) for span, n in proposed if not output_filter(span)]
        if proposed and not allowed:
            return {
                **out,
                "text": REFUSAL,
                "span": "",
                "prompt": prompt,
                "passages": kept,
                "finish_reason": "content_filter",
                "withheld": 1,
            }
        span, n = allowed[0] if allowed else (NO_ANSWER, None)
        text = span if n is None else f"{span} [{n}]"
        if n is not None:
            text += f"\n\nSources:\n[{n}] {cite(kept[n - 1])}"
        out["withheld"] = int(bool(proposed) and proposed[0] not in allowed)
        citations = self.parts["parse_citations"](text)
        grounded = (
            bool(citations)
            and self.parts["support_score"](span, kept[citations[0]["n"] - 1]["text"])
            >= 1.0
        )
        return {
            **out,
            "text": text,
            "span": span,
            "passages": kept,
            "prompt": prompt,
            "citations": citations,
            "grounded": grounded,
        }

    def answer(self, messages: list[dict]):
        """What ``handle`` calls: the last user message in, ``(pieces, finish)`` out."""
        question = [m["content"] for m in messages if m["role"] == "user"][-1]
        result = self.ask(question)
        return pieces_of(result["text"]), result["finish_reason"]


# --------------------------------------------------------------------------------------
# Provided: the learner's parts from the earlier notebooks
# --------------------------------------------------------------------------------------
PARTS = {  # name in the pipeline -> (exercise, module holding the course's reference)
    "recursive_split": ("ch16.recursive_split", "solutions.ch16_rag"),
    "embed_texts": ("ch16.embed_texts", "solutions.ch16_rag"),
    "dense_search": ("ch16.dense_search", "solutions.ch16_rag"),
    "BM25": ("ch16.BM25", "solutions.ch16_rag"),
    "reciprocal_rank_fusion": ("ch16.reciprocal_rank_fusion", "solutions.ch16_rag"),
    "support_score": ("ch16.support_score", "solutions.ch16_rag"),
    "squad_scores": ("ch19.squad_scores", "solutions.ch19_evaluation"),
}


def _is_stub(source: str) -> bool:
    import ast

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and "NotImplementedError" in ast.unparse(node):
            return True
    return False


def earlier_notebooks() -> dict[str, Path]:
    """The learner's notebooks of chapters 16 and 19, if they are beside this one: in
    the working directory, the folder above it or its sub-folders (nbgrader's
    layout)."""
    here, found = Path.cwd(), {}
    for folder in [here, here.parent, *sorted(here.parent.glob("*/"))]:
        for ch in ("ch16", "ch19"):
            for p in sorted(folder.glob(f"{ch}_*.ipynb")):
                found.setdefault(ch, p)
    return found


def learner_parts(notebooks: dict[str, Path], grade) -> tuple[dict, list[tuple]]:
    """The parts the pipeline uses, and a table of whose each one is.

    A part is the learner's when their notebook's answer cell for it (the cell whose
    metadata names the exercise) holds code, not the stub, and that code passes the
    exercise's check (``grade(exercise_id, fn)``); else it is the course's reference.
    The cell runs in a namespace holding the course module's imports, as in the
    notebook. Returns ``(parts, rows)``, rows ``(part, exercise, whose, why)``.
    """
    import importlib

    cells = {}
    for ch, path in notebooks.items():
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            meta = cell.get("metadata", {}).get("course", {})
            if cell["cell_type"] == "code" and meta.get("role") == "answer":
                cells[meta.get("exercise")] = ("".join(cell["source"]), path.name)
    parts, rows = {}, []
    for name, (exercise, module) in PARTS.items():
        reference = getattr(importlib.import_module(module), name)
        parts[name], whose, why = reference, "course", "no notebook of yours found"
        if exercise in cells:
            source, where = cells[exercise]
            why = f"still a stub in {where}"
            if not _is_stub(source):
                namespace = dict(vars(importlib.import_module(module)))
                try:
                    exec(compile(source, where, "exec"), namespace)
                    result = grade(exercise, namespace[name])
                    passed = bool(result.passed)
                except Exception as exc:  # a cell that does not even run
                    passed, why = False, f"yours raised {type(exc).__name__}"
                if passed:
                    parts[name], whose, why = namespace[name], "yours", f"from {where}"
                elif not why.startswith("yours raised"):
                    why = f"yours fails its check ({where})"
        rows.append((name, exercise, whose, why))
    return parts, rows


# --------------------------------------------------------------------------------------
# Provided: the HTTP server (standard library) that wraps ``handle``
# --------------------------------------------------------------------------------------
def serialised(fn):
    """``fn`` behind a lock: concurrent requests take turns on the encoder (one forward
    pass at a time uses both cores better than two fighting over them)."""
    lock = threading.Lock()

    def run(*args, **kwargs):
        with lock:
            return fn(*args, **kwargs)

    return run


def serve(app, host: str = "127.0.0.1", port: int = 0):
    """Serve ``app(method, path, headers, body) -> (status, headers, chunks)`` on a
    thread.

    A ``ThreadingHTTPServer``: one thread per connection, so streams of concurrent
    clients run side by side. A body over ``MAX_BODY`` is drained unread (the app sees
    its length and refuses it). Returns the server; ``server.url`` is its base URL and
    ``server.shutdown()`` stops it.
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = (
            "HTTP/1.0"  # the end of a stream is the end of the connection
        )

        def _serve(self):
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(headers.get("content-length") or 0)
            if length <= MAX_BODY:
                body = self.rfile.read(length) if length else b""
            else:
                body, left = b"", min(length, 64 * MAX_BODY)
                while left > 0:
                    got = self.rfile.read(min(65536, left))
                    if not got:
                        break
                    left -= len(got)
            status, out_headers, chunks = app(
                self.command, self.path.split("?")[0], headers, body
            )
            self.send_response(status)
            single = isinstance(chunks, list) and len(chunks) == 1
            for key, value in out_headers.items():
                self.send_header(key, value)
            if single:
                self.send_header("content-length", str(len(chunks[0])))
            self.end_headers()
            try:
                for chunk in chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, *args):  # no request log on stderr
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.url = f"http://{host}:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


CHAT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Ask the book</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; max-width: 46em; margin: 2em auto; }
#log div { margin: .6em 0; white-space: pre-wrap; }
.you { color: #444; } .bot { background: #f4f6f8; padding: .5em; }
.sources { font-size: 90%; color: #225; }
form { display: flex; gap: .5em; } input { flex: 1; padding: .4em; }
</style></head>
<body>
<h1>Ask the book</h1>
<div id="log"></div>
<form id="ask"><input id="q" autocomplete="off" aria-label="question"
 placeholder="What does reciprocal-rank fusion do?"><button>Ask</button></form>
<script>
const log = document.getElementById("log");
document.getElementById("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const q = document.getElementById("q").value.trim();
  if (!q) return;
  const you = document.createElement("div");
  you.className = "you"; you.textContent = "You: " + q; log.appendChild(you);
  const bot = document.createElement("div");
  bot.className = "bot answer"; log.appendChild(bot);
  const res = await fetch("/v1/chat/completions", {method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({model: "book-rag", stream: true,
                          messages: [{role: "user", content: q}]})});
  if (!res.ok) { bot.textContent = "Error " + res.status; return; }
  const reader = res.body.getReader(), decoder = new TextDecoder();
  let buffer = "", text = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\\n\\n")) >= 0) {
      const line = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") { bot.dataset.done = "1"; continue; }
      const delta = JSON.parse(data).choices[0].delta;
      if (delta.content) { text += delta.content; bot.textContent = text; }
    }
  }
  const cut = text.indexOf("\\n\\nSources:");
  if (cut >= 0) {
    bot.textContent = text.slice(0, cut);
    const sources = document.createElement("div");
    sources.className = "sources"; sources.textContent = text.slice(cut + 2);
    bot.appendChild(sources);
  }
  bot.classList.add("finished");
});
</script></body></html>
"""


# --------------------------------------------------------------------------------------
# Provided: the question set
# --------------------------------------------------------------------------------------
def make_questions(
    chunks: list[dict], terms: dict[str, set[str]], n: int = 120, seed: int = 0
) -> list[dict]:
    """Fill-in-the-blank questions about the book, built the same way every time.

    Candidates: whole sentences of 10 to 40 words of the chunks that hold one of the
    book's defined terms (words set in bold in the chapter sources, 1 to 4 words, kept
    in ``terms[chapter]`` by ``defined_terms``) exactly once, with no math ("$"), no
    blank, no italics and no reference ("et al.") in it. The term becomes "____".
    ``random.Random(seed)`` shuffles the candidates and keeps ``n`` of them, at most 3
    per chapter section; each is
    ``{"question", "answer", "chapter", "section", "gold"}`` (``gold``: the ids of the
    chunks holding the sentence).
    """
    by_sentence = {}
    for c in chunks:
        for s in sentences_of(c["text"]):
            by_sentence.setdefault(s, []).append(c)
    cands = []
    for s, holders in by_sentence.items():
        words = len(s.split())
        if (not 10 <= words <= 40 or not complete(s) or s.startswith("(")
                or any(mark in s for mark in ("$", "_", "*", "et al"))):
            continue
        for term in sorted(terms.get(holders[0]["chapter"], ()), key=len, reverse=True):
            hits = list(re.finditer(rf"(?<![\w-]){re.escape(term)}(?![\w-])", s, re.I))
            if len(hits) == 1:
                m = hits[0]
                question = s[: m.start()] + BLANK + s[m.end() :]
                cands.append(
                    {
                        "question": question,
                        "answer": m.group(),
                        "chapter": holders[0]["chapter"],
                        "section": holders[0]["section"],
                        "gold": [c["id"] for c in holders],
                    }
                )
                break
    random.Random(seed).shuffle(cands)
    picked, per_section = [], {}
    for q in cands:
        key = (q["chapter"], q["section"])
        if per_section.get(key, 0) < 3 and len(picked) < n:
            per_section[key] = per_section.get(key, 0) + 1
            picked.append(q)
    return picked


def defined_terms(chapters: dict[str, str]) -> dict[str, set[str]]:
    """The words each chapter sets in bold outside code (1 to 4 words, letters first;
    a single lower-case word needs 8 letters or a hyphen, else it is mere emphasis)."""
    out = {}
    for ch, markdown in chapters.items():
        prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
        found = set()
        for m in re.finditer(r"\*\*([^*\n]+?)\*\*", prose):
            term = m.group(1).strip().strip(".:,")
            single = len(term.split()) == 1
            if single and term.islower() and "-" not in term and len(term) < 8:
                continue  # an emphasised word ("same", "once"), not a defined term
            if (
                1 <= len(term.split()) <= 4
                and re.match(r"^[A-Za-z]", term)
                and not re.search(r"\d|Exercise|Hint|Time|Prerequisites|What you", term)
                and len(term) >= 4
            ):
                found.add(term)
        out[ch] = found
    return out


def split_questions(questions: list[dict], dev_fraction: float = 0.25):
    """A dev part (to choose settings on) and a held-out test part (reported once)."""
    cut = int(round(len(questions) * dev_fraction))
    return questions[:cut], questions[cut:]


def evaluate(pipeline: Pipeline, questions: list[dict], squad, desc: str = "") -> dict:
    """EM and F1 (SQuAD rules, in percent), grounding rate and retrieval hit rate.

    Questions and the sentences of their passages are embedded ahead in large batches;
    then each question goes through the whole pipeline, as a request would.
    """
    texts = [q["question"] for q in questions]
    pipeline.index.prepare(texts)
    if pipeline.k:
        pipeline.reader.prepare(
            texts,
            [pipeline.index.search(t, pipeline.k, pipeline.retrieval) for t in texts],
        )
    preds, grounded, hits = [], 0, 0
    for q in tqdm(questions, desc=desc or "questions", leave=False):
        r = pipeline.ask(q["question"])
        preds.append(r["span"])
        grounded += r["grounded"]
        hits += any(p["id"] in q["gold"] for p in r["passages"])
    scores = squad(preds, [[q["answer"]] for q in questions])
    n = max(len(questions), 1)
    return {
        "exact_match": scores["exact_match"],
        "f1": scores["f1"],
        "grounded": 100.0 * grounded / n,
        "retrieved": 100.0 * hits / n,
        "n": len(questions),
    }


# --------------------------------------------------------------------------------------
# Provided: a load test with the real openai client
# --------------------------------------------------------------------------------------
def stream_once(base_url: str, question: str) -> dict:
    """One streamed request with the ``openai`` client: time to first token, pieces."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=120)
    t0 = time.perf_counter()
    first, pieces, text = None, 0, ""
    stream = client.chat.completions.create(
        model=MODEL_ID, stream=True, messages=[{"role": "user", "content": question}]
    )
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            first = first if first is not None else time.perf_counter() - t0
            pieces += 1
            text += delta
    total = time.perf_counter() - t0
    return {
        "ttft": first if first is not None else total,
        "total": total,
        "pieces": pieces,
        "text": text,
    }


def load_test(
    base_url: str, questions: list[str], clients: int, rounds: int = 2
) -> dict:
    """``clients`` concurrent clients, each streaming ``rounds`` questions.

    Returns the median time to first token, the median pieces per second of one
    stream (pieces after the first / time after the first), and the throughput of
    the server (pieces of all streams / wall time), plus every answer's text.
    """
    from concurrent.futures import ThreadPoolExecutor
    from statistics import median

    jobs = [
        questions[(c * rounds + r) % len(questions)]
        for c in range(clients)
        for r in range(rounds)
    ]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(lambda q: stream_once(base_url, q), jobs))
    wall = time.perf_counter() - t0
    rates = [
        (d["pieces"] - 1) / max(d["total"] - d["ttft"], 1e-6)
        for d in done
        if d["pieces"] > 1
    ]
    return {
        "clients": clients,
        "requests": len(jobs),
        "ttft_median": median(d["ttft"] for d in done),
        "ttft_max": max(d["ttft"] for d in done),
        "pieces_per_s_stream": median(rates) if rates else 0.0,
        "pieces_per_s_server": sum(d["pieces"] for d in done) / wall,
        "wall": wall,
        "answers": [(q, d["text"]) for q, d in zip(jobs, done)],
    }
