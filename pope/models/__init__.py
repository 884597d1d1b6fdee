"""Model builders that need no download: the tiny default model and SmolLM2 converted from its wheel.
The ``builtin:`` names are resolved in one place, ``orchestrator/models.py``."""
