"""Reading images and labels, pairing them, normalising, augmenting, and the synthetic generator."""
