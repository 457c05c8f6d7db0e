"""Seeing training: the history of a run, its curves, preview pictures and the optional loggers
(TensorBoard, MLflow). Below training/ so the trainer can write them after each epoch."""
