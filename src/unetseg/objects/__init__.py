"""From class maps to objects: instance label maps (instances.py) and their measurements (measure.py)."""
