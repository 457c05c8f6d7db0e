"""Inference: the predictor, sliding window and TTA, input sources, read-ahead, output writers, export, and
the predict and evaluate pipelines."""
