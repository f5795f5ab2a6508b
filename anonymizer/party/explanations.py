"""What the applicant can learn about its decision beyond the label: the reasons it lost points
on (one encrypted prediction that asks for them) and the smallest change of one feature that
turns a denial into approval (a search by encrypted predictions). Both work through the
protocol's `PartyClient`; `PartyClient.reasons` and `.explain` call them."""

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

    Where the server gives reason codes, the first prediction asks for them, the answer lists
    them, and without a `feature` the top reason's feature is the one changed. Where the server
    offers a batched explanation of the feature (TFHE), one more call decides every level of it;
    otherwise one value of each other level is tried, nearest first, each through an encrypted
    prediction, up to the first approval. Probabilities are None where the scheme
    reveals none (Paillier).
    """
    info = client.info()
    approved_label = info.classes[-1] if approved_label is None else approved_label
    first = _first_decision(client, values_by_party)
    if feature is None:
        if not first.get("reasons"):
            raise ValueError("Name the feature to change: the server gives no reasons to choose one.")
        feature, party = first["reasons"][0]["feature"], first["reasons"][0]["party"]
    names = info.feature_names or []
    column = names.index(feature) if feature in names else int(feature)
    party = party or next(p for p, columns in info.parties.items() if column in columns)
    result = {"feature": feature, **first}
    if first["decision"] == approved_label:
        return {**result, "already_approved": True}
    if party not in values_by_party:
        raise ValueError(f"Give {party!r}'s values to change {feature!r}.")
    return {**result, **_search(client, values_by_party, party, column, feature, approved_label, max_tries)}


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
    row = client.party_row(party, values_by_party[party])
    current = row[0, column]
    if explain_function(column) in info.functions:
        return _batched_search(client, values_by_party, column, feature, current, approved_label)
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


def _batched_search(client, values_by_party, column, feature, current, approved_label) -> dict:
    """The nearest approving level of `column` from the decision at every level, one call."""
    info, codec = client.info(), client.keyed_codec()
    function = explain_function(column)
    encrypted, _ = client.predict_values(values_by_party, function)
    values = codec.level_values(column)
    shares = codec.decrypt_levels(encrypted, function, len(values))
    level = codec.level_of(column, current)
    nearest = sorted((i for i in range(len(values)) if i != level), key=lambda i: abs(values[i] - current))
    for i in nearest:
        best = int(np.argmax(shares[i]))
        label, probability = info.classes[best], None if info.blinded else float(shares[i][best])
        client.log(f"  {feature} = {values[i]:g}: {label} (probability {percent(probability)})")
        if label == approved_label:
            return {
                "value": float(values[i]),
                "change": float(values[i] - current),
                "probability_after": probability,
                "encrypted_predictions": 2,
                "levels_decided": len(values),
            }
    return {"value": None, "encrypted_predictions": 2, "levels_decided": len(values)}
