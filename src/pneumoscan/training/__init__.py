"""Stage 5 — making a release: the training engine (:mod:`.engine`) and the LiteRT export with its
parity check (:mod:`.export`). Both use evaluation to choose the threshold and check the result.
"""
