"""The shared engine behind every method: couplings, paths, networks, the ODE solver and the trainer.

Everything here works on arrays and tensors; nothing below this package sees an AnnData.
"""
