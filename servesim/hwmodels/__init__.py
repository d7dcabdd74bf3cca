"""Hardware and model knowledge: GPU and model catalogs, operator FLOPs/bytes, cost model. Torch-free."""
