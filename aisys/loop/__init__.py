"""The closed loop: retrain policy, retraining and promotion."""
