"""The ``pope`` command line: one entry point, one subcommand per verb."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pope.config import ConfigError, config_schema, dump_config, is_redacted, load_config, source_name
from pope.datasets import DataError


class CliError(Exception):
    """A bad input the command line reports in one line (exit 2), without a traceback."""


def _connection(run_dir: Path) -> dict:
    """The run's connection.json (run id, Redis URL), or a CliError naming what is wrong with it."""
    path = run_dir / "connection.json"
    if not path.is_file():
        raise CliError(f"no run in {run_dir} ({path} missing)")
    try:
        connection = json.loads(path.read_text())
        if not isinstance(connection.get("run_id"), str) or not isinstance(connection.get("redis_url"), str):
            raise ValueError("needs the strings run_id and redis_url")
    except (ValueError, AttributeError) as exc:
        raise CliError(f"{path} is corrupt: {exc}") from None
    return connection


def _train(args) -> int:
    from orchestrator.launcher import ComponentFailed, train

    if args.resume == "auto":  # the run of this config that checkpointed last (orchestrator/runs.py)
        from orchestrator.runs import NoRunToResume, describe, find_run_to_resume

        config = load_config(args.config, args.overrides)
        try:
            picked = find_run_to_resume(config)
        except NoRunToResume as exc:
            raise CliError(str(exc)) from None
        print(describe(picked))
        config = config.model_copy(
            update={"run": config.run.model_copy(update={"run_id": picked.run_dir.name})}
        )
    elif args.resume:
        run_dir = Path(args.resume)
        if args.config or not (run_dir / "config.yaml").is_file():
            print(
                f"pope train --resume {run_dir}: takes the run's own config.yaml (and overrides)",
                file=sys.stderr,
            )
            return 2
        overrides = [f"run.output_dir={run_dir.parent}", *args.overrides]
        config = load_config(run_dir / "config.yaml", overrides)
        if is_redacted(config.broker.redis_url):  # config.yaml never holds the password: connection.json does
            config.broker.redis_url = _connection(run_dir)["redis_url"]
    else:
        config = load_config(args.config, args.overrides)
    try:
        summary = train(config, resume=bool(args.resume))
    except ComponentFailed as exc:
        print(f"pope train: {exc}", file=sys.stderr)
        return 1
    from orchestrator.progress import summary_lines

    print("\n".join(summary_lines(summary)) + f"\nsummary: {Path(summary['run_dir']) / 'summary.json'}")
    return 0


def _export(args) -> int:
    """A resumable checkpoint as a Hugging Face model folder, without Ray or a pipeline."""
    from learner.export import ExportError, export_checkpoint

    source = Path(args.source)
    base_model = None
    run_config = source / "config.yaml"
    if not (source / "checkpoints" / "model").is_dir() and run_config.is_file():
        # a checkpoint written before the learner kept the model's config and tokenizer beside it
        from orchestrator.models import resolve_model_path

        saved = load_config(run_config)
        base_model = resolve_model_path(saved.model.path, saved.model.cache_dir, saved.run.seed)
    try:
        out = export_checkpoint(source, args.out, args.step, base_model)
    except ExportError as exc:
        raise CliError(f"export: {exc}") from None
    print(f"exported {source} to {out}")
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


def _scale(args) -> int:
    """Ask a running run to resize a pool: a ScaleRequest on its control stream."""
    import redis

    from broker.schemas import ScaleRequest
    from broker.streams import ControlChannel, connect, redacted

    requests = []
    for request in args.sizes:  # every request checked before any is sent
        pool, _, size = request.partition("=")
        if pool not in ("actors", "preprocess") or not size.isdigit() or int(size) < 1:
            raise CliError(f"scale: {request!r}: use actors=N or preprocess=N with N >= 1")
        requests.append(ScaleRequest(pool=pool, size=int(size)))
    connection = _connection(Path(args.output_dir) / args.run)
    try:
        client = connect(connection["redis_url"], socket_timeout_s=5.0, reconnect_timeout_s=5.0)
        for request in requests:
            ControlChannel(client, connection["run_id"]).publish(request)
            print(f"asked run {connection['run_id']} for {request.pool}={request.size}")
    except redis.RedisError as exc:
        raise CliError(
            f"scale: the run's Redis ({redacted(connection['redis_url'])}) did not answer: {exc}"
        ) from None
    return 0


def _load_inputs(config, paths: list[str]):
    from pope.datasets import FieldMap, load_source

    data = config.data
    fields = FieldMap(data.problem_field, data.answer_field, data.solution_field, data.id_field)
    return {source_name(p): load_source(p, fields, data.max_bad_fraction)[0] for p in paths}


