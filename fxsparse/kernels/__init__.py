"""Pure tensor kernels (no graph knowledge): row caches, tile geometry, gather/scatter."""
