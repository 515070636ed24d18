"""Stage 3 — using a trained model: the one :class:`~.predictor.Predictor` and Grad-CAM explanations
(:mod:`.explain`). Imports only earlier stages.
"""
