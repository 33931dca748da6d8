"""Reference solutions, one module per chapter (``chNN_<slug>.py``).

These are the single source of every exercise's solution: the chapter notebooks, the
nbgrader source and the book are generated from them, and later chapters import the
components of earlier ones from here.
"""
