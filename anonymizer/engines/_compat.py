"""The one place that touches concrete-python internals, behind a version check."""

from importlib.metadata import version

TESTED_CONCRETE_PYTHON = ("2.10",)


def ensure_tag_stack() -> None:
    """Give this thread concrete's tag stack before compiling.

    concrete's tag stack is a threading.local set up only in the importing thread; gunicorn's
    gthread workers compile in other threads.
    """
    from concrete.fhe.extensions.tag import tag_context

    if not hasattr(tag_context, "stack"):
        tag_context.stack = []


def check_version() -> None:
    """RuntimeError unless the installed concrete-python is one this module was written for."""
    installed = version("concrete-python")
    if not installed.startswith(TESTED_CONCRETE_PYTHON):
        raise RuntimeError(
            f"anonymizer.engines._compat was written for concrete-python {TESTED_CONCRETE_PYTHON}, "
            f"found {installed}: check ensure_tag_stack against its sources."
        )


check_version()
