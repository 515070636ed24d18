"""Stage 2 — what a model is: architectures and their registry (:mod:`.architectures`), calibration of
its score (:mod:`.calibration`). Imports only :mod:`pneumoscan.data` and :mod:`pneumoscan.config`.
"""
