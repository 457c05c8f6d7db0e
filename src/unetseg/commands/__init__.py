"""One module per command, each with the task that Hydra runs."""
