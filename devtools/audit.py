"""Membership-inference audit with the real AnoMed attack path (needs requirements-dev.txt).

For each anonymizer: anomed-deanonymizer's `supervised_learning_MIA_server_factory` hosts an
attack that queries the anonymizer's `/predict` through `WebClassifier`, is fitted on the
challenge's members/non-members and is scored by the challenge's attack-success evaluation (as many
members as non-members). Attacks: ART's `MembershipInferenceBlackBox` (`rf`, `gb`), trained on
equally many members and non-members (the challenge serves three times more members; unbalanced,
the attack learns to call everyone a member), and the label-only gap attack ("member iff the model
labels the row correctly"), whose advantage is the model's generalisation gap. Advantages come
with a 95 % confidence interval from the evaluation's binomial counts; the seeds of one attack are
scored on draws from the same pool of evaluation rows (on the stub all, or nearly all, of it), so
only the two evaluation splits count as independent samples.
Beside the advantage, the field's measure: each attack's true-positive rate at a 1 % and a 10 %
false-positive rate (LiRA, the MICO competition), read off the ROC of its membership *scores*
(ART's member probability; the gap attack's 0/1 correctness) on the same evaluation rows, whose
memberships the audit reads from the stub's challenge rebuilt in process (`rebuilt_challenge`,
checked against the challenge's own TPR and FPR of the attack's decisions).
Baseline: the same attacks against a constant predictor. What they "find" there comes from how
the challenge drew members and non-members (their features and labels), not from any model; on
small datasets this is far from zero, and an advantage is only the model's beyond it.
`python -m devtools.audit` (or `make audit`) starts the stub and the anonymizers of `SETTINGS`.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import requests
from anomed_deanonymizer import (
    ARTWrapper,
    SupervisedLearningMIA,
    WebClassifier,
    pickle_deanonymizer,
    unpickle_deanonymizer,
)
from falcon import testing
from sklearn.metrics import roc_curve

ATTACKS = ("rf", "gb", "gap")
FPR_LEVELS = (0.01, 0.1)  # TPR is reported at these false-positive rates
SEEDS = (0, 1, 2)
DATA_SPLITS = ("tuning", "validation")


class FeatureValidator:
    """Input validator for the attack (a class, not a lambda: the attack gets pickled)."""

    def __init__(self, n_features: int) -> None:
        self.n_features = n_features

    def __call__(self, X: np.ndarray) -> None:
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected (rows, {self.n_features}) features, got {X.shape}")


class BalancedARTWrapper(ARTWrapper):
    """ARTWrapper that trains on equally many members and non-members (a subsample of the larger)."""

    def fit(self, X_member, y_member, X_nonmember, y_nonmember) -> None:
        n = min(len(y_member), len(y_nonmember))
        rng = np.random.default_rng(0)
        members = rng.choice(len(y_member), n, replace=False)
        non_members = rng.choice(len(y_nonmember), n, replace=False)
        super().fit(X_member[members], y_member[members], X_nonmember[non_members], y_nonmember[non_members])

    def scores(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each row's member probability (the attack model's, before rounding)."""
        probabilities = self._art_mia.infer(x=X, y=y, probabilities=True)
        return np.asarray(probabilities, dtype=float).reshape(len(X), -1)[:, -1]


class ConstantClassifier(WebClassifier):
    """The attacks' baseline target: answers `label` for every row and never calls a server."""

    def __init__(self, label, input_shape: tuple[int, ...], nb_classes: int) -> None:
        super().__init__(url="", input_shape=input_shape, nb_classes=nb_classes)
        self.label = label

    def predict(self, x: np.ndarray, **kwargs) -> np.ndarray:
        return np.full(len(x), self.label)


