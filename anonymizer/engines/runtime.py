"""Starting concrete's runtime so that a closed client connection cannot kill the process.

concrete's runtime (HPX) installs a handler that aborts the process on SIGPIPE the first time a
circuit runs. Python ignores SIGPIPE (a write to a closed socket raises BrokenPipeError instead),
and a gunicorn worker relies on that whenever a client goes away mid-response. So the runtime is
started up front, with its public `init_dfr`, and SIGPIPE is put back to ignored.
"""

import signal
import threading


def start_fhe_runtime() -> None:
    """Start concrete's runtime now and keep SIGPIPE ignored (call from the main thread)."""
    import concrete.compiler

    concrete.compiler.init_dfr()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
