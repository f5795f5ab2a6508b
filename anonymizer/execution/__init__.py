"""Where encrypted jobs run: embedded executor processes (default) or Ray actors (FHE_EXECUTION)."""

from typing import TYPE_CHECKING

from .base import Executors

if TYPE_CHECKING:
    from ..config import Config


def open_executors(config: "Config") -> Executors:
    """The executors FHE_EXECUTION names: embedded processes (default) or Ray actors."""
    execution = config.execution
    if execution.mode == "ray":
        from .ray_actors import RayExecutors  # Ray is only needed by those who distribute

        return RayExecutors(config.model_dir, execution)
    from .embedded import embedded_settings, start_embedded

    return start_embedded(embedded_settings(config), execution.executors, execution.job_timeout)
