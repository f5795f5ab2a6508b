"""Deserialized evaluation keys, a few recent ones per executor (they are tens of MB each).

Only executors build this cache; the HTTP workers read and write the registry alone.
"""

import threading
from collections import OrderedDict

from .keys import UNREADABLE, KeyRegistry, UnknownKey, deserialize_evaluation_keys


class EvaluationKeyCache:
    """The registry's keys, deserialized; the registry decides, so a cached copy of a key evicted
    or deleted meanwhile is never used."""

    def __init__(self, registry: KeyRegistry, size: int = 2) -> None:
        self._registry = registry
        self._size = size
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_id: str, parse=deserialize_evaluation_keys):
        """The key `key_id` as `parse` reads it (the served model's scheme; default concrete's
        evaluation keys); UnknownKey if it is gone or damaged."""
        self._registry.model_version(key_id)  # still registered (raises UnknownKey otherwise)
        self._registry.touch(key_id)
        with self._lock:
            if key_id in self._cache:
                self._cache.move_to_end(key_id)
                return self._cache[key_id]
        serialized = self._registry.serialized(key_id)
        try:
            keys = parse(serialized)
        except ValueError:
            self._registry.discard(key_id)
            raise UnknownKey(key_id, UNREADABLE) from None
        self._remember(key_id, keys)
        return keys

    def _remember(self, key_id: str, keys) -> None:
        with self._lock:
            self._cache[key_id] = keys
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
