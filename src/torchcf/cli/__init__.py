"""The ``torchcf`` command line: ``torchcf.cli.main`` and one module per command."""
