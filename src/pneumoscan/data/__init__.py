"""Stage 1 — files to pixels to datasets: decoding (:mod:`.imaging`), discovery and patient splits
(:mod:`.dataset`), and the data report (:mod:`.report`). Imports nothing from later stages.
"""
