"""The served integer function of a tree or forest on threshold bits, and its FHE circuit.

Every node test is one encrypted bit a party sent (see `encoding`), so no comparison runs under
encryption. The trees are cut into *blocks*: a block is a node r and the internal nodes of the
next few levels below it. Its lookup input packs, linearly (no bootstrap), how many conditions on
the path to r hold (`path`, between 0 and r's depth; r is reached iff all do) and the block's own
node bits:

    w = path * 2**m + sum_i bit_i * 2**i            (m = internal nodes in the block)

and one table lookup maps w to the vote of the leaf the bits lead to inside the block, or 0 when
r is not reached or the route leaves the block. Exactly one block per tree fires, so adding the
lookups gives the votes. A dynamic programme picks the cut that needs the fewest lookups with
every w below 2**block_bits; blocks that hold only zero votes cost nothing.

Votes: binary models output the number of trees voting for the second class; a single tree with
K > 2 classes outputs the index of its class; a forest of T trees with K > 2 classes packs the
votes for classes 1..K-1 in base T+1 (class 0 gets the rest).

Scores (boosted trees, two classes): each tree's leaf values (log-odds steps) are shifted so the
tree's smallest is 0 and scaled to integers whose sum over the trees stays below 2**SCORE_BITS;
the output plus `score_shift` over `score_scale` is the model's log-odds for the second class.
"""

import inspect
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ...parties import PartyLayout
from .decoding import TreeDecoding
from .encoding import ThresholdEncoding

# the concrete configuration every compile uses (keys and inputs compressed)
COMPILE_OPTIONS = dict(
    compress_evaluation_keys=True,
    compress_input_ciphertexts=True,
    single_precision=False,
    global_p_error=1e-5,
    p_error=None,
)


# width of a boosted model's summed score: a 4-bit sum runs as fast as a tree's votes, 5 bits
# and more cost ~30 % more per lookup on this machine (measured), for no accuracy on the stub
SCORE_BITS = 4


class NotCompilable(ValueError):
    """The model cannot become a circuit (no split at all, or too deep for the block width)."""


@dataclass
class Block:
    """One lookup: the packed-input weights of its conditions and its table."""

    offset: int
    terms: list[tuple[int, int]]  # (global feature-bit id, signed weight)
    table: list[int]


