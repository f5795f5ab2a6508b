"""A local AnoMed supervised-learning MIA challenge serving synthetic credit-card-approval data."""
