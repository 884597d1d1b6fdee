"""The ``pope`` command line: one entry point, one subcommand per verb."""

from __future__ import annotations

import argparse
import json
import sys

from pope.config import ConfigError, config_schema, dump_config, load_config


def _train(args) -> int:
    config = load_config(args.config, args.overrides)
    from pope.launcher import ComponentFailed, train

    try:
        summary = train(config)
    except ComponentFailed as exc:
        print(f"pope train: {exc}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in summary.items() if not k.endswith("_group_ids")}
    print("summary:\n" + json.dumps(shown, indent=2))
    return 0


def _config(args) -> int:
    if args.schema:
        print(config_schema())
        return 0
    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def _data_validate(args) -> int:
    from pope.datasets import FieldMap, format_report, validate_file

    if not 0.0 <= args.max_bad_fraction <= 1.0:
        print(
            f"pope data validate: --max-bad-fraction {args.max_bad_fraction}: must be in [0, 1]",
            file=sys.stderr,
        )
        return 2
    fields = FieldMap(args.problem_field, args.answer_field, args.solution_field, args.id_field)
    try:
        _, report = validate_file(args.file, fields)
    except (OSError, ValueError, ImportError) as exc:
        print(f"pope data validate: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, args.max_bad_fraction))
    return 0 if report.acceptable(args.max_bad_fraction) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pope", description="Privileged On-Policy Exploration: async RL for LLM reasoning"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="run a training job (local Ray, or the cluster under ray job submit)"
    )
    train.add_argument("--config", help="YAML config file (configs/*.yaml); defaults when omitted")
    train.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. learner.steps=5 actors.num_actors=1"
    )
    train.set_defaults(func=_train)

    config = sub.add_parser("config", help="print the resolved config, or its JSON schema")
    config.add_argument("--config", help="YAML config file")
    config.add_argument("--schema", action="store_true", help="print the JSON schema of the config")
    config.add_argument("overrides", nargs="*", help="dotted overrides")
    config.set_defaults(func=_config)

    data = sub.add_parser("data", help="check problem files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    validate = data_sub.add_parser(
        "validate", help="report every bad row of a .jsonl or .parquet problem file (exit 1 if too many)"
    )
    validate.add_argument("file", help="a .jsonl or .parquet file of problems")
    validate.add_argument("--problem-field", default="problem", help="field holding the problem text")
    validate.add_argument("--answer-field", default="answer", help="field holding the gold answer")
    validate.add_argument("--solution-field", default="solution", help="field holding the oracle solution")
    validate.add_argument(
        "--id-field", default=None, help="field holding a unique id (default: <stem>-<row>)"
    )
    validate.add_argument(
        "--max-bad-fraction", type=float, default=0.1, help="largest acceptable fraction of bad rows"
    )
    validate.set_defaults(func=_data_validate)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"pope: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
