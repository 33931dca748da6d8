"""Read a chapter source (``content/chNN_slug.md``) into a list of cells.

A chapter source is Markdown with a front-matter block and three kinds of fenced blocks
that become code cells (every other fence stays Markdown):

    ```{code-cell}              a code cell; option lines ``:tags: [a, b]`` may open it
    ```{exercise} ch01.some_id  the learner's answer cell (built from the solution module)
                                followed by its check cell
    ```{provided} name [name]   code the learner is given, copied from the solution module

The solution code itself lives once, in ``solutions/<slug>.py``; this module only points at it.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "content"

_FENCE = re.compile(r"^```\{(code-cell|exercise|provided)\}\s*(.*?)\s*$")


@dataclasses.dataclass
class Block:
    kind: str  # markdown | code | exercise | provided
    text: str = ""
    arg: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Chapter:
    path: Path
    slug: str  # ch01_next_token
    chapter: str  # ch01
    title: str
    level: int
    solutions: str  # module name of the reference solutions
    blocks: list[Block]
    minutes: str = ""

    @property
    def number(self) -> int:
        return int(self.chapter[2:])


def parse(path: Path) -> Chapter:
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ValueError(f"{path}: a chapter source starts with a front-matter block (---)")
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    blocks: list[Block] = []
    markdown: list[str] = []

    def flush_markdown():
        md = "\n".join(markdown).strip("\n")
        if md.strip():
            blocks.append(Block("markdown", md))
        markdown.clear()

    lines = body.split("\n")
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            markdown.append(lines[i])
            i += 1
            continue
        flush_markdown()
        kind, arg = m.group(1), m.group(2)
        i += 1
        code: list[str] = []
        tags: list[str] = []
        while i < len(lines) and lines[i].rstrip() != "```":
            if not code and lines[i].startswith(":tags:"):
                tags = [t.strip() for t in lines[i][len(":tags:"):].strip().strip("[]").split(",") if t.strip()]
            else:
                code.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}: unclosed ```{{{kind}}} block")
        i += 1
        kind = "code" if kind == "code-cell" else kind
        blocks.append(Block(kind, "\n".join(code).strip("\n"), arg, tags))
    flush_markdown()
    slug = path.stem
    return Chapter(path=path, slug=slug, chapter=slug.split("_")[0], title=meta["title"],
                   level=int(meta.get("level", 1)), solutions=meta.get("solutions", f"solutions.{slug}"),
                   blocks=blocks, minutes=str(meta.get("minutes", "")))


def chapters() -> list[Chapter]:
    return [parse(p) for p in sorted(CONTENT.glob("ch[0-9][0-9]_*.md"))]


def chapter(name: str) -> Chapter:
    """``ch01`` or ``ch01_next_token`` -> the parsed chapter."""
    for p in sorted(CONTENT.glob("ch[0-9][0-9]_*.md")):
        if p.stem == name or p.stem.split("_")[0] == name:
            return parse(p)
    raise KeyError(f"no chapter {name!r} in {CONTENT}")
