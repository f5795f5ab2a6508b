"""Starting concrete's runtime so that a closed client connection cannot kill the process.

concrete's runtime (HPX) installs a handler that aborts the process on SIGPIPE the first time a
circuit runs. Python ignores SIGPIPE (a write to a closed socket raises BrokenPipeError instead),
and a gunicorn worker relies on that whenever a client goes away mid-response. So the runtime is
started up front, with its public `init_dfr`, and SIGPIPE is put back to ignored.
"""

import ctypes
import signal
import threading


def start_fhe_runtime() -> None:
    """Start concrete's runtime now and keep SIGPIPE ignored (call from the main thread)."""
    import concrete.compiler

    concrete.compiler.init_dfr()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc's malloc_trim; elsewhere a no-op).

    A fit compiles dozens of candidate circuits and a key upload parses tens of MB: freed, that
    memory stays in glibc's arenas and the worker's RSS keeps its high-water mark without this.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
