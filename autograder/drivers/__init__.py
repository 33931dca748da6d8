"""The public half of each chapter's exercises: the functions that run a learner's code for
a check (``Case.run``) and compare what it returns (``Case.compare``).

They ship with a student release and run inside the grading sandbox, so they hold no
reference and no hidden case: only the way to call the learner's code and to judge its
answer against an expected value that arrives as data. See ``autograder/public.py``.
"""
