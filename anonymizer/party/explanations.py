"""What the applicant can learn about its decision beyond the label: the reasons it lost points
on (one encrypted prediction that asks for them) and the smallest change of one feature that
turns a denial into approval (a search by encrypted predictions). Both work through the
protocol's `PartyClient`; `PartyClient.reasons` and `.explain` call them."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..wire import FheInfo, explain_function, percent

if TYPE_CHECKING:
    from .client import PartyClient


def reasons(client: "PartyClient", values_by_party: dict, top: int | None = 4) -> dict:
    """The decision and the `top` reasons it lost points on, from one encrypted prediction.

    A reason is a column whose bin scores below that column's best bin (toward the last class,
    the approval): `points_lost` in the model's integer points, `log_odds_lost` in log-odds;
    largest first, as a scorecard's adverse-action notice lists them. Staged parts fill in the
    parties not given here.
    """
    if not client.gives_reasons:
        raise ValueError("The server gives no reason codes for this model (two-class additive models only).")
    encrypted, _ = client.predict_values(values_by_party, "reasons")  # makes our keys if need be
    read = client.keyed_codec().decrypt_reasons(encrypted)
    info = client.info()
    best = int(np.argmax(read.shares))
    found = [
        _reason(info, column, points, alone)
        for column, points, alone in zip(info.reasons["columns"], read.points_lost, read.approves_alone)
    ]
    found = sorted((r for r in found if r["points_lost"] > 0), key=lambda r: (-r["points_lost"], r["column"]))
    return {
        "decision": info.classes[best],
        "probability": None if info.blinded else float(read.shares[best]),
        "margin_points": read.margin,
        "reasons": found[:top] if top is not None else found,
    }


def _reason(info: FheInfo, column: int, points: int, approves_alone: bool) -> dict:
    names = info.feature_names or []
    owner = next(party for party, columns in info.parties.items() if column in columns)
    return {
        "feature": names[column] if column < len(names) else column,
        "column": column,
        "party": owner,
        "points_lost": points,
        "log_odds_lost": round(points / info.decoding["score_scale"], 4),
        "approves_alone": approves_alone,
    }


def explain(
    client: "PartyClient",
    values_by_party: dict,
    party: str | None = None,
    feature=None,
    approved_label=None,
    max_tries: int = 64,
) -> dict:
    """Smallest change of one feature of `party` that turns a denial into approval.

    Where the server offers a batched explanation of a named `feature` (TFHE), one call decides
    every level of it, the current one included: that is the whole explanation. Otherwise the
    first prediction gives the decision as it stands — with its reasons where the server gives
    them, and without a `feature` the top reason's feature is the one changed — then one more
    batched call, or one value of each other level tried, nearest first, each through an
    encrypted prediction, up to the first approval. Probabilities are None where the scheme
    reveals none (Paillier).
    """
    info = client.info()
    approved_label = info.classes[-1] if approved_label is None else approved_label
    if feature is not None:
        column, party = _column_and_party(info, feature, party)
        if explain_function(column) in info.functions:
            _need_values(values_by_party, party, feature)
            return {
                "feature": feature,
                **_in_one_call(client, values_by_party, party, column, feature, approved_label),
            }
    first = _first_decision(client, values_by_party)
    if feature is None:
        if not first.get("reasons"):
            raise ValueError("Name the feature to change: the server gives no reasons to choose one.")
        feature, party = first["reasons"][0]["feature"], first["reasons"][0]["party"]
    column, party = _column_and_party(info, feature, party)
    result = {"feature": feature, **first}
    if first["decision"] == approved_label:
        return {**result, "already_approved": True}
    _need_values(values_by_party, party, feature)
    return {**result, **_search(client, values_by_party, party, column, feature, approved_label, max_tries)}


def _column_and_party(info: FheInfo, feature, party: str | None) -> tuple[int, str]:
    """The column a feature name (or index) stands for, and its owner unless `party` is given."""
    names = info.feature_names or []
    column = names.index(feature) if feature in names else int(feature)
    return column, party or next(p for p, columns in info.parties.items() if column in columns)


def _need_values(values_by_party: dict, party: str, feature) -> None:
    if party not in values_by_party:
        raise ValueError(f"Give {party!r}'s values to change {feature!r}.")


def _first_decision(client: "PartyClient", values_by_party: dict) -> dict:
    """The decision as it stands (with its reasons where the server gives them)."""
    if client.gives_reasons:
        first = reasons(client, values_by_party)
        return {
            "decision": first["decision"],
            "probability": first["probability"],
            "reasons": first["reasons"],
        }
    decision = client.score(values_by_party)
    return {"decision": decision.label, "probability": decision.probability}


def _search(client, values_by_party, party, column, feature, approved_label, max_tries) -> dict:
    """The nearest other level of `column` that approves: from one batched call where the server
    offers it for `column`, else by encrypted predictions one value after another."""
    info = client.info()
    if explain_function(column) in info.functions:
        return _batched_search(client, values_by_party, party, column, feature, approved_label)
    row = client.party_row(party, values_by_party[party])
    current = row[0, column]
    candidates = sorted(client.codec().other_levels(column, current), key=lambda v: abs(v - current))
    owned = info.parties[party]
    for tries, value in enumerate(candidates[:max_tries], start=1):
        party_values = row[0, owned].copy()
        party_values[owned.index(column)] = value
        decision = client.score({**values_by_party, party: party_values.tolist()})
        client.log(f"  {feature} = {value:g}: {decision.label} (probability {percent(decision.probability)})")
        if decision.label == approved_label:
            return {
                "value": float(value),
                "change": float(value - current),
                "probability_after": decision.probability,
                "encrypted_predictions": tries + 1,
            }
    return {"value": None, "encrypted_predictions": len(candidates[:max_tries]) + 1}


def _batched_search(client, values_by_party, party, column, feature, approved_label) -> dict:
    """The nearest approving level of `column` from the decision at every level, one call."""
    levels = _every_level(client, values_by_party, party, column)
    return {**_nearest_approving(client, levels, feature, approved_label), "encrypted_predictions": 2}


def _in_one_call(client, values_by_party, party, column, feature, approved_label) -> dict:
    """The decision and the nearest approving level of a named feature from one batched call:
    the batch's own level is the decision as it stands."""
    levels = _every_level(client, values_by_party, party, column)
    label, probability = _decided(client.info(), levels.shares[levels.level])
    decision = {"decision": label, "probability": probability, "encrypted_predictions": 1}
    if label == approved_label:
        return {**decision, "already_approved": True, "levels_decided": len(levels.values)}
    return {**decision, **_nearest_approving(client, levels, feature, approved_label)}


