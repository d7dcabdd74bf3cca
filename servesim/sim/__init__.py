"""The serving core (pure Python: requests, KV blocks, scheduler) and the SimPy simulator."""
