"""Batched explanations: the decision at every level of one feature, in one encrypted call.

A thermometer program's lookup inputs are affine in the parties' bits, and a feature at level j
has a known code (j ones, then zeros). So the server can evaluate the decision with one feature's
bits replaced by each level's code, on the very ciphertexts of a decision: `explain/<feature>`
outputs one decision output per level, levels in order, each from its own lookups, under the
decision's keys (module.py checks that). One call pays concrete's per-call key conversion once
where a search decision by decision pays it once per value tried (docs/performance.md).

What the caller learns is what a decision at each level would show, nothing more; a call counts
as that many decisions against the decision budget and against staged inputs' uses.
"""

import inspect
from dataclasses import dataclass

import numpy as np

# a feature whose batch would need more lookups than this is searched decision by decision (the
# module's compile time and one call's length grow with it)
MAX_EXPLAIN_LOOKUPS = 512


@dataclass(frozen=True)
class ExplainColumn:
    """One feature a batched explanation covers: where its bits are in its party's argument."""

    feature: int  # the column index /fhe/info uses
    party: int  # the circuit argument holding its bits
    start: int  # its bits within that argument
    stop: int
    party_bits: int  # the argument's length

    @property
    def levels(self) -> int:
        """Its thermometer levels: one more than its bits."""
        return self.stop - self.start + 1

    @property
    def function_name(self) -> str:
        """The concrete function that computes its batch."""
        return f"explain_{self.feature}"

    def kept_bits(self) -> np.ndarray:
        """(party_bits,) 1 where the argument's bit is kept, 0 on this feature's bits."""
        keep = np.ones(self.party_bits, dtype=np.int64)
        keep[self.start : self.stop] = 0
        return keep

    def level_codes(self) -> np.ndarray:
        """(levels, party_bits) this feature's code at each level, zero elsewhere."""
        codes = np.zeros((self.levels, self.party_bits), dtype=np.int64)
        width = self.stop - self.start
        codes[:, self.start : self.stop] = np.arange(width)[None, :] < np.arange(self.levels)[:, None]
        return codes


def explain_columns(program, encoding, layout) -> list[ExplainColumn]:
    """The features worth a batch: read by the program (another never changes a decision) and
    within MAX_EXPLAIN_LOOKUPS."""
    reads = program.reads_bits
    columns = []
    for party, features in enumerate(layout.columns.values()):
        start = 0
        for feature in features:
            stop = start + encoding.n_bits(feature)
            column = ExplainColumn(int(feature), party, start, stop, len(reads[party]))
            if reads[party][start:stop].any() and column.levels * program.n_lookups <= MAX_EXPLAIN_LOOKUPS:
                columns.append(column)
            start = stop
    return columns


def explain_outputs(program, bits: list[np.ndarray], column: ExplainColumn) -> np.ndarray:
    """(rows, levels, ...) what `explain/<feature>` outputs for these rows, in the clear."""
    outputs = []
    for code in column.level_codes():
        moved = list(bits)
        moved[column.party] = bits[column.party] * column.kept_bits() + code
        outputs.append(program.outputs(moved))
    return np.stack(outputs, axis=1)


def explain_circuit_function(program, party_names: list[str], column: ExplainColumn):
    """The function concrete traces for `explain/<feature>` (the decision's arguments): the
    decision's own function on a (levels, bits) argument for the feature's party."""
    decide = program.circuit_function(party_names)
    name = party_names[column.party]
    kept, codes = column.kept_bits(), column.level_codes()

    def explain(**bits_by_party):
        return decide(**{**bits_by_party, name: bits_by_party[name] * kept + codes})

    explain.__signature__ = inspect.signature(decide)  # type: ignore[attr-defined]
    return explain