@dataclass(frozen=True)
class _Levels:
    """A batched explanation read: a value inside each level of the column, each level's
    decided shares, the level the party's value is in, and that value."""

    values: list[float]
    shares: np.ndarray
    level: int
    current: float


def _every_level(client, values_by_party, party, column) -> _Levels:
    """Every level of `column` decided by one batched call, read by the applicant."""
    codec = client.keyed_codec()
    function = explain_function(column)
    encrypted, _ = client.predict_values(values_by_party, function)
    values = codec.level_values(column)
    shares = codec.decrypt_batch(encrypted, function, len(values))
    current = float(client.party_row(party, values_by_party[party])[0, column])
    return _Levels(values, shares, codec.level_of(column, current), current)


def _decided(info: FheInfo, shares: np.ndarray) -> tuple:
    """(label, its probability: None where the scheme reveals none) of one level's shares."""
    best = int(np.argmax(shares))
    return info.classes[best], None if info.blinded else float(shares[best])


def _nearest_approving(client, levels: _Levels, feature, approved_label) -> dict:
    """The approving level nearest the party's value: the value to move to and the change."""
    values, current = levels.values, levels.current
    others = sorted(
        (i for i in range(len(values)) if i != levels.level), key=lambda i: abs(values[i] - current)
    )
    for i in others:
        label, probability = _decided(client.info(), levels.shares[i])
        client.log(f"  {feature} = {values[i]:g}: {label} (probability {percent(probability)})")
        if label == approved_label:
            return {
                "value": float(values[i]),
                "change": float(values[i] - current),
                "probability_after": probability,
                "levels_decided": len(values),
            }
    return {"value": None, "levels_decided": len(values)}
