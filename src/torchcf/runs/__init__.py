"""The run layer: jobs over the library (train, compare, tune, blend, evaluate) and the run
directory they write and read (``torchcf.runs.rundir``)."""
