"""Training: the Trainer (a loop of named steps), its DataLoader, validation, losses, border weights,
optimisers, schedules, the monitor and the time budget."""
