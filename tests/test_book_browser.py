"""The built book in a real browser (Debian's chromium driven by Playwright), offline, served
over HTTP on 127.0.0.1: every page loads with no failed request and no console error, the
math is typeset, every figure has loaded and has a meaningful alt text, hints open, search
finds a chapter by a word of its text, and an 88-character line fits in a code box.

Needs a built book (`make book`) and chromium (`apt-get install chromium`); skipped, with
the reason, when either is missing. Never run `playwright install`: it downloads a browser
of its own, which fails offline; the test drives the system's chromium instead.
"""
import functools
import http.server
import re
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from coursetools.source import ROOT
from tests.helpers import CHROMIUM
from tests.helpers import CHROMIUM_ARGS as ARGS

HTML = ROOT / "_build" / "html"
# Console messages that are not ours. Each needs a reason.
ALLOWED_CONSOLE = [
    # chromium's own complaint when a page has no favicon is a failed request, not an error
    # of the book; the book sets no favicon and the server answers 404.
    re.compile(r"favicon\.ico"),
]

if not (HTML / "index.html").exists():
    pytest.skip("no built book in _build/html: run `make book` first", allow_module_level=True)
if not Path(CHROMIUM).exists():
    pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHAPTER_PAGES = sorted(p.relative_to(HTML).as_posix() for p in (HTML / "chapters").glob("*.html"))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    # Playwright runs chromium headless with a fresh profile of its own.
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Recorder:
    """A page that records failed requests, requests to other hosts and console errors."""

    def __init__(self, browser, base, width=1280):
        self.base = base
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.problems = []
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed request {r.url}"))
        self.page.on("response", lambda r: r.status >= 400 and not self._allowed(r.url)
                     and self.problems.append(f"HTTP {r.status} for {r.url}"))
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))

    def _allowed(self, text):
        return any(p.search(text) for p in ALLOWED_CONSOLE)

    def _route(self, route):
        host = urlparse(route.request.url).hostname
        if host not in ("127.0.0.1", None) and not route.request.url.startswith("data:"):
            self.problems.append(f"request to another host: {route.request.url}")
            route.abort()
        else:
            route.continue_()

    def _console(self, msg):
        if msg.type == "error" and not self._allowed(msg.text + " " + str(msg.location)):
            self.problems.append(f"console error: {msg.text} ({msg.location.get('url', '')})")

    def open(self, path):
        self.page.goto(f"{self.base}/{path}", wait_until="load")
        self.page.wait_for_load_state("networkidle")
        return self.page

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser, server):
    opened = []

    def _visit(width=1280):
        rec = Recorder(browser, server, width)
        opened.append(rec)
        return rec

    yield _visit
    for rec in opened:
        rec.close()


def wait_for_math(page):
    """MathJax's promise, once it has typeset the page (no-op on a page without math)."""
    if not page.evaluate("document.querySelector('.math') !== null"):
        return False
    page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise",
                           timeout=60_000)
    page.evaluate("MathJax.startup.promise")
    return True


@pytest.mark.parametrize("path", ["index.html", "intro.html", "search.html"])
def test_page_loads_offline_without_errors(visit, path):
    rec = visit()
    page = rec.open(path)
    assert page.title(), path
    assert not rec.problems, rec.problems


@pytest.mark.parametrize("path", CHAPTER_PAGES)
def test_chapter_page(visit, path):
    """One load per chapter: no failed request or console error, the math typeset, every
    figure loaded, with an alt text that says what it shows."""
    rec = visit()
    page = rec.open(path)
    if wait_for_math(page):
        untypeset = page.evaluate("""() => [...document.querySelectorAll('span.math, div.math')]
            .filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60))""")
        assert not untypeset, f"math left as LaTeX: {untypeset[:5]}"
        raw = page.evaluate("""() => {
            const prose = document.querySelector('article').cloneNode(true);
            prose.querySelectorAll('pre, code, .highlight, .cell_output').forEach(e => e.remove());
            return prose.textContent.match(/\\\\\\(|\\\\\\[/g);
        }""")
        assert not raw, "raw \\( or \\[ delimiters visible in the text"
    images = page.evaluate("""async () => {
        const out = [];
        for (const img of document.querySelectorAll('article img')) {
            img.loading = 'eager';
            if (!img.complete) await new Promise(r => { img.onload = img.onerror = r; });
            out.push({src: img.getAttribute('src'), alt: img.getAttribute('alt') || '',
                      loaded: img.naturalWidth > 0});
        }
        return out;
    }""")
    for img in images:
        assert img["loaded"], f"{path}: {img['src']} did not load"
        alt = img["alt"].strip()
        assert len(alt) >= 8 and not re.search(r"\.(png|svg|jpe?g)$|_images/|^<Figure", alt), \
            f"{path}: {img['src']} has no meaningful alt text: {alt!r}"
    assert not rec.problems, rec.problems


def test_hint_toggles_open(visit):
    rec = visit()
    page = rec.open("chapters/ch01_next_token.html")
    hint = page.locator("details", has=page.locator("summary", has_text="Hint")).first
    assert hint.count() == 1, "no hint on the page"
    assert not hint.evaluate("d => d.open")
    hint.locator("summary").click()
    assert hint.evaluate("d => d.open")
    body = hint.evaluate("d => d.innerText")
    assert len(body.strip()) > len("Hint") + 20
    assert not rec.problems, rec.problems


def test_search_finds_a_chapter_by_a_word_of_its_text(visit):
    rec = visit()
    page = rec.open("search.html?q=Mamba")
    page.wait_for_selector("#search-results li, ul.search li", timeout=60_000)
    hrefs = page.evaluate("""() => [...document.querySelectorAll('#search-results li a, ul.search li a')]
        .map(a => a.getAttribute('href'))""")
    assert any("ch13_long_context" in h for h in hrefs), hrefs
    assert not rec.problems, rec.problems


def test_an_88_character_line_fits_in_a_code_box(visit):
    """At a laptop's 1280 pixels, with the page's table of contents beside the text, neither
    an input nor an output box needs to scroll for 88 characters."""
    rec = visit(width=1280)
    page = rec.open("chapters/ch04_attention.html")
    widths = page.evaluate("""() => {
        const out = {};
        for (const [name, sel] of [['input', 'div.cell:not(.tag_hide-input) div.cell_input pre'],
                                   ['output', 'div.cell div.cell_output pre'],
                                   ['hidden input', 'div.cell.tag_hide-input div.cell_input pre']]) {
            const pre = document.querySelector(sel);
            if (pre.closest('details')) pre.closest('details').open = true;
            const probe = document.createElement('span');
            probe.textContent = 'x'.repeat(88);
            probe.style.whiteSpace = 'pre';
            probe.style.display = 'inline-block';
            pre.appendChild(probe);
            const cs = getComputedStyle(pre);
            const room = pre.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
            out[name] = [probe.getBoundingClientRect().width, room];
            probe.remove();
        }
        return out;
    }""")
    for name, (needed, room) in widths.items():
        assert needed <= room, f"an 88-character {name} line needs {needed:.0f} px, the box has {room:.0f}"
