"""Seeing the prototypes, in three modules: ``analysis`` (the numbers: instance pools, robust
weights, relation discrepancy), ``drawing`` (galleries, the Figure 1 histogram, overlays) and
``hook`` (:class:`~gkd_d2.visualization.hook.RobustWeightOverlayHook`, the only part the trainer
imports). Import from the submodules."""
