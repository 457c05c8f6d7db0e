"""The process: device, precision and fast path, torch.distributed, paths and run stamps, the console, errors."""
