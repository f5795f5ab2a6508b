"""The served integer function of an additive model on threshold bits (a scorecard, a GAM), and
its FHE circuit: one table lookup per class score, nothing else.

A column's *points* are a step function of its level, and the thermometer makes every step
function a weighted sum of the column's bits: points(level) = points(0) + sum_{j < level} w_j.
So each class's score is a leveled weighted sum of the parties' bits (no bootstrap),

    u_k = offset_k + sum_p z_p @ W_p[:, k]          in [0, 2**score_bits) for every valid input

and one lookup per class turns u_k into the output. The lookup is what keeps the weights from
the key holder: a leveled-only output is a known linear function of the party's own input masks,
so one decrypted answer would give the weights away by linear algebra; a bootstrapped output is
a fresh encryption under the key (see docs/privacy.md for what it does not hide).

Outputs: two classes, one score o = u (log-odds of the second class = (o + score_shift) /
score_scale, the label is o + score_shift > 0); K > 2 classes, K scores o_k = u_k + d_k (the
lookup adds each class's constant), log-odds up to a common constant o_k / score_scale, the label
is the largest (the first on ties). Points are scaled so the widest class score spans
2**score_bits - 1 and rounded level by level (the cumulative points, not each step), and
selection measures the rounded model.
"""

import hashlib
import inspect
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from ...parties import PartyLayout
from .decoding import decode_shares
from .encoding import ThresholdEncoding
from .leafsum import COMPILE_OPTIONS, NotCompilable

# fitted regressions kept for reuse: selection measures one fit at several score widths
_FITS: OrderedDict = OrderedDict()
_FITS_KEPT = 64


def fit_logistic(
    bits: np.ndarray,
    y: np.ndarray,
    column_sizes: list[int],
    regularization: float,
    linear: bool,
    directions: tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """(weights per bit (outputs, bits), intercepts) of an L2-regularised logistic regression
    (multinomial for K > 2 classes; y holds class indices): on the bits, a free step per bin, or
    on the standardised levels (`linear`), one weight per column. `directions` (one per column,
    two classes only) makes a column's points non-decreasing (+1) or non-increasing (-1) in its
    level for the second class. Cached by the data's digest."""
    digest = hashlib.sha256(bits.tobytes() + y.tobytes() + str(bits.shape).encode()).hexdigest()
    key = (digest, regularization, linear, tuple(directions))
    if key not in _FITS:
        owner = np.repeat(np.arange(len(column_sizes)), column_sizes)  # each bit's column
        if linear:  # a column's level is the count of its set bits
            levels = np.add.reduceat(bits, np.cumsum([0] + column_sizes[:-1]), axis=1).astype(np.float64)
            spread = levels.std(axis=0) + 1e-9
            features = levels / spread
        else:
            features = bits.astype(np.float64)
        if any(directions):
            signs = np.asarray(directions) if linear else np.asarray(directions)[owner]
            coefficients, intercepts = _bounded_logistic(features, y, regularization, signs)
        else:
            regression = LogisticRegression(C=regularization, max_iter=2000).fit(features, y)
            coefficients, intercepts = regression.coef_.copy(), regression.intercept_.copy()
        weights = (coefficients / spread)[:, owner] if linear else coefficients
        _FITS[key] = (weights, intercepts)
        while len(_FITS) > _FITS_KEPT:
            _FITS.popitem(last=False)
    _FITS.move_to_end(key)
    return _FITS[key]


def _bounded_logistic(features: np.ndarray, y: np.ndarray, regularization: float, signs: np.ndarray):
    """Two-class logistic regression with sign bounds on the coefficients, scikit-learn's
    objective (0.5 |w|^2 + C sum of log-losses) by scipy's L-BFGS-B: scikit-learn has no bounds."""
    from scipy.optimize import minimize

    if len(np.unique(y)) != 2:
        raise ValueError("Monotone points are offered for two classes only.")
    target = np.where(y == np.max(y), 1.0, -1.0)

    def objective(theta):
        w, b = theta[:-1], theta[-1]
        margin = target * (features @ w + b)
        loss = np.logaddexp(0.0, -margin).sum()
        slope = -target * expit(-margin)
        gradient = np.append(features.T @ slope * regularization + w, slope.sum() * regularization)
        return 0.5 * w @ w + regularization * loss, gradient

    bounds = [(0.0, None) if s > 0 else (None, 0.0) if s < 0 else (None, None) for s in signs]
    start = np.zeros(features.shape[1] + 1)
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds + [(None, None)])
    return result.x[None, :-1], result.x[-1:]


