"""servesim: predict how an LLM serving deployment behaves, and check the prediction for real."""

__version__ = "0.1.0"
