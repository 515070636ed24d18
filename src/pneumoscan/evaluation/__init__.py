"""Stage 4 — how good is a model: pure metrics (:mod:`.metrics`), acquisition shifts (:mod:`.robustness`),
figures (:mod:`.figures`), ``pneumoscan evaluate`` (:mod:`.evaluate`) and ``pneumoscan compare``
(:mod:`.comparison`). Imports only earlier stages.
"""
