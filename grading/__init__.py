"""Trusted, sandboxed grading of the course's nbgrader assignments.

    python -m grading grade NOTEBOOK --source SOURCE_NOTEBOOK      one notebook, report on stdout
    python -m grading autograde ASSIGNMENT --course-dir DIR        fill nbgrader's gradebook
    python -m grading batch ASSIGNMENT --course-dir DIR --jobs 2   a whole class, resumable, CSV
    python -m grading isolation                                    what the sandbox can use here

See docs/instructors.md.
"""
from .grader import SubmissionResult, TrustedGrader  # noqa: F401
from .sandbox import Limits, isolation  # noqa: F401
