"""The service layer: training and selection, encrypted scoring, the challenge client."""
