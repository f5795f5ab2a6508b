"""The served integer function of a tree or ensemble on threshold bits as *path costs*: linear
forms a backend without table lookups (Paillier) can compute.

Every node test is one threshold bit (see `encoding`); the condition a path puts on it is the
bit (going right) or its complement (going left). A leaf L at depth d_L is reached iff all d_L
conditions hold, so its path cost

    x_L = sum of its path's conditions - d_L  =  sum_p z_p @ A_p[:, L] + c_L

is 0 for the one reached leaf of each tree and in [-d_L, -1] for every other: a linear function
of the parties' bits (the "path cost" evaluation of Tai, Ma and Chow, ESORICS 2017). The served
function is the sum over the reached leaves of their values: votes as `LeafSum` packs them
(decoded alike), or boosted trees' integer scores at SCORE_BITS (no lookup to fit: sums are
exact). How a backend turns the path costs into an answer that shows only that sum is its own
business (paillier/answers.py).
"""

from dataclasses import dataclass

import numpy as np

from ...parties import PartyLayout
from .decoding import TreeDecoding
from .encoding import ThresholdEncoding
from .leafsum import NotCompilable, _bit_ids, _leaf_votes, _leaves, boosted_scores, node_paths

# boosted trees' summed score width: exact integer sums, so as wide as the additive scores
SCORE_BITS = 12


@dataclass
class LeafPaths(TreeDecoding):
    """Per leaf, its path cost's linear form over the parties' bits, its value and its tree."""

    kind = "leaf_paths"  # the metadata key its matrices are stored under

    forms: list[np.ndarray]  # per party (bits, leaves): each bit's coefficient, -1, 0 or +1
    constants: np.ndarray  # (leaves,) c_L: the left turns on the path minus its depth
    values: np.ndarray  # (leaves,) what the leaf adds to the output when reached
    trees: np.ndarray  # (leaves,) the index of each leaf's tree
    n_trees: int
    n_classes: int
    score_shift: int | None = None  # boosted models: log-odds = (output + shift) / scale
    score_scale: float | None = None

    @classmethod
    def from_trees(
        cls, trees: list, encoding: ThresholdEncoding, layout: PartyLayout, n_classes: int
    ) -> "LeafPaths":
        """Build from fitted scikit-learn trees (trained on `encoding` levels, `n_classes`)."""
        votes = [_leaf_votes(tree.tree_, len(trees), n_classes) for tree in trees]
        return cls._build(trees, votes, encoding, layout, n_classes=n_classes)

    @classmethod
    def from_boosted(
        cls,
        trees: list,
        leaf_values: list[np.ndarray],
        initial_log_odds: float,
        encoding: ThresholdEncoding,
        layout: PartyLayout,
    ) -> "LeafPaths":
        """Build from two-class boosted regression trees: `leaf_values[t][node]` is what tree t
        adds to the log-odds when the row lands in leaf `node`, scaled to SCORE_BITS integers."""
        leaves = [_leaves(t.tree_) for t in trees]
        scores, scale, shift = boosted_scores(leaf_values, initial_log_odds, leaves, 2**SCORE_BITS - 1)
        return cls._build(trees, scores, encoding, layout, n_classes=2, score_shift=shift, score_scale=scale)

    @classmethod
    def _build(cls, trees: list, node_values: list[np.ndarray], encoding, layout, **decoding) -> "LeafPaths":
        bit_id, starts = _bit_ids(encoding, layout)
        columns, constants, values, tree_of = [], [], [], []
        for index, tree in enumerate(trees):
            if tree.tree_.node_count < 2:
                raise NotCompilable("A tree without any split is a constant, not a path cost.")
            paths = node_paths(tree.tree_, bit_id)
            for leaf in _leaves(tree.tree_):
                form = np.zeros(int(starts[-1]), dtype=np.int64)
                for bit, goes_right in paths[leaf]:
                    form[bit] += 1 if goes_right else -1
                left_turns = sum(not goes_right for _, goes_right in paths[leaf])
                columns.append(form)
                constants.append(left_turns - len(paths[leaf]))
                values.append(int(node_values[index][leaf]))
                tree_of.append(index)
        stacked = np.column_stack(columns)
        if not np.any(values):
            raise NotCompilable("Every leaf adds nothing: the model ignores its input.")
        return cls(
            forms=[stacked[a:b] for a, b in zip(starts[:-1], starts[1:])],
            constants=np.asarray(constants, dtype=np.int64),
            values=np.asarray(values, dtype=np.int64),
            trees=np.asarray(tree_of, dtype=np.int64),
            n_trees=len(trees),
            **decoding,
        )

    @property
    def n_leaves(self) -> int:
        return len(self.values)

    @property
    def n_lookups(self) -> int:
        """No table lookup: path costs are linear."""
        return 0

    def path_costs(self, bits: list[np.ndarray]) -> np.ndarray:
        """(rows, leaves) x_L: 0 where the leaf is reached, negative elsewhere."""
        total = np.broadcast_to(self.constants, (bits[0].shape[0], self.n_leaves)).astype(np.int64)
        for z, form in zip(bits, self.forms):
            total = total + z.astype(np.int64) @ form
        return total

    def outputs(self, bits: list[np.ndarray]) -> np.ndarray:
        """The served function in the clear: the reached leaves' values summed, one per row."""
        return (self.path_costs(bits) == 0).astype(np.int64) @ self.values

    def to_dict(self) -> dict:
        """JSON-ready matrices."""
        return {
            "forms": [m.tolist() for m in self.forms],
            "constants": self.constants.tolist(),
            "values": self.values.tolist(),
            "trees": self.trees.tolist(),
            **self.decoding,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "LeafPaths":
        leaves = len(data["values"])
        return cls(
            forms=[np.asarray(m, dtype=np.int64).reshape(len(m), leaves) for m in data["forms"]],
            constants=np.asarray(data["constants"], dtype=np.int64),
            values=np.asarray(data["values"], dtype=np.int64),
            trees=np.asarray(data["trees"], dtype=np.int64),
            n_trees=int(data["n_trees"]),
            n_classes=int(data["n_classes"]),
            score_shift=None if data.get("score_shift") is None else int(data["score_shift"]),
            score_scale=None if data.get("score_scale") is None else float(data["score_scale"]),
        )
