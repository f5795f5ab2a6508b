"""Which data holder owns which feature columns, in circuit-argument order."""

import json
from pathlib import Path

import numpy as np


class LayoutError(ValueError):
    """The party layout is malformed or does not fit the data."""


class PartyLayout:
    """An ordered mapping party name -> column indices of X; party i is circuit argument i."""

    def __init__(self, columns: dict[str, list[int]]) -> None:
        if not isinstance(columns, dict) or not columns:
            raise LayoutError("The party layout must be a non-empty JSON object.")
        seen: set[int] = set()
        for name, indices in columns.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise LayoutError(f"Party name {name!r} must be a valid identifier.")
            if not isinstance(indices, list) or not indices:
                raise LayoutError(f"Party {name!r} must own a non-empty list of columns.")
            for index in indices:
                if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                    raise LayoutError(f"Party {name!r}: {index!r} is not a column index.")
                if index in seen:
                    raise LayoutError(f"Column {index} is owned by more than one party.")
                seen.add(index)
        self.columns = {name: list(indices) for name, indices in columns.items()}

    @classmethod
    def parse(cls, text_or_path: str) -> "PartyLayout":
        """Read a layout from JSON text or from a path to a JSON file."""
        text = text_or_path
        if not text.lstrip().startswith("{"):
            try:
                text = Path(text_or_path).read_text()
            except OSError as error:
                raise LayoutError(f"Cannot read the party layout file: {error}") from error
        try:
            return cls(json.loads(text))
        except json.JSONDecodeError as error:
            raise LayoutError(f"The party layout is not valid JSON: {error}") from error

    @classmethod
    def single(cls, n_features: int, name: str = "data_holder") -> "PartyLayout":
        """One party owning every column (the layout when none is configured)."""
        return cls({name: list(range(n_features))})

    @property
    def names(self) -> list[str]:
        """Party names in circuit-argument order."""
        return list(self.columns)

    @property
    def n_features(self) -> int:
        """Width of X the layout describes."""
        return sum(len(indices) for indices in self.columns.values())

    @property
    def argument_columns(self) -> np.ndarray:
        """Columns of X in the order the circuit's arguments concatenate them."""
        return np.concatenate([np.asarray(c) for c in self.columns.values()])

    def check_width(self, n_features: int) -> None:
        """Raise LayoutError unless every column 0..n_features-1 is owned exactly once."""
        owned = set(int(c) for c in self.argument_columns)
        missing = sorted(set(range(n_features)) - owned)
        extra = sorted(owned - set(range(n_features)))
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"columns {missing} belong to no party")
            if extra:
                problems.append(f"columns {extra} do not exist")
            raise LayoutError(
                f"The party layout {json.dumps(self.columns)} does not fit data with "
                f"{n_features} columns: {'; '.join(problems)}. Set ANONYMIZER_PARTIES."
            )

    def split(self, X: np.ndarray) -> list[np.ndarray]:
        """Each party's slice of the rows of X, in argument order."""
        return [X[:, indices] for indices in self.columns.values()]

    def index_of(self, party: str) -> int:
        """Circuit-argument position of `party`."""
        return self.names.index(party)

    def to_dict(self) -> dict[str, list[int]]:
        """The JSON-ready layout (same object as ANONYMIZER_PARTIES)."""
        return {name: list(indices) for name, indices in self.columns.items()}
