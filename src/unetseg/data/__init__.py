"""Training data: pairing, label encodings, normalisation, augmentation, datasets, the synthetic generator."""
