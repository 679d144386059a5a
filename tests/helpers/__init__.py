"""What the tests share besides fixtures (those are in conftest.py): data, the runner, processes."""
