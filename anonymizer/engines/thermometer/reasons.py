"""Encrypted reason codes of a two-class additive model: the decision and, per column, the points
the applicant lost against that column's best bin, from the very ciphertexts of a decision.

The served program is then a concrete *module* with two functions on the same arguments:
`score` (the decision circuit, unchanged) and `reasons`, whose output vector is

    [decision output, packed lost_1, ..., lost_m]      lost_c = best_c - points_c(level_c)

for the m columns with any points, packed: columns whose point ranges multiply to at most the
decision's table size share one lookup (mixed radix: `reason_groups`, `pack_reasons`; the
applicant unpacks them exactly, `unpack_reasons`). Each packed entry is refreshed by its own
lookup (a leveled-only output would give the points away, docs/privacy.md), all of them one
multi-table lookup (one batch for the runtime, docs/performance.md). Every lookup input is hinted to the score's
width so that the module needs exactly the decision circuit's keys: one evaluation key, one set
of ciphertexts, and nothing added to a decision. `module.compile_module` checks that and returns
None when concrete chose otherwise (the model is then served without reasons).
"""

import inspect
from dataclasses import dataclass

import numpy as np

from .decoding import place_values, unpack_reasons  # noqa: F401 - the packing's one definition
from .scoresum import ScoreSum


@dataclass(frozen=True)
class ReasonColumn:
    """One column of the reasons output: where its bits are and its points' range."""

    column: int  # position in the layout's column order (party by party)
    party: int  # the circuit argument holding its bits
    start: int  # its bits within that argument
    stop: int
    base: int  # its points at level 0
    best: int  # its most points (at its best bin)

    @property
    def radix(self) -> int:
        """How many values its points lost take (0 to best): its place in a packed output."""
        return self.best + 1


def reason_columns(program: ScoreSum) -> list[ReasonColumn]:
    """The columns with any points, in layout order (all others lose nothing anywhere)."""
    party_starts = np.cumsum([0] + [m.shape[0] for m in program.weights])
    column_starts = np.cumsum([0] + program.column_sizes)
    columns = []
    for index, (a, b) in enumerate(zip(column_starts[:-1], column_starts[1:])):
        party = int(np.searchsorted(party_starts, a, side="right") - 1)
        steps = np.concatenate(program.weights)[a:b, 0]
        if not steps.any():
            continue
        cumulative = np.concatenate([[0], np.cumsum(steps)])
        base = -int(cumulative.min())  # points are shifted so each column's worst bin scores 0
        columns.append(
            ReasonColumn(
                index,
                party,
                int(a - party_starts[party]),
                int(b - party_starts[party]),
                base,
                int(cumulative.max()) + base,
            )
        )
    return columns


def reason_groups(program: ScoreSum) -> list[list[int]]:
    """The reasons entries (indices into `reason_columns`) packed into shared lookups: each group's
    radices (best + 1) multiply to at most the decision's table size (first fit, widest first),
    entries in order within a group."""
    size = program.tables.shape[1]
    radices = [column.radix for column in reason_columns(program)]
    groups: list[list[int]] = []
    products: list[int] = []
    for entry in sorted(range(len(radices)), key=lambda e: (-radices[e], e)):
        fits = next((g for g, product in enumerate(products) if product * radices[entry] <= size), None)
        if fits is None:
            groups.append([entry])
            products.append(radices[entry])
        else:
            groups[fits].append(entry)
            products[fits] *= radices[entry]
    return sorted(sorted(group) for group in groups)


def pack_reasons(unpacked: np.ndarray, groups: list[list[int]], radices: list[int]) -> np.ndarray:
    """(rows, 1 + groups) what the `reasons` function outputs, from (rows, 1 + m) `reasons_outputs`."""
    packed = [
        sum(unpacked[:, 1 + entry] * weight for entry, weight in zip(group, place_values(group, radices)))
        for group in groups
    ]
    return np.column_stack([unpacked[:, 0], *packed]).astype(np.int64)


def reasons_outputs(program: ScoreSum, bits: list[np.ndarray]) -> np.ndarray:
    """(rows, 1 + m) the decision output and the points lost per entry, in the clear (the
    `reasons` function outputs them packed: `pack_reasons`)."""
    lost = [
        column.best
        - (
            bits[column.party][:, column.start : column.stop]
            @ program.weights[column.party][column.start : column.stop, 0]
            + column.base
        )
        for column in reason_columns(program)
    ]
    return np.column_stack([program.outputs(bits)[:, 0], *lost]).astype(np.int64)


def reasons_function(program: ScoreSum, party_names: list[str]):
    """The function concrete traces for `reasons` (same arguments as the decision circuit)."""
    columns = reason_columns(program)
    groups = reason_groups(program)
    radices = [column.radix for column in columns]
    width = int(np.log2(program.tables.shape[1]))
    decision_table = program.tables[0].tolist()
    offset, weights = program.offset, program.weights

    def reasons(**bits_by_party):
        from concrete import fhe

        total = offset[0]
        for name, matrix in zip(party_names, weights):
            if matrix.any():
                total = total + bits_by_party[name] @ matrix[:, 0]
        inputs, tables = [total], [fhe.LookupTable(decision_table)]
        for group in groups:
            packed = 0
            for entry, weight in zip(group, place_values(group, radices)):
                column = columns[entry]
                steps = weights[column.party][column.start : column.stop, 0]
                bits = bits_by_party[party_names[column.party]][column.start : column.stop]
                # points first (in [0, best]), then weighted: no partial sum leaves the table
                packed = packed + (bits @ steps + column.base) * weight
            inputs.append(fhe.hint(packed, bit_width=width))  # the decision's width: its keys suffice
            largest = int(np.prod([radices[e] for e in group])) - 1  # every entry at its best
            lost = [largest - v for v in range(largest + 1)]
            tables.append(fhe.LookupTable(lost + [0] * (2**width - len(lost))))
        # one lookup per group, all in one multi-table lookup: concrete runs them as one batch
        return fhe.LookupTable(tables)[fhe.array(inputs)]

    reasons.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in party_names]
    )
    return reasons
