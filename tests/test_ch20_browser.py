"""Chapter 20's chat page in a real browser (Debian's chromium driven by Playwright).

The course's server runs on a free port of 127.0.0.1 with the reference app and a small
pipeline over chapter 16; the page at ``/`` is opened in headless chromium with every
request to another host refused, a question is typed, and the answer must stream in (the
text grows over several reads) and end with its citation to a section of chapter 16.
Skipped, with the reason, when chromium or Playwright is missing. Never run
``playwright install``: it downloads a browser of its own, which fails offline.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM, CHROMIUM_ARGS

if not Path(CHROMIUM).exists():
    pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from solutions import ch16_rag  # noqa: E402
from solutions import ch20_capstone as S  # noqa: E402


class SlowPieces:
    """The pipeline's answer, its pieces handed out a little apart, so that a stream that
    arrives in one piece and one that arrives over time can be told apart."""

    def __init__(self, pipeline, delay=0.05):
        self.pipeline, self.delay = pipeline, delay

    def __call__(self, messages):
        pieces, finish = self.pipeline.answer(messages)

        def slow():
            for piece in pieces:
                time.sleep(self.delay)
                yield piece
        return slow(), finish


@pytest.fixture(scope="module")
def server():
    _, book = S.book_sources()
    chunks = S.chunk_book({"ch16": book["ch16"]}, ch16_rag.recursive_split)
    parts = {name: getattr(ch16_rag, name) for name in
             ["embed_texts", "dense_search", "BM25", "reciprocal_rank_fusion", "support_score"]}
    parts["assemble_prompt"], parts["parse_citations"] = S.assemble_prompt, S.parse_citations
    tokenizer, model = S.load_minilm()
    embed = S.serialised(lambda t: ch16_rag.embed_texts(t, tokenizer, model, batch_size=64))
    pipeline = S.Pipeline(S.BookIndex(chunks, embed, parts), S.Reader(embed), parts, k=3)
    app = functools.partial(S.handle, answer=SlowPieces(pipeline), page=S.CHAT_PAGE)
    srv = S.serve(app)
    srv.pipeline = pipeline
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_chat_page_streams_an_answer_with_citations(server, browser):
    context = browser.new_context()
    outside, errors = [], []

    def route(r):
        if r.request.url.startswith(server.url):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    question = "What does reciprocal-rank fusion add up?"
    page.fill("#q", question)
    page.click("button")
    seen = set()
    deadline = time.time() + 60
    while time.time() < deadline:   # watch the answer grow
        text = page.evaluate("() => (document.querySelector('.answer') || {}).textContent || ''")
        if text:
            seen.add(text)
        if page.query_selector(".answer.finished"):
            break
        time.sleep(0.05)
    page.wait_for_selector(".answer.finished", timeout=10_000)
    answer = page.inner_text(".answer")
    sources = page.inner_text(".answer .sources")
    expected = server.pipeline.ask(question)
    cited = S.parse_citations(expected["text"])
    assert cited, expected["text"]
    assert sources.startswith("Sources:") and f"ch16 §{cited[0]['section']}" in sources
    assert expected["span"] in answer and f"[{cited[0]['n']}]" in answer
    assert len(seen) >= 3, f"the answer did not stream in: saw only {len(seen)} states"
    assert page.get_attribute(".answer", "data-done") == "1"   # [DONE] was read
    assert page.inner_text(".you") == "You: " + question
    assert not outside, f"the page asked for other hosts: {outside}"
    assert not errors, errors
    context.close()
