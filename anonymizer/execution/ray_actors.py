"""Encrypted executors across machines: named Ray actors that hold keys, chosen by key id.

Actors rather than Ray Serve's model multiplexing: a key must live on exactly one replica (one
deserialized copy) and jobs for it must queue where it lives, which a fixed `shard(key_id)` to a
named actor gives directly, without Serve's HTTP proxy or its replica-level key cache.

Each actor wraps the same JobRunner and JobQueue as an embedded executor; it reads keys and the
model from MODEL_DIR, which every node mounts (a shared volume), and the model key from its node's
environment (ANONYMIZER_MODEL_KEY / ANONYMIZER_MODEL_KEY_FILE) or the generated one in MODEL_DIR,
so no secret travels through Ray. Ray restarts an actor whose node dies on a surviving node
(`max_restarts=-1`); the new actor reloads keys from the store on first use.
"""

import os
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from ..engines.runtime import start_fhe_runtime
from ..settings import Execution
from .base import ExecutorUnavailable, Job, raise_for_status, shard
from .queue import JobQueue, attempt
from .runner import JobRunner, RunnerSettings

NAMESPACE = "anonymizer"


@ray.remote(max_restarts=-1, max_task_retries=0)
class KeyHolderActor:
    """One executor in the cluster: a JobRunner behind a bounded job queue."""

    def __init__(self, model_dir: str, cached_keys: int, max_waiting: int) -> None:
        start_fhe_runtime()
        key_file = os.environ.get("ANONYMIZER_MODEL_KEY_FILE")
        settings = RunnerSettings(
            Path(model_dir),
            os.environ.get("ANONYMIZER_MODEL_KEY") or None,
            Path(key_file) if key_file else None,
            cached_keys,
        )
        self._queue = JobQueue(JobRunner(settings), max_waiting)
        self._queue.preload()

    def preload(self) -> None:
        """Load the served model in the background (after a fit)."""
        self._queue.preload()

    def warm(self, key_id: str) -> tuple[dict, None]:
        """Deserialize `key_id` here now."""
        return attempt(lambda: self._queue.warm(key_id))

    def run(self, job: Job):
        """One encrypted job; the reply header and the result bytes (None on failure)."""
        return attempt(lambda: self._queue.run(job))

    def node(self) -> str:
        """The id of the Ray node this actor lives on."""
        return ray.get_runtime_context().get_node_id()


class RayExecutors:
    """Jobs go to the detached actor `key-holder-<shard(key_id)>`, created on first use."""

    def __init__(self, model_dir: Path, execution: Execution) -> None:
        if not ray.is_initialized():
            ray.init(
                address=os.environ.get("RAY_ADDRESS") or "auto",
                namespace=NAMESPACE,
                log_to_driver=False,
            )
        self._job_timeout = execution.job_timeout
        waiting = execution.waiting_per_executor
        self._actors = [
            KeyHolderActor.options(
                name=f"key-holder-{index}",
                lifetime="detached",
                get_if_exists=True,
                scheduling_strategy="SPREAD",
                num_cpus=1,
                max_concurrency=waiting + 2,  # the running job, the waiting ones, one to refuse
            ).remote(str(model_dir), execution.cached_keys, waiting)
            for index in range(execution.executors)
        ]

    def actor_for(self, key_id: str):
        """The actor that holds `key_id`."""
        return self._actors[shard(key_id, len(self._actors))]

    def warm(self, key_id: str) -> None:
        reply, _ = self._get(self.actor_for(key_id).warm.remote(key_id))
        raise_for_status(key_id, reply)

    def preload(self) -> None:
        for actor in self._actors:
            actor.preload.remote()  # not waited for: its first job loads the model otherwise

    def run(self, job: Job) -> bytes:
        reply, result = self._get(self.actor_for(job.key_id).run.remote(job))
        raise_for_status(job.key_id, reply)
        return result

    def close(self) -> None:
        pass  # the actors are the cluster's; other web workers keep using them

    def _get(self, reference):
        try:
            return ray.get(reference, timeout=self._job_timeout)
        except GetTimeoutError as error:
            ray.cancel(reference)
            raise ExecutorUnavailable(f"No answer within {self._job_timeout:.0f} s.") from error
        except RayActorError as error:
            raise ExecutorUnavailable("The executor's node went away mid-job.") from error
        except RayError as error:
            raise ExecutorUnavailable("Ray could not run the job.") from error
