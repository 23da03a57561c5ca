"""Data: corpora, seqio tasks (circuits.data.tasks, imports seqio), the token cache (reader: numpy and
tensorstore only) and probe batches. Import submodules directly; this package imports nothing heavy."""
