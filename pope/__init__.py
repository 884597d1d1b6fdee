"""pope: Privileged On-Policy Exploration. Shared code: configuration, problems, prompts, command line."""

__version__ = "0.1.0"
