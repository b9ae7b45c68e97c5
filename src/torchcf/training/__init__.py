"""Training: the settings (``TrainConfig``, ``Recipe``), the epochs' samples, the steps (compiled
kernels in ``native/``) and the one ``Trainer`` for every model."""
