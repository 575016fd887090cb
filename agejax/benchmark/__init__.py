"""Benchmarks of agejax: train step, a tf-keras peer, input, dataset build, end to end.

Run ``python -m agejax.benchmark [NAME ...]`` (see ``__main__.py``). Each
sub-benchmark is a module with a ``run(...)`` function returning result dicts;
:mod:`agejax.benchmark.common` adds the machine description and writes them
as JSON lines. This package imports neither JAX nor TensorFlow on import, so
the tf-keras peer can run in a child process without JAX.
"""
