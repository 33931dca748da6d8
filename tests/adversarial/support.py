"""A chapter-1 nbgrader course shared by the trusted-grading tests (built once per session)."""
from __future__ import annotations

import functools
import json
import socket
import tempfile
import threading
from pathlib import Path

from grading.sandbox import Limits

SLUG = "ch01_next_token"
# Short timeouts keep the hanging cases quick; the rest are the production defaults.
TEST_LIMITS = Limits(case_timeout=3.0, cell_timeout=15.0)


@functools.lru_cache(maxsize=None)
def shared_course() -> Path:
    from grading.simulate import make_course

    root = Path(tempfile.mkdtemp(prefix="trusted-course-"))
    make_course(root / "course", "ch01")
    return root / "course"


def release(course: Path) -> dict:
    return json.loads((course / "release" / SLUG / f"{SLUG}.ipynb").read_text())


class LocalServer:
    """Accepts TCP connections on 127.0.0.1 (what a leaking sandbox could reach)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()
