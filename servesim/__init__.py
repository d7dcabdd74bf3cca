"""servesim: predict how an LLM serving deployment behaves, and check the prediction for real."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The planning API on demand: `import servesim` itself loads nothing heavy (no pandas, no simpy).
    if name == "sweep":
        from servesim.plan import sweep

        return sweep
    raise AttributeError(f"module 'servesim' has no attribute {name!r}")
