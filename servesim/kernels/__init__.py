"""Triton kernels (paged attention, quantized GEMM, speculative verification) with torch references."""
