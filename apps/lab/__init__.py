"""The lab: what Surge is measured and tested against, kept out of the real code.

Naive, synchronous and ablation variants of the use cases (each correct-but-slow or fast-
but-wrong on purpose) and the no-op baselines the bench divides by. Installed and routed
only with `LAB_ENABLED` (bench/stack.py turns it on); the production apps import nothing
from here, and tests/lab/test_isolation.py keeps it that way.
"""
