"""Stage 6 — what people and programs touch: the command line (:mod:`.cli`) and the Streamlit app
(:mod:`.app`). Thin layers over the library; the only modules that print.
"""