def _method(args) -> int:
    """filter-hard, find-prefixes, eval: one pool of actors, the config's model and engine."""
    from orchestrator import method
    from orchestrator.models import resolve_model_path
    from orchestrator.pool import GenerationPool

    config = load_config(args.config, args.overrides).with_run_id()
    inputs = _load_inputs(config, args.input)
    model_path = str(resolve_model_path(config.model.path, config.model.cache_dir, config.run.seed))
    with GenerationPool(config, model_path) as pool:
        if args.command == "filter-hard":
            result = method.filter_hard(
                pool, [p for ps in inputs.values() for p in ps], config, args.k, Path(args.output)
            )
        elif args.command == "find-prefixes":
            problems = [p for ps in inputs.values() for p in ps]
            result = method.find_prefixes(pool, problems, config, args.n, Path(args.output), config.run.seed)
        else:
            table = method.evaluate(pool, inputs, config, args.n, args.k, Path(args.output))
            print((Path(args.output) / "results.md").read_text(), end="")
            result = {name: row["pass_at_k"] for name, row in table.items()}
    print(json.dumps(result, indent=2))
    return 0


def _report(args) -> int:
    from orchestrator.report import ReportError, write_report

    try:
        path = write_report(Path(args.run_dir), Path(args.output) if args.output else None)
    except ReportError as exc:
        raise CliError(f"report: {exc}") from None
    print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from orchestrator.launcher import local_ray_auth

    local_ray_auth()  # before anything imports ray: a local Ray accepts only this process's token
    parser = argparse.ArgumentParser(
        prog="pope", description="Privileged On-Policy Exploration: async RL for LLM reasoning"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="run a training job (local Ray, or the cluster under ray job submit)"
    )
    train.add_argument("--config", help="YAML config file (configs/*.yaml); defaults when omitted")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue a run from its last checkpoint; auto: the run under run.output_dir whose config "
        "matches (orchestrator/runs.py) and that checkpointed last",
    )
    train.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. learner.steps=5 actors.num_actors=1"
    )
    train.set_defaults(func=_train)

    export = sub.add_parser(
        "export", help="write a resumable (DeepSpeed) checkpoint as a Hugging Face model folder"
    )
    export.add_argument("source", help="a run dir, or its checkpoints folder")
    export.add_argument("--step", type=int, help="the checkpoint of this step (default: the published one)")
    export.add_argument(
        "--out", required=True, help="the model folder to write (must not exist, or be empty)"
    )
    export.set_defaults(func=_export)

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

    for name, help_text in (
        (
            "filter-hard",
            "sample k rollouts per problem; keep those with 0 correct (writes an annotated dataset)",
        ),
        (
            "find-prefixes",
            "search i*(x), the shortest oracle prefix with a correct rollout, for each problem",
        ),
        ("eval", "pass@k on benchmark files, through the actor pool"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", help="YAML config file (model, engine, pool size, max_new_tokens)")
        cmd.add_argument(
            "--input",
            nargs="+",
            required=True,
            help=".jsonl/.parquet problem files, or hf:ORG/NAME[:CONFIG][:SPLIT] (online)",
        )
        cmd.add_argument("--output", required=True, help="output .jsonl (eval: a folder)")
        if name == "filter-hard":
            cmd.add_argument("--k", type=int, default=128, help="samples per problem (the paper: 128)")
        elif name == "find-prefixes":
            cmd.add_argument("--n", type=int, default=8, help="samples per problem and prefix length")
        else:
            cmd.add_argument("--n", type=int, default=16, help="samples per problem")
            cmd.add_argument(
                "--k",
                type=lambda text: [int(k) for k in text.split(",")],
                default=[1, 4, 16],
                help="k list, e.g. 1,4,16",
            )
        cmd.add_argument("overrides", nargs="*", help="dotted config overrides")
        cmd.set_defaults(func=_method)

    scale = sub.add_parser("scale", help="resize a running run's actor or preprocess pool")
    scale.add_argument("--run", required=True, help="run id (a folder of --output-dir)")
    scale.add_argument("--output-dir", default="runs", help="the runs' parent folder (run.output_dir)")
    scale.add_argument("sizes", nargs="+", help="actors=N and/or preprocess=N")
    scale.set_defaults(func=_scale)

    report = sub.add_parser("report", help="write a run's metrics as one self-contained HTML page")
    report.add_argument("run_dir", help="the run's folder, e.g. runs/RUN_ID")
    report.add_argument("--output", help="the page's path (default RUN_DIR/report.html)")
    report.set_defaults(func=_report)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, CliError, FileNotFoundError) as exc:
        print(f"pope: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
