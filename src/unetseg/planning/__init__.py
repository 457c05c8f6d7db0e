"""Planning a recipe before training (``experiment=auto``, ``unetseg plan``): the data's fingerprint, a few timed
steps on this machine, and the rules that turn them into settings, each with its reason."""
