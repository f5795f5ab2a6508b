"""The real app served over HTTP from a thread of the test process (fast restarts on one MODEL_DIR)."""

import json
import threading

from anonymizer.config import Config
from anonymizer.execution import open_executors
from anonymizer.http.app import create_app
from anonymizer.parties import PartyLayout
from anonymizer.party.console import loopback_server
from anonymizer.settings import ModelSpec
from challenge_stub.dataset import PARTY_LAYOUT


def config_for(model_dir, stub) -> Config:
    """The stub's three parties, a fixed small tree (fast refits), everything else default."""
    return Config(
        challenge_host=stub.host,
        model_dir=model_dir,
        selection=None,
        parties=PartyLayout.parse(json.dumps(PARTY_LAYOUT)),
        tree=ModelSpec(max_depth=3, min_samples_leaf=20, n_bits=4),
    )


class InProcessServer:
    """`create_app(config)` on an ephemeral 127.0.0.1 port; `restart()` builds the app anew."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._server = None
        self._thread = None
        self._executors = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> "InProcessServer":
        self._executors = open_executors(self.config)  # its own executor processes, like a restart
        self._server = loopback_server(create_app(self.config, self._executors))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._executors.close()

    def restart(self) -> "InProcessServer":
        """What a process restart does: a fresh app (fresh caches) over the same MODEL_DIR."""
        self.stop()
        return self.start()

    def __enter__(self) -> "InProcessServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