def column_points(weights: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Each column's points at each level (0 .. its bit count) from one class's bit weights."""
    starts = np.cumsum([0] + sizes)
    return [np.concatenate([[0.0], np.cumsum(weights[a:b])]) for a, b in zip(starts[:-1], starts[1:])]


@dataclass
class ScoreSum:
    """Clear matrices of the additive circuit; party p's bit vector is circuit argument p."""

    kind = "score_sum"  # the metadata key its matrices are stored under

    weights: list[np.ndarray]  # per party (bits, outputs): signed integer points per bit
    offset: np.ndarray  # (outputs,): every u_k's points at level 0
    tables: np.ndarray  # (outputs, 2**score_bits): the lookup of each output
    column_sizes: list[int]  # each column's bit count, columns in party order
    n_classes: int
    score_scale: float
    score_shift: int | None = None  # two classes: log-odds = (output + shift) / scale

    @classmethod
    def from_logistic(
        cls,
        coefficients: np.ndarray,
        intercepts: np.ndarray,
        encoding: ThresholdEncoding,
        layout: PartyLayout,
        n_classes: int,
        score_bits: int,
    ) -> "ScoreSum":
        """Integer points from a logistic regression fitted on the layout's stacked party bits."""
        bit_layout = encoding.bit_layout(layout)
        sizes = list(bit_layout.column_bits)
        points = [column_points(w, sizes) for w in coefficients]
        constants = intercepts + np.array([sum(p.min() for p in cls_points) for cls_points in points])
        shifted = [[p - p.min() for p in cls_points] for cls_points in points]
        rounded, scale = _integer_points(shifted, 2**score_bits - 1)
        weights = np.array([np.concatenate([np.diff(p) for p in cls_points]) for cls_points in rounded]).T
        offset = np.array([sum(int(p[0]) for p in cls_points) for cls_points in rounded], dtype=np.int64)
        levels = np.arange(2**score_bits)
        if n_classes == 2:
            tables = levels[None, :]
            shift = int(np.rint(constants[0] * scale))
        else:
            lifts = np.rint(constants * scale).astype(np.int64)
            tables = levels[None, :] + (lifts - lifts.min())[:, None]
            shift = None
        starts = bit_layout.party_starts
        return cls(
            weights=[weights[a:b].astype(np.int64) for a, b in zip(starts[:-1], starts[1:])],
            offset=offset,
            tables=tables.astype(np.int64),
            column_sizes=sizes,
            n_classes=n_classes,
            score_scale=float(scale),
            score_shift=shift,
        )

    @property
    def n_outputs(self) -> int:
        return len(self.offset)

    @property
    def n_lookups(self) -> int:
        """Table lookups (programmable bootstraps) per prediction: one per output."""
        return self.n_outputs

    @property
    def reads_bits(self) -> list[np.ndarray]:
        """Per party, which of its bits score any points (the others never change an output)."""
        return [(matrix != 0).any(axis=1) for matrix in self.weights]

    def sums(self, bits: list[np.ndarray]) -> np.ndarray:
        """(rows, outputs) lookup inputs u (float64 products use BLAS and are exact here)."""
        total = np.broadcast_to(self.offset, (bits[0].shape[0], self.n_outputs)).astype(np.float64)
        for z, weights in zip(bits, self.weights):
            total += z.astype(np.float64) @ weights.astype(np.float64)
        return np.rint(total).astype(np.int64)

    def outputs(self, bits: list[np.ndarray]) -> np.ndarray:
        """What the circuit outputs, in the clear: (rows, outputs) integers."""
        u = self.sums(bits)
        if u.min() < 0 or u.max() >= self.tables.shape[1]:
            raise ValueError("A class score is outside its lookup: the bits are not thermometer bits.")
        return self.tables[np.arange(self.n_outputs), u]

    @property
    def decoding(self) -> dict:
        """What a party needs to turn decrypted outputs into class shares (`decode_shares`)."""
        return {
            "n_classes": self.n_classes,
            "score_outputs": self.n_outputs,
            "score_shift": self.score_shift,
            "score_scale": self.score_scale,
        }

    def shares(self, outputs: np.ndarray) -> np.ndarray:
        """(rows, classes) probabilities decoded from circuit outputs."""
        return decode_shares(outputs, **self.decoding)

    def extreme_bits(self) -> list[tuple]:
        """Valid inputs (thermometer bits per party) at every class score's minimum and maximum,
        so the compiler sizes each sum for every input, not only for the rows it was shown."""
        stacked = np.concatenate(self.weights)
        party_starts = np.cumsum([0] + [m.shape[0] for m in self.weights])
        column_starts = np.cumsum([0] + self.column_sizes)
        inputs = []
        for k in range(self.n_outputs):
            for pick in (np.argmin, np.argmax):
                bits = []
                for a, b in zip(column_starts[:-1], column_starts[1:]):
                    level = int(pick(np.concatenate([[0], np.cumsum(stacked[a:b, k])])))
                    bits.append((np.arange(b - a) < level).astype(np.int64))
                flat = np.concatenate(bits)
                inputs.append(tuple(flat[a:b] for a, b in zip(party_starts[:-1], party_starts[1:])))
        return inputs

    @classmethod
    def constant(cls, bit_layout, n_classes: int, label: int) -> "ScoreSum":
        """An additive model that always decides class index `label` (selection's last resort on
        a backend without lookups): every point 0."""
        if n_classes == 2:
            tables, shift = np.zeros((1, 2), dtype=np.int64), 1 if label == 1 else 0
        else:
            tables, shift = np.zeros((n_classes, 2), dtype=np.int64), None
            tables[label] = 1
        return cls(
            weights=[np.zeros((bits, len(tables)), dtype=np.int64) for bits in bit_layout.party_bits],
            offset=np.zeros(len(tables), dtype=np.int64),
            tables=tables,
            column_sizes=list(bit_layout.column_bits),
            n_classes=n_classes,
            score_scale=1.0,
            score_shift=shift,
        )

    @property
    def gives_reasons(self) -> bool:
        """Whether the program can give reason codes: two-class scores (points per column)."""
        return self.n_classes == 2

    def circuit_function(self, party_names: list[str]):
        """The function concrete traces: one encrypted bit vector per party, named after it."""
        offset, weights = self.offset, self.weights
        tables = self.tables.tolist()

        def score_sum(**bits_by_party):
            from concrete import fhe

            total = offset
            for name, matrix in zip(party_names, weights):
                if matrix.any():
                    total = total + bits_by_party[name] @ matrix
            lookups = fhe.LookupTable([fhe.LookupTable(t) for t in tables])
            return lookups[total]

        score_sum.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in party_names]
        )
        return score_sum

    def compile(self, party_names: list[str], bits: list[np.ndarray]):
        """Compile with concrete; `bits` (one array per party) are the inputset's rows."""
        from concrete import fhe

        if not any(m.any() for m in self.weights):
            raise NotCompilable("Every point rounds to zero: the model ignores its input.")
        compiler = fhe.Compiler(
            self.circuit_function(party_names), {name: "encrypted" for name in party_names}
        )
        return compiler.compile(self.inputset(bits), **COMPILE_OPTIONS)

    def inputset(self, bits: list[np.ndarray]) -> list[tuple]:
        """The compile inputset: every score's extremes, then the rows of `bits` (one array per party)."""
        return self.extreme_bits() + [tuple(z[i] for z in bits) for i in range(bits[0].shape[0])]

    def to_dict(self) -> dict:
        """JSON-ready matrices."""
        return {
            "weights": [m.tolist() for m in self.weights],
            "offset": self.offset.tolist(),
            "tables": self.tables.tolist(),
            "column_sizes": self.column_sizes,
            **self.decoding,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ScoreSum":
        outputs = len(data["offset"])
        return cls(
            weights=[np.asarray(m, dtype=np.int64).reshape(len(m), outputs) for m in data["weights"]],
            offset=np.asarray(data["offset"], dtype=np.int64),
            tables=np.asarray(data["tables"], dtype=np.int64).reshape(outputs, -1),
            n_classes=int(data["n_classes"]),
            score_scale=float(data["score_scale"]),
            column_sizes=[int(n) for n in data["column_sizes"]],
            score_shift=None if data.get("score_shift") is None else int(data["score_shift"]),
        )


def _integer_points(points: list[list[np.ndarray]], budget: int) -> tuple[list[list[np.ndarray]], float]:
    """Non-negative column points scaled and rounded so every class's largest score is at most
    `budget`; and the scale."""
    spread = max(sum(float(p.max()) for p in cls_points) for cls_points in points)
    if spread <= 0:
        raise NotCompilable("Every point is zero: the model ignores its input.")
    scale = budget / spread
    while True:  # rounding up may overshoot the budget by up to half a point per column
        rounded = [[np.rint(p * scale).astype(np.int64) for p in cls_points] for cls_points in points]
        largest = max(sum(int(p.max()) for p in cls_points) for cls_points in rounded)
        if largest <= budget:
            return rounded, scale
        scale *= (budget - 0.5) / largest
