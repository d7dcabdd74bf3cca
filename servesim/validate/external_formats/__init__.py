"""Readers of external benchmark tools' result files (vLLM bench serve, GuideLLM, AIPerf), one module each.

The public API is `servesim.validate.external`; docs/validation-external.md describes the formats.
"""
