"""The examples in spark_tpu's docstrings run, and print what they say they print.

Every module of the package is imported under the test-wide JAX configuration of
`tests/conftest.py` (8 emulated CPU devices, float64 available, strict dtype promotion), and its
``>>>`` examples run with `doctest`, one test per module that has any. An example that needs what
a test machine may lack (a download, a prepared dataset) is marked ``# doctest: +SKIP`` in its
docstring. Modules that are command lines (they define absl flags when run) are imported too:
their flags are defined only under ``__main__``.

This file, rather than ``pytest --doctest-modules``, runs them so that the package's examples
see the same JAX configuration as every other test, whichever folder pytest starts from.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import spark_tpu

# Output is compared after normalizing whitespace; "..." stands for any text.
OPTIONS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _modules() -> list[str]:
    names = [spark_tpu.__name__]
    for info in pkgutil.walk_packages(spark_tpu.__path__, prefix=spark_tpu.__name__ + "."):
        names.append(info.name)
    return sorted(names)


def _tests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    # DocTestFinder keeps the objects defined in the module itself: a function a package's
    # __init__ re-exports is tested once, in the module that defines it.
    return [t for t in doctest.DocTestFinder().find(module, name) if t.examples]


MODULES = _modules()
WITH_EXAMPLES = [name for name in MODULES if _tests(name)]


def test_every_module_imports_and_some_have_examples():
    assert len(MODULES) > 40
    assert len(WITH_EXAMPLES) >= 10, WITH_EXAMPLES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    failures = []
    for test in _tests(name):
        result = runner.run(test, out=failures.append, clear_globs=True)
        del result
    assert runner.failures == 0, "".join(failures)
