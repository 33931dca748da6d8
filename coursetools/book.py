"""The book's Sphinx extension and its one publishing setting.

Loaded by Jupyter Book through ``_config.yml`` (``sphinx.config.extensions``). It makes
the launch buttons from the one setting ``repository.url`` of ``_config.yml``:

- empty (the default): no repository button and no launch buttons, and the set-up cell of
  each notebook explains how to install the course instead of fetching it;
- a public GitHub repository: the repository button, a Binder button (the environment is
  described by ``binder/``) and a Colab button on every chapter, and the set-up cell
  fetches the course from that repository when it runs on Colab.

There is no JupyterHub launch button: a course hub hands its students the chapters as
nbgrader assignments (``docs/instructors.md``), and a button that pulls the repository
into a hub would bypass that.

MathJax is served from the built book (``sphinx-mathjax-offline``), never from a CDN.
"""
from __future__ import annotations

from urllib.parse import urlparse

BINDER_URL = "https://mybinder.org"
COLAB_URL = "https://colab.research.google.com"
# Hosts that only ever stand for "fill this in": a book that names one is not publishable.
PLACEHOLDER_HOSTS = ("example.com", "example.org", "example.edu", "example.net")


def launch_settings(repo_url: str, branch: str = "main") -> dict:
    """The theme options that the repository URL decides (an empty URL: no buttons)."""
    repo_url = (repo_url or "").strip().rstrip("/")
    if not repo_url:
        return {"use_repository_button": False, "launch_buttons": {}}
    check_repository_url(repo_url)
    return {"use_repository_button": True, "repository_url": repo_url, "repository_branch": branch,
            "launch_buttons": {"notebook_interface": "jupyterlab", "binderhub_url": BINDER_URL,
                               "colab_url": COLAB_URL}}


def check_repository_url(url: str) -> None:
    """Refuse a URL the launch buttons cannot use, or a placeholder."""
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    if parsed.scheme != "https" or not host:
        raise ValueError(f"repository.url must be an https URL, not {url!r}")
    if any(host == h or host.endswith("." + h) for h in PLACEHOLDER_HOSTS):
        raise ValueError(f"repository.url {url!r} is a placeholder: leave it empty until the book has a repository")
    if host != "github.com" or len([p for p in parsed.path.split("/") if p]) != 2:
        raise ValueError(f"repository.url must be a GitHub repository (https://github.com/OWNER/NAME): "
                         f"Colab opens notebooks from GitHub only; got {url!r}")


def _configure(app, config) -> None:
    options = dict(config.html_theme_options or {})
    url = options.get("repository_url", "")
    branch = options.get("repository_branch") or "main"
    for key in ("launch_buttons", "repository_url", "repository_branch", "use_repository_button"):
        options.pop(key, None)
    options.update(launch_settings(url, branch))
    # The page's own table of contents stays in the right-hand column; the "edit" and
    # "issues" buttons need a public repository and are not used.
    options.setdefault("use_edit_page_button", False)
    options.setdefault("use_issues_button", False)
    config.html_theme_options = options
    # Without a default mode the theme logs "Got invalid theme mode" on every page. Light:
    # the figures have white backgrounds (the reader can still switch).
    config.html_context = {"default_mode": "light", **(config.html_context or {})}


def setup(app):
    app.connect("config-inited", _configure, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
