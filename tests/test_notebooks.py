"""Every chapter runs from top to bottom (quick mode): the reference edition without errors,
and the student edition, untouched, without crashing (its experiments fall back on the
reference solutions and its checks report "not implemented")."""
import os

import pytest

from coursetools import build, notebooks
from coursetools.source import chapters

CHAPTERS = chapters()


@pytest.mark.slow
@pytest.mark.parametrize("ch", CHAPTERS, ids=[c.slug for c in CHAPTERS])
def test_reference_edition_executes(ch, tmp_path):
    os.environ["COURSE_QUICK"] = "1"
    nb = notebooks.build(ch, "solution")
    build.execute(nb, tmp_path, timeout=600)  # outside the repository, as a reader runs it
    assert not build.errors_in(nb)
    # One report per check cell (its stream output may arrive in several chunks).
    reports = ["".join(o.get("text", "") for o in c.outputs if o.get("output_type") == "stream")
               for c in nb.cells if c.metadata.get("course", {}).get("role") == "check"]
    assert reports and all("all checks passed" in r for r in reports), reports


@pytest.mark.slow
@pytest.mark.parametrize("ch", CHAPTERS, ids=[c.slug for c in CHAPTERS])
def test_student_edition_runs_to_the_end_untouched(ch, tmp_path):
    os.environ["COURSE_QUICK"] = "1"
    nb = notebooks.build(ch, "student")
    build.execute(nb, tmp_path, timeout=600)
    checks = [c for c in nb.cells if c.metadata.get("course", {}).get("role") == "check"]
    for cell in checks:
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert "not implemented yet" in text, text