@dataclass
class LeafSum(TreeDecoding):
    """Clear matrices of the circuit; party p's bit vector is circuit argument p."""

    kind = "leaf_sum"  # the metadata key its matrices are stored under

    plus: list[np.ndarray]  # per party (bits, blocks): non-negative weights added
    minus: list[np.ndarray]  # per party (bits, blocks): non-negative weights subtracted
    offset: np.ndarray  # (blocks,)
    tables: np.ndarray  # (blocks, 2**block_bits)
    n_trees: int
    n_classes: int
    score_shift: int | None = None  # set for boosted models: log-odds = (output + shift) / scale
    score_scale: float | None = None
    # the largest output any input can give (each tree's largest leaf, summed); 0: unknown. The
    # circuit's output is sized for it, not only for what the compile inputset reaches.
    max_output: int = 0

    @classmethod
    def from_trees(
        cls,
        trees: list,
        encoding: ThresholdEncoding,
        layout: PartyLayout,
        n_classes: int,
        block_bits: int,
    ) -> "LeafSum":
        """Build from fitted scikit-learn trees (trained on `encoding` levels, `n_classes`)."""
        bit_id, starts = _bit_ids(encoding, layout)
        blocks, max_output = [], 0
        for tree in trees:
            if tree.tree_.node_count < 2:
                raise NotCompilable("A tree without any split is a constant, not a circuit.")
            votes = _leaf_votes(tree.tree_, len(trees), n_classes)
            blocks += _TreeCutter(tree.tree_, votes, bit_id, block_bits).blocks()
            max_output += int(np.max(votes[_leaves(tree.tree_)]))
        if not blocks:
            raise NotCompilable("Every leaf votes for the first class: nothing to compute.")
        return cls(*_matrices(blocks, starts), n_trees=len(trees), n_classes=n_classes, max_output=max_output)

    @classmethod
    def from_boosted(
        cls,
        trees: list,
        leaf_values: list[np.ndarray],
        initial_log_odds: float,
        encoding: ThresholdEncoding,
        layout: PartyLayout,
        block_bits: int,
    ) -> "LeafSum":
        """Build from two-class boosted regression trees: `leaf_values[t][node]` is what tree t
        adds to the log-odds (learning rate included) when the row lands in leaf `node`."""
        bit_id, starts = _bit_ids(encoding, layout)
        leaves = [_leaves(t.tree_) for t in trees]
        scores, scale, shift = boosted_scores(leaf_values, initial_log_odds, leaves, 2**SCORE_BITS - 1)
        blocks, max_output = [], 0
        for tree, tree_scores, leaf in zip(trees, scores, leaves):
            blocks += _TreeCutter(tree.tree_, tree_scores, bit_id, block_bits).blocks()
            max_output += int(np.max(tree_scores[leaf]))
        if not blocks:
            raise NotCompilable("Every leaf rounds to the same score: the model ignores its input.")
        return cls(
            *_matrices(blocks, starts),
            n_trees=len(trees),
            n_classes=2,
            score_shift=shift,
            score_scale=scale,
            max_output=max_output,
        )

    @classmethod
    def constant(cls, sizes: list[int], n_classes: int, winner: int, block_bits: int) -> "LeafSum":
        """Always the vote of class `winner` (the majority predictor): one lookup that ignores
        its input, the first bit of the first party, so the output is still encrypted."""
        vote = int(_leaf_votes_of(np.array([winner]), 1, n_classes)[0])
        plus = [np.zeros((size, 1), dtype=np.int64) for size in sizes]
        plus[0][0, 0] = 1
        return cls(
            plus=plus,
            minus=[np.zeros((size, 1), dtype=np.int64) for size in sizes],
            offset=np.zeros(1, dtype=np.int64),
            tables=np.array([[vote, vote] + [0] * (2**block_bits - 2)], dtype=np.int64),
            n_trees=1,
            n_classes=n_classes,
            max_output=vote,
        )

    @property
    def n_lookups(self) -> int:
        """Table lookups (programmable bootstraps) per prediction."""
        return len(self.offset)

    @property
    def reads_bits(self) -> list[np.ndarray]:
        """Per party, which of its bits the lookups read (the others never change an output)."""
        return [
            (plus != 0).any(axis=1) | (minus != 0).any(axis=1) for plus, minus in zip(self.plus, self.minus)
        ]

    @property
    def block_bits(self) -> int:
        return int(np.log2(self.tables.shape[1]))

    def packed_inputs(self, bits: list[np.ndarray]) -> np.ndarray:
        """(rows, blocks) lookup inputs w."""
        # float64 products use BLAS (numpy's integer matmul does not) and are exact for these
        # small integers
        total = np.broadcast_to(self.offset, (bits[0].shape[0], self.n_lookups)).astype(np.float64)
        for z, plus, minus in zip(bits, self.plus, self.minus):
            total += z.astype(np.float64) @ (plus - minus).astype(np.float64)
        return np.rint(total).astype(np.int64)

    def outputs(self, bits: list[np.ndarray]) -> np.ndarray:
        """What the circuit outputs, in the clear: one integer per row."""
        w = self.packed_inputs(bits)
        return self.tables[np.arange(self.n_lookups), w].sum(axis=1)

    def circuit_function(self, party_names: list[str]):
        """The function concrete traces: one encrypted bit vector per party, named after it."""
        offset, plus, minus, max_output = self.offset, self.plus, self.minus, self.max_output
        tables = self.tables.tolist()

        def leaf_sum(**bits_by_party):
            from concrete import fhe

            party_bits = [bits_by_party[name] for name in party_names]
            # additions first, then subtractions: every partial sum stays in [0, 2**block_bits)
            total = offset
            for z, matrix in zip(party_bits, plus):
                if matrix.any():
                    total = total + z @ matrix
            for z, matrix in zip(party_bits, minus):
                if matrix.any():
                    total = total - z @ matrix
            lookups = fhe.LookupTable([fhe.LookupTable(t) for t in tables])
            output = np.sum(lookups[total], axis=-1)  # one sum per row of a batched argument
            return fhe.hint(output, can_store=max_output) if max_output else output

        leaf_sum.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in party_names]
        )
        return leaf_sum

    def compile(self, party_names: list[str], bits: list[np.ndarray]):
        """Compile with concrete; `bits` (one array per party) are the inputset's rows."""
        from concrete import fhe

        compiler = fhe.Compiler(
            self.circuit_function(party_names), {name: "encrypted" for name in party_names}
        )
        return compiler.compile(self.inputset(bits), **COMPILE_OPTIONS)

    def inputset(self, bits: list[np.ndarray]) -> list[tuple]:
        """The compile inputset: all-zero and all-one vectors (they bound every partial sum from
        both sides), then the rows of `bits` (one array per party)."""
        inputset = [tuple(np.zeros(z.shape[1], dtype=np.int64) for z in bits)]
        inputset += [tuple(np.ones(z.shape[1], dtype=np.int64) for z in bits)]
        return inputset + [tuple(z[i] for z in bits) for i in range(bits[0].shape[0])]

    def to_dict(self) -> dict:
        """JSON-ready matrices."""
        return {
            "plus": [m.tolist() for m in self.plus],
            "minus": [m.tolist() for m in self.minus],
            "offset": self.offset.tolist(),
            "tables": self.tables.tolist(),
            **self.decoding,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "LeafSum":
        blocks = len(data["offset"])

        def matrices(key):
            return [np.asarray(m, dtype=np.int64).reshape(len(m), blocks) for m in data[key]]

        return cls(
            plus=matrices("plus"),
            minus=matrices("minus"),
            offset=np.asarray(data["offset"], dtype=np.int64),
            tables=np.asarray(data["tables"], dtype=np.int64).reshape(blocks, -1),
            n_trees=int(data["n_trees"]),
            n_classes=int(data["n_classes"]),
            score_shift=None if data.get("score_shift") is None else int(data["score_shift"]),
            score_scale=None if data.get("score_scale") is None else float(data["score_scale"]),
        )


def boosted_scores(
    leaf_values: list[np.ndarray], initial_log_odds: float, leaves: list[np.ndarray], budget: int
) -> tuple[list[np.ndarray], float, int]:
    """Boosted trees' node values as integers: each tree's shifted so its lowest leaf is 0 and
    scaled so the largest sum is at most `budget`; the scale, and the shift that makes
    (output + shift) / scale the log-odds."""
    lowest = [float(np.min(v[leaf])) for v, leaf in zip(leaf_values, leaves)]
    scores, scale = _integer_scores(leaf_values, lowest, leaves, budget)
    return scores, scale, int(np.rint((initial_log_odds + sum(lowest)) * scale))


def _integer_scores(leaf_values, lowest, leaves, budget: int) -> tuple[list[np.ndarray], float]:
    """Each tree's node values minus its lowest leaf, scaled and rounded so that the largest
    possible sum (each tree's largest leaf) is at most `budget`; and the scale."""
    spread = sum(float(np.max(v[leaf])) - low for v, leaf, low in zip(leaf_values, leaves, lowest))
    if spread <= 0:
        raise NotCompilable("Every tree adds a constant: the model ignores its input.")
    scale = budget / spread
    while True:  # rounding up may overshoot the budget by up to half a step per tree
        scores = [np.rint((v - low) * scale).astype(np.int64) for v, low in zip(leaf_values, lowest)]
        largest = sum(int(np.max(s[leaf])) for s, leaf in zip(scores, leaves))
        if largest <= budget:
            return scores, scale
        scale *= (budget - 0.5) / largest


def _bit_ids(encoding: ThresholdEncoding, layout: PartyLayout):
    """(bit_id(feature, level) -> row of the stacked party matrices, each party's first row)."""
    columns = list(layout.columns.values())
    owner = {c: p for p, cols in enumerate(columns) for c in cols}
    starts = encoding.bit_layout(layout).party_starts

    def bit_id(feature: int, level: int) -> int:
        party = owner[feature]
        return int(starts[party]) + encoding.bit_position(columns[party], feature, level)

    return bit_id, starts


def _matrices(blocks: list[Block], starts: np.ndarray):
    """(plus, minus, offset, tables) of `blocks`, the matrices split per party."""
    plus = np.zeros((int(starts[-1]), len(blocks)), dtype=np.int64)
    minus = np.zeros_like(plus)
    for index, block in enumerate(blocks):
        for bit, weight in block.terms:
            (plus if weight > 0 else minus)[bit, index] += abs(weight)
    return (
        [plus[a:b] for a, b in zip(starts[:-1], starts[1:])],
        [minus[a:b] for a, b in zip(starts[:-1], starts[1:])],
        np.array([b.offset for b in blocks], dtype=np.int64),
        np.array([b.table for b in blocks], dtype=np.int64),
    )


def _leaves(tree) -> np.ndarray:
    """Node ids of the tree's leaves."""
    return np.flatnonzero(tree.children_left == tree.children_right)


def _leaf_votes(tree, n_trees: int, n_classes: int) -> np.ndarray:
    """Each node's output if it is a leaf: 0/1 for binary, base-(T+1) packed one-hot otherwise."""
    return _leaf_votes_of(np.argmax(tree.value[:, 0, :], axis=1), n_trees, n_classes)


def _leaf_votes_of(winners: np.ndarray, n_trees: int, n_classes: int) -> np.ndarray:
    """The output of one tree voting for each of `winners` (class indices)."""
    if n_classes == 2 or n_trees == 1:
        return winners.astype(np.int64)
    return np.where(winners == 0, 0, (n_trees + 1) ** np.maximum(winners - 1, 0)).astype(np.int64)


def node_bit(tree, node: int, bit_id) -> int:
    """The stacked bit a node tests."""
    # trained on integer levels: threshold k + 0.5 tests level > k, i.e. bit k of the feature
    return bit_id(int(tree.feature[node]), int(np.floor(tree.threshold[node])))


def node_paths(tree, bit_id) -> dict[int, list[tuple[int, bool]]]:
    """Each node's path from the root of a scikit-learn tree: [(bit id of the tested node, goes right)]."""
    paths = {0: []}
    stack = [0]
    while stack:
        node = stack.pop()
        left, right = int(tree.children_left[node]), int(tree.children_right[node])
        if left == right:
            continue
        bit = node_bit(tree, node, bit_id)
        paths[left] = paths[node] + [(bit, False)]
        paths[right] = paths[node] + [(bit, True)]
        stack += [left, right]
    return paths


class _TreeCutter:
    """The block cut of one scikit-learn tree with the fewest non-zero blocks."""

    def __init__(self, tree, votes: np.ndarray, bit_id, block_bits: int) -> None:
        self.tree = tree
        self.votes = votes
        self.bit_id = bit_id
        self.block_bits = block_bits
        self.cover = lru_cache(maxsize=None)(self._cover)

    def _is_leaf(self, node: int) -> bool:
        return self.tree.children_left[node] == self.tree.children_right[node]

    def _children(self, node: int) -> tuple[int, int]:
        return int(self.tree.children_left[node]), int(self.tree.children_right[node])

    def _block(self, node: int, height: int) -> tuple[list[int], list[int], list[int]]:
        """(internal nodes, leaves, frontier internal nodes) of the block (node, height)."""
        internal, leaves, frontier = [], [], []
        level = [node]
        for _ in range(height):
            internal += [n for n in level if not self._is_leaf(n)]
            leaves += [n for n in level if self._is_leaf(n)]
            level = [c for n in level if not self._is_leaf(n) for c in self._children(n)]
        leaves += [n for n in level if self._is_leaf(n)]
        frontier = [n for n in level if not self._is_leaf(n)]
        return internal, leaves, frontier

    def _fits(self, depth: int, internal_nodes: int) -> bool:
        # w ranges over (depth + 1) path counts times 2**m bit patterns
        return (depth + 1) * 2**internal_nodes <= 2**self.block_bits

    def _cover(self, node: int, depth: int) -> tuple[int, tuple]:
        """(lookups, choices) covering the votes of node's subtree; a choice is (node, height)."""
        if self._is_leaf(node):
            if self.votes[node] == 0:
                return 0, ()
            if not self._fits(depth, 0):
                raise NotCompilable(f"A leaf at depth {depth} needs more than {self.block_bits} bits.")
            return 1, ((node, 0),)
        (left_cost, left_choices), (right_cost, right_choices) = (
            self.cover(child, depth + 1) for child in self._children(node)
        )
        best = (left_cost + right_cost, left_choices + right_choices)
        height = 1
        while True:
            internal, leaves, frontier = self._block(node, height)
            if not self._fits(depth, len(internal)):
                break
            cost = int(any(self.votes[leaf] for leaf in leaves))
            choices = ((node, height),) if cost else ()
            for inner in frontier:
                inner_cost, inner_choices = self.cover(inner, depth + height)
                cost += inner_cost
                choices += inner_choices
            if cost < best[0]:
                best = (cost, choices)
            if not frontier:
                break
            height += 1
        return best

    def blocks(self) -> list[Block]:
        """The chosen blocks with their packed-input terms and tables."""
        paths = node_paths(self.tree, self.bit_id)
        _, choices = self.cover(0, 0)
        return [self._make_block(node, height, paths[node]) for node, height in choices]

    def _bit(self, node: int) -> int:
        return node_bit(self.tree, node, self.bit_id)

    def _make_block(self, node: int, height: int, path: list[tuple[int, bool]]) -> Block:
        internal = self._block(node, height)[0] if height else []
        scale = 2 ** len(internal)
        offset = 0
        terms = []
        for bit, goes_right in path:
            terms.append((bit, scale if goes_right else -scale))
            offset += 0 if goes_right else scale
        terms += [(self._bit(n), 2**i) for i, n in enumerate(internal)]
        table = [0] * 2**self.block_bits
        reached = len(path) * scale  # every path condition holds
        for pattern in range(scale):
            target = self._route(node, internal, pattern)
            table[reached + pattern] = 0 if target is None else int(self.votes[target])
        return Block(offset=offset, terms=terms, table=table)

    def _route(self, node: int, internal: list[int], pattern: int) -> int | None:
        """The node where the block's bits `pattern` lead from `node` (a leaf or a frontier node)."""
        position = {n: i for i, n in enumerate(internal)}
        while node in position:
            left, right = self._children(node)
            node = right if (pattern >> position[node]) & 1 else left
        return node if self._is_leaf(node) else None
