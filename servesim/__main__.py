"""``python -m servesim``: the same as the ``servesim`` command."""

from servesim.cli.main import main

if __name__ == "__main__":  # a spawned child process (calibrate --steps-in fresh) imports this module too
    main()
