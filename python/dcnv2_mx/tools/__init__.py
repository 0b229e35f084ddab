"""The tools around the operators: the command line (``python -m dcnv2_mx``) with its self-check,
benchmark and demo, and the float64 NumPy references of the operators (:mod:`.reference`).

Not imported by ``import dcnv2_mx``; the benchmark and the demo need the ``cli`` extra
(matplotlib, tqdm).
"""
