"""How recommendation quality is measured, for everyone who measures it: the splits (:mod:`.protocol`), the
full-ranking metrics (:mod:`.ranking`) and the user/item segments (:mod:`.segments`).

Pure (numpy, pyarrow, pandas): training, the ranking stage's choice, the gate's holdout, the offline evaluation
runner and the benchmarks all import these, so a figure means the same wherever it is computed.
"""
