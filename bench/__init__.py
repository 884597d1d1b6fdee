"""Benchmarks of pope's parts (not tests): broker, scoring, broadcast, learner step, generation.

Each module has ``run(quick: bool) -> dict`` returning numbers; ``python -m bench.run`` runs the
selected ones one after another and merges their numbers into ``bench/results.json``.
"""
