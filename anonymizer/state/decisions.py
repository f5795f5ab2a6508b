"""The decision budget under MODEL_DIR: how many encrypted decisions one key and one owner may ask
for within a fixed window (a key's owner learns one decision per query; unbounded queries let a
cheating applicant probe a co-party's hidden features row by row).

Every HTTP worker process shares the counts: they live on disk under one file lock, so they also
survive restarts. Like the staged inputs' use counts, a count is the name of an empty file
(`<k|o>-<hash of the subject>-<window start>-<count>`), changed by renaming: spending a decision
needs no free space once its subject has a file, so a full disk does not stop decisions.
"""

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ..settings import DecisionLimits
from .storage import writing

_logger = logging.getLogger(__name__)

KEY, OWNER = "k", "o"
_KINDS = {KEY: "key", OWNER: "owner"}


def _limit(limits: DecisionLimits, kind: str) -> int:
    """The limit on decisions per key (KEY) or per owner (OWNER); 0: none."""
    return limits.per_key if kind == KEY else limits.per_owner


class BudgetSpent(RuntimeError):
    """A key's or an owner's decisions for this window are spent; `retry_after` seconds until the
    window ends and frees them."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Spent:
    """The decisions one request took: (subject file prefix, window start) per counted subject."""

    windows: tuple[tuple[str, int], ...]
    count: int = 1


@dataclass(frozen=True)
class _Count:
    name: str  # the file's name
    start: int
    count: int


class DecisionBudget:
    """Counts encrypted decisions per key id and per owner in fixed windows that start with a
    subject's first decision; `spend` before computing, `refund` what a failed decision took."""

    def __init__(self, root: Path, limits: DecisionLimits | None = None, clock=time.time) -> None:
        self.root = Path(root)
        self.limits = limits or DecisionLimits()
        self._clock = clock
        self.lock = FileLock(self.root / ".lock")
        if self.limits.enabled:
            self.root.mkdir(parents=True, exist_ok=True)
            with self.lock:  # the lock file exists from the start: a full disk later needs none
                pass

    def check_owner(self, owner: str) -> None:
        """BudgetSpent if `owner` has no decision left in its window (reads only: a refusal
        before the request's body is read)."""
        if not self.limits.per_owner:
            return
        counts = self._counts()
        self._check(counts, [(OWNER, self._prefix(OWNER, owner))], self._clock())

    def spend(self, key_id: str, owner: str, count: int = 1) -> Spent | None:
        """Take `count` decisions (one call that shows that many) from the key's and the owner's
        budgets, or BudgetSpent (nothing taken) if either has fewer left. None when no limit is on."""
        subjects = [
            (kind, self._prefix(kind, subject))
            for kind, subject in ((KEY, key_id), (OWNER, owner))
            if _limit(self.limits, kind)
        ]
        if not subjects:
            return None
        with self.lock:
            now = self._clock()
            counts = self._counts()
            self._check(counts, subjects, now, count)
            windows = []
            for _, prefix in subjects:
                current = counts.get(prefix)
                if current is None or self._expired(current, now):
                    start, total = int(now), count
                else:
                    start, total = current.start, current.count + count
                self._rename(prefix, current, start, total)  # an expired file is reused
                windows.append((prefix, start))
            self._prune(counts, now, keep={prefix for _, prefix in subjects})
        return Spent(tuple(windows), count)

    def refund(self, spent: Spent | None) -> None:
        """Give back what a failed decision took (unless its window has ended meanwhile)."""
        if spent is None:
            return
        try:
            with self.lock:
                counts = self._counts()
                for prefix, start in spent.windows:
                    current = counts.get(prefix)
                    if current is not None and current.start == start and current.count > 0:
                        self._rename(prefix, current, start, max(0, current.count - spent.count))
        except OSError as error:  # a refund never turns an answer into a 5xx
            _logger.warning("could not refund a decision: %s", error)

    def remaining(self, key_id: str, owner: str) -> dict[str, int | None]:
        """Decisions left in the current windows (None: no limit), for operators and tests."""
        counts, now = self._counts(), self._clock()
        left: dict[str, int | None] = {}
        for kind, subject in ((KEY, key_id), (OWNER, owner)):
            limit = _limit(self.limits, kind)
            current = counts.get(self._prefix(kind, subject))
            used = 0 if current is None or self._expired(current, now) else current.count
            left[_KINDS[kind]] = max(0, limit - used) if limit else None
        return left

    # --- the files ----------------------------------------------------------------------------
    @staticmethod
    def _prefix(kind: str, subject: str) -> str:
        # a hash: no request text becomes part of a path, and no key id or owner is readable here
        return f"{kind}-{hashlib.sha256(subject.encode()).hexdigest()[:40]}"

    def _expired(self, current: _Count, now: float) -> bool:
        return now >= current.start + self.limits.window_seconds

    def _check(
        self, counts: dict[str, _Count], subjects: list[tuple[str, str]], now: float, count: int = 1
    ) -> None:
        spent = []
        for kind, prefix in subjects:
            current = counts.get(prefix)
            if current is None or self._expired(current, now):
                current = _Count("", int(now), 0)  # a window this request would open
            if current.count + count > _limit(self.limits, kind):
                spent.append((kind, current))
        if spent:
            wait = max(current.start + self.limits.window_seconds - now for _, current in spent)
            which = " and ".join(
                f"this {_KINDS[kind]}'s {_limit(self.limits, kind)} decisions" for kind, _ in spent
            )
            raise BudgetSpent(
                f"{which[0].upper()}{which[1:]} per {self.limits.window_seconds:.0f} s are spent"
                + (f" for a call that shows {count}" if count > 1 else "")
                + f"; the window frees them in {math.ceil(wait)} s.",
                max(1, math.ceil(wait)),
            )

    def _counts(self) -> dict[str, _Count]:
        """Every subject's count by file prefix."""
        counts: dict[str, _Count] = {}
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return counts
        for name in names:
            kind, _, rest = name.partition("-")
            digest, _, window = rest.partition("-")
            start, _, count = window.partition("-")
            if kind not in _KINDS or not (start.isdigit() and count.isdigit()):
                continue
            current = _Count(name, int(start), int(count))
            prefix = f"{kind}-{digest}"
            known = counts.get(prefix)
            if known is not None:  # two files of one subject (never written so): keep the larger
                keep, drop = sorted((known, current), key=lambda c: (c.start, c.count))[::-1]
                (self.root / drop.name).unlink(missing_ok=True)
                current = keep
            counts[prefix] = current
        return counts

    def _prune(self, counts: dict[str, _Count], now: float, keep: set[str]) -> None:
        """Remove the files of windows that have ended (a key's vanish some day after its last use)."""
        for prefix, current in counts.items():
            if prefix not in keep and self._expired(current, now):
                (self.root / current.name).unlink(missing_ok=True)

    def _rename(self, prefix: str, current: _Count | None, start: int, count: int) -> None:
        target = self.root / f"{prefix}-{start}-{count}"
        if current is not None and (self.root / current.name).exists():
            os.replace(self.root / current.name, target)  # a rename: no free space needed
        else:
            with writing("a decision count", target):
                target.touch()