class GapAttack(SupervisedLearningMIA):
    """The label-only gap attack: a row is a member iff the model labels it correctly."""

    def __init__(self, classifier, n_features: int) -> None:
        self._classifier = classifier
        self._validate = FeatureValidator(n_features)

    def fit(self, X_member, y_member, X_nonmember, y_nonmember) -> None:
        """Nothing to learn."""

    def infer_memberships(self, X: np.ndarray, y: np.ndarray, batch_size: int | None = None):
        labels = np.asarray(self._classifier.predict(X)).reshape(-1)
        return labels == np.asarray(y).reshape(-1)

    def scores(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """A label-only attack's score: 1 where the model labels the row correctly, else 0."""
        return self.infer_memberships(X, y).astype(float)

    def save(self, filepath) -> None:
        pickle_deanonymizer(self, filepath)

    def validate_input(self, feature_array: np.ndarray) -> None:
        self._validate(feature_array)


def tpr_at_fpr(members: np.ndarray, scores: np.ndarray, level: float) -> float:
    """The largest true-positive rate of a threshold on `scores` whose false-positive rate (over
    non-members) is at most `level`."""
    # every threshold counts: collinear ROC points, which roc_curve drops by default, are real ones
    false_positive, true_positive, _ = roc_curve(members, scores, drop_intermediate=False)
    return float(true_positive[false_positive <= level].max())


def low_fpr_rates(challenge_obj, anonymizer_id, deanonymizer_id, attacker, split, evaluation) -> dict:
    """TPR at each of FPR_LEVELS on the rows the challenge evaluated `attacker` on; RuntimeError if
    the rebuilt challenge's memberships do not give the challenge's own TPR and FPR."""
    from challenge_stub.app import evaluate_attack

    dataset, members = challenge_obj.MIA_evaluation_data(
        anonymizer=anonymizer_id, deanonymizer=deanonymizer_id, data_split=split
    )
    X, y = dataset.get()
    members = np.asarray(members, dtype=bool)
    decided = evaluate_attack(np.asarray(attacker.infer_memberships(X, y), dtype=bool), members)
    if not np.isclose(
        [decided["tpr"], decided["fpr_nonmembers"]], [evaluation["tpr"], evaluation["fpr_nonmembers"]]
    ).all():
        raise RuntimeError(f"The rebuilt challenge's {split} draw is not the one the challenge evaluated.")
    scores = attacker.scores(X, y)
    return {str(level): tpr_at_fpr(members, scores, level) for level in FPR_LEVELS}


def attack_once(
    stub_url, anonymizer_url, anonymizer_id, info, attack, seed, workdir, challenge_obj, baseline=False
):
    """Fit and evaluate one attack through the deanonymizer's web app; per-split results, each
    with its TPR at low FPRs. `baseline`: attack a constant predictor instead of the anonymizer."""
    from anomed_deanonymizer.deanonymizer_server import supervised_learning_MIA_server_factory
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox

    n_features = info["n_features"]
    shape = dict(input_shape=(n_features,), nb_classes=len(info["classes"]))
    classifier = (
        ConstantClassifier(info["classes"][0], **shape)
        if baseline
        else WebClassifier(url=f"{anonymizer_url}/predict", **shape)
    )
    deanonymizer_id = f"{attack}-seed{seed}" + ("-baseline" if baseline else "")
    if attack == "gap":
        attacker = GapAttack(classifier, n_features)
    else:
        attacker = BalancedARTWrapper(
            MembershipInferenceBlackBox(classifier, attack_model_type=attack),
            input_validator=FeatureValidator(n_features),
        )
    app = supervised_learning_MIA_server_factory(
        anonymizer_identifier=anonymizer_id,
        deanonymizer_identifier=deanonymizer_id,
        deanonymizer_obj=attacker,
        model_filepath=Path(workdir) / f"{anonymizer_id}-{deanonymizer_id}.pkl",
        default_batch_size=10_000,
        member_url=f"{stub_url}/data/deanonymizer/members",
        nonmember_url=f"{stub_url}/data/deanonymizer/non-members",
        evaluation_data_url=f"{stub_url}/data/attack-success-evaluation",
        utility_evaluation_url=f"{stub_url}/utility/deanonymizer",
        model_loader=unpickle_deanonymizer,
    )
    client = testing.TestClient(app)
    np.random.seed(seed)  # ART's default attack models draw from numpy's global generator
    fit = client.simulate_post("/fit")
    assert fit.status_code == 201, fit.text
    results = {}
    for split in DATA_SPLITS:
        response = client.simulate_post("/evaluate", params={"data_split": split})
        assert response.status_code == 201, response.text
        evaluation = response.json["evaluation"]
        rates = low_fpr_rates(challenge_obj, anonymizer_id, deanonymizer_id, attacker, split, evaluation)
        results[split] = {**evaluation, "tpr_at_fpr": rates}
    return results


def advantage_interval(runs: list[dict], rows_per_class: int) -> tuple[float, float]:
    """95 % confidence interval of the mean advantage TPR - FPR over `runs` (one dict per seed,
    split -> evaluation of `rows_per_class` members and as many non-members).

    Seeds are scored on (nearly) the same rows, so each split counts once, with its seed-averaged
    rates; Agresti-Coull's adjusted rates keep the interval from collapsing when a rate is 0 or 1."""

    def variance(rate: float) -> float:
        adjusted = (rate * rows_per_class + 2) / (rows_per_class + 4)
        return adjusted * (1 - adjusted) / (rows_per_class + 4)

    means, variances = [], []
    for split in runs[0]:
        tpr = statistics.fmean(run[split]["tpr"] for run in runs)
        fpr = statistics.fmean(run[split]["fpr_nonmembers"] for run in runs)
        means.append(tpr - fpr)
        variances.append(variance(tpr) + variance(fpr))
    mean = statistics.fmean(means)
    half_width = 1.96 * (sum(variances) ** 0.5) / len(means)
    return mean - half_width, mean + half_width


def summarize(runs: list[dict], rows_per_class: int) -> dict:
    """Mean, 95 % interval and worst advantage, mean TPR and FPR of one attack's runs."""
    evaluations = [run[split] for run in runs for split in DATA_SPLITS]
    advantages = [e["advantage"] for e in evaluations]
    return {
        "mean_advantage": statistics.fmean(advantages),
        "advantage_ci95": advantage_interval(runs, rows_per_class),
        "worst_advantage": max(advantages),
        "mean_tpr": statistics.fmean(e["tpr"] for e in evaluations),
        "mean_fpr": statistics.fmean(e["fpr_nonmembers"] for e in evaluations),
        "mean_tpr_at_fpr": {
            str(level): statistics.fmean(e["tpr_at_fpr"][str(level)] for e in evaluations)
            for level in FPR_LEVELS
        },
        "runs": runs,
    }


def audit_anonymizer(stub_url, anonymizer_url, anonymizer_id, attacks=ATTACKS, seeds=SEEDS, baseline=True):
    """Utility (the challenge's accuracy), every attack's TPR, FPR and advantage, and (`baseline`)
    the same attacks' advantage against a constant predictor."""
    utility = {}
    for split in DATA_SPLITS:
        response = requests.post(f"{anonymizer_url}/evaluate", params={"data_split": split}, timeout=600)
        response.raise_for_status()
        utility[split] = response.json()["evaluation"]["accuracy"]
    info = requests.get(f"{anonymizer_url}/fhe/info", timeout=30).json()
    from challenge_stub.app import rebuilt_challenge

    stub_info = requests.get(f"{stub_url}/info", timeout=30).json()
    rows_per_class = stub_info["mia_evaluation_rows_per_class"]
    challenge_obj = rebuilt_challenge(stub_info)
    tables = {"attacks": {}, "baseline": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for table, against_constant in (("attacks", False), ("baseline", True)):
            if against_constant and not baseline:
                continue
            for attack in attacks:
                runs = [
                    attack_once(
                        stub_url,
                        anonymizer_url,
                        anonymizer_id,
                        info,
                        attack,
                        seed,
                        workdir,
                        challenge_obj,
                        baseline=against_constant,
                    )
                    for seed in (seeds if attack != "gap" else seeds[:1])  # deterministic
                ]
                tables[table][attack] = summarize(runs, rows_per_class)
    return {"utility": utility, **tables}


def markdown_table(results: dict) -> str:
    """setting × accuracy × advantage and TPR at low FPR, one line per attack type."""
    lines = [
        "| setting | tuning acc | validation acc | attack | TPR | FPR | advantage mean [95 % CI] | "
        "advantage worst | TPR @ 1 % / 10 % FPR | same attack vs a constant predictor: advantage; "
        "TPR @ 1 % / 10 % FPR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, result in results.items():
        for attack, row in result["attacks"].items():
            constant = result.get("baseline", {}).get(attack)
            lines.append(
                f"| {setting} | {result['utility']['tuning']:.3f} | "
                f"{result['utility']['validation']:.3f} | {attack} | {row['mean_tpr']:.3f} | "
                f"{row['mean_fpr']:.3f} | {interval_text(row)} | {row['worst_advantage']:+.3f} | "
                f"{low_fpr_text(row)} | "
                f"{interval_text(constant) + '; ' + low_fpr_text(constant) if constant else '-'} |"
            )
    return "\n".join(lines)


def low_fpr_text(row: dict) -> str:
    """`0.012 / 0.104`: mean TPR at 1 % and at 10 % FPR."""
    return " / ".join(f"{row['mean_tpr_at_fpr'][str(level)]:.3f}" for level in FPR_LEVELS)


def interval_text(row: dict) -> str:
    """`+0.012 [-0.010, +0.034]`: mean advantage and its 95 % interval."""
    low, high = row["advantage_ci95"]
    return f"{row['mean_advantage']:+.3f} [{low:+.3f}, {high:+.3f}]"


SETTINGS = {
    "served (selection: advantage bound <= 0.02, latency <= 0.13 s)": {},
    "fixed depth 5, 20 rows/leaf, 6 bits": {"TREE_SELECTION": "off"},
    "unconstrained concrete-ml default tree": {
        "FHE_ENGINE": "concrete-ml",
        "TREE_SELECTION": "off",
        "TREE_MAX_DEPTH": "0",
        "TREE_MIN_SAMPLES_LEAF": "1",
        "TREE_N_BITS": "6",
    },
}


def run(stub_rows: int, settings: dict, out: Path | None, log=print) -> dict:
    """Start the stub and one anonymizer per setting, fit, audit, print and save the table."""
    from .launch import GunicornServer

    results = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        GunicornServer(
            "challenge_stub.wsgi:application", env={"STUB_ROWS": str(stub_rows)}, workers=1
        ) as stub,
    ):
        for index, (setting, env) in enumerate(settings.items()):
            anonymizer_id = f"audit-{index}"
            log(f">> {setting}: starting and fitting ...")
            with GunicornServer(
                "app:application",
                env={
                    **env,
                    "CHALLENGE_HOST": stub.host,
                    "MODEL_DIR": f"{tmp}/{index}",
                    "ANONYMIZER_ID": anonymizer_id,
                },
            ) as anonymizer:
                fit = requests.post(anonymizer.url + "/fit", timeout=3600)
                fit.raise_for_status()
                log(
                    f"   fitted: {json.dumps({k: fit.json()['model'][k] for k in ('tree_depth', 'tree_leaves', 'pbs_count')})}"
                )
                results[setting] = audit_anonymizer(stub.url, anonymizer.url, anonymizer_id)
                results[setting]["model"] = {k: v for k, v in fit.json()["model"].items() if k != "selection"}
            log(markdown_table({setting: results[setting]}).splitlines()[-1])
    table = markdown_table(results)
    log(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        out.with_suffix(".md").write_text(table + "\n")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=int(os.environ.get("STUB_ROWS", "10000")))
    parser.add_argument("--out", type=Path, default=Path("bench/results/audit.json"))
    args = parser.parse_args(argv)
    run(args.rows, SETTINGS, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
