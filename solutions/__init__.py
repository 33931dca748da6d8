"""Reference solutions, one module per chapter (``chNN_<slug>.py``).

These are the single source of every exercise's solution: the chapter notebooks, the
nbgrader source and the book are generated from them, and later chapters import the
components of earlier ones from here.
"""

import logging as _logging

# bitsandbytes (chapter 18's reference for NF4) is imported by peft whenever it is installed,
# and on CPUs with AVX-512 it logs a warning about an optional kernel it cannot download.
# The course never needs that kernel; keep the warning out of the chapters' outputs.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
