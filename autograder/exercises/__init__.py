"""Exercise declarations, one module per chapter (``chNN_<slug>.py``).

Importing this package imports every chapter module, and each module registers its
exercises with ``autograder.register``.
"""
import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("ch"):
        importlib.import_module(f"{__name__}.{_info.name}")
