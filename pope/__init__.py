"""pope: Privileged On-Policy Exploration. The floor: config, problems, prompts, verification, models."""

__version__ = "0.1.0"
