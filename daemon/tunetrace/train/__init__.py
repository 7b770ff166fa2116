"""Training recipe for the neural audio fingerprint (the ``train`` extra).

Only the modules that say so import torch (``model``, ``frontend``, ``loop``, ``export``); data
preparation and augmentation are NumPy/SciPy so evaluation can share them without torch.
Nothing outside this package imports it.
"""
