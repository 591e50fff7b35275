"""The perturbation engine: rank features by attribution, remove or reveal them, score the model."""
