"""The ``servesim`` command line."""
