"""Files: reading images and TIFF pages, writing PNGs (palette PNGs too) and TIFF stacks, atomic writes."""
