"""Engines: the device, losses, metrics, checkpoints, the training loop and the predictor."""
