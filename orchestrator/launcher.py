"""``pope train``: start (or join) Ray and Redis, create the pools, train, account, shut down.

    launcher ──> Redis (embedded unless broker.redis_url) ──> Ray (local, or the cluster under ray job submit)
       │
       ├── learner  (1 Ray actor, DeepSpeed)          rank 0 of the weight group
       ├── actors   (N Ray actors, vLLM or HF)        ranks 1..N
       └── preprocess (M Ray actors, math-verify)
       │
       └── watches the control stream (progress), fails naming the component that died,
           then stops everything and writes summary.json

The embedded Redis is supervised (restarted on its port from its append-only file when it dies,
``broker.max_redis_restarts`` times); every client retries for ``broker.reconnect_timeout_s``
meanwhile. Entries every consumer group acknowledged are trimmed every ``broker.trim_every_s``;
the accounting reads the group-id ledger, the unacknowledged entries and the learner's result.

With pools.py (and pool.py for the offline passes) it is the only code that calls ``ray.init`` or sets actor options.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from contextlib import ExitStack
from pathlib import Path

from broker.accounting import StreamUpkeep, account_groups
from broker.embedded import EmbeddedRedis
from broker.schemas import Progress, ScaleRequest, StepReport
from broker.streams import ControlChannel, connect, ensure_groups, redacted, stage_files
from orchestrator.autoscale import LagAutoscaler
from orchestrator.evaluation import TrainingEval, load_eval_sets
from orchestrator.logfilter import LogFilter
from orchestrator.metrics import RunMetrics
from orchestrator.models import resolve_model_path
from orchestrator.pools import Pools
from orchestrator.progress import Phases, progress_line, what_changed
from orchestrator.report import report_after_run
from pope.config import PopeConfig, dump_config
from pope.datasets import run_problems
from pope.devices import ds_accelerator
from pope.models.folder import MAX_STAGED_BYTES, ModelFolder
from pope.prompts import PromptSchedule

PROBE_TOKENS = 8


class ComponentFailed(RuntimeError):
    """A component of the run died; the message names it."""


class _RedisUpkeep(StreamUpkeep):
    """The launcher's side of Redis: the streams' upkeep, and failing with Redis named when its
    supervisor gave up."""

    def __init__(self, server: EmbeddedRedis | None, client, run_id: str, trim_every_s: float, url: str):
        super().__init__(client, run_id, trim_every_s)
        self.server, self.url = server, url

    def check(self) -> None:
        if self.server is not None and self.server.failure:
            raise ComponentFailed(f"Redis ({redacted(self.url)}) is gone: {self.server.failure}")

    def summary(self) -> dict:
        return {
            "redis_restarts": self.server.restarts if self.server is not None else 0,
            "stream_entries_trimmed": dict(self.trimmed),
        }


class _RunDirLock:
    """One launcher per run directory: ``pope train --resume`` while the run's first launcher still
    runs would start a second Redis on its AOF and a second learner on its checkpoints. An exclusive
    ``flock`` on ``launcher.lock``: the kernel drops it when the holder dies, however it dies."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "launcher.lock"
        self._fd: int | None = None

    def __enter__(self) -> _RunDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ComponentFailed(
                f"{self.path.parent} is in use by another pope train (pid {holder}): wait for it to end, "
                "or stop it, before resuming this run"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def local_ray_auth(environ=os.environ) -> str | None:
    """Make a local Ray of this process accept only clients that hold its token.

    Ray's servers listen on every interface (Ray 2.60 has no bind address), so a local run guards
    them with Ray's token authentication instead: unless the environment chose a mode
    (``RAY_AUTH_MODE``) or joins a cluster (``RAY_ADDRESS``), mode ``token`` with a fresh random
    token (unless one is configured). Ray reads the mode once, at import: call this before anything
    imports ray (``pope``'s entry point does). Returns the mode now in force, None when left alone."""
    if environ.get("RAY_ADDRESS") or environ.get("RAY_AUTH_MODE"):
        return None
    environ["RAY_AUTH_MODE"] = "token"
    configured = environ.get("RAY_AUTH_TOKEN") or environ.get("RAY_AUTH_TOKEN_PATH")
    if not configured and not (Path.home() / ".ray" / "auth_token").is_file():
        environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return "token"


def loopback_interface() -> str | None:
    """The name of the interface holding 127.0.0.1 ('lo' on Linux), None when there is none."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == "127.0.0.1" for a in addresses):
            return name
    return None


def _process_env(config: PopeConfig, threads: int) -> dict[str, str]:
    env = {
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "VLLM_CONFIGURE_LOGGING": "1",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    }
    env["DS_ACCELERATOR"] = ds_accelerator(config.learner.num_gpus)  # DeepSpeed reads it at import
    if not os.environ.get("RAY_ADDRESS"):  # a local run: the weight group stays on the loopback
        env["POPE_WEIGHT_SYNC_HOST"] = "127.0.0.1"
        loopback = loopback_interface()
        if loopback:
            env["GLOO_SOCKET_IFNAME"] = loopback
    return env


def _start_ray(config: PopeConfig) -> bool:
    """Join the cluster when there is one (ray job submit sets RAY_ADDRESS); else start a local Ray.
    Returns True when this process started Ray (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], namespace=f"pope-{config.run.run_id}", log_to_driver=True)
        return False
    # address="local": always a fresh Ray of our own, never a cluster some other process left running
    ray.init(
        address="local", include_dashboard=False, namespace=f"pope-{config.run.run_id}", log_to_driver=True
    )
    return True


def _open_broker(stack: ExitStack, config: PopeConfig, run_dir, printer):
    """Redis (embedded and supervised unless ``broker.redis_url``), the run's streams and control
    channel, and the metrics exporter; everything closes with ``stack``."""
    run_id = config.run.run_id
    server = None
    if config.broker.redis_url:
        redis_url = config.broker.redis_url  # external: never restarted by pope
    else:
        server = stack.enter_context(EmbeddedRedis(run_dir / "redis", persistence=config.broker.persistence))
        server.supervise(config.broker.max_redis_restarts, printer)
        redis_url = server.url
    client = connect(redis_url, config.broker.socket_timeout_s, config.broker.reconnect_timeout_s)
    stack.callback(client.close)
    upkeep = _RedisUpkeep(server, client, run_id, config.broker.trim_every_s, redis_url)
    ensure_groups(client, run_id)
    control = ControlChannel(client, run_id)
    control.skip_history()
    metrics = None
    if config.metrics.enabled:
        try:
            metrics = RunMetrics(run_id, client, config.metrics.port, config.metrics.host)
            stack.callback(metrics.close)
            printer(f"metrics: http://{config.metrics.host}:{metrics.port}/metrics")
        except OSError as exc:  # deliberate: a busy port costs the metrics, not the run
            printer(f"metrics disabled: cannot serve on {config.metrics.host}:{config.metrics.port}: {exc}")
    return redis_url, client, upkeep, control, metrics


def _resolve_inputs(config: PopeConfig, printer):
    """What every component needs, resolved once, before any process starts (a bad dataset, mix or
    model fails here): the sampler's problems, the easy problems, the model folder."""
    problems = run_problems(config.data, config.run.seed)
    easy = run_problems(config.data, config.run.seed, easy=True) if config.data.easy_source else None
    schedule = PromptSchedule(problems, config.data, config.run.seed, config.learner.groups_per_step, easy)
    if schedule.not_guidable:
        shown = ", ".join(p.problem_id for p in schedule.not_guidable[:10])
        printer(
            f"data: {len(schedule.not_guidable)} of {len(problems)} problems have no prefix shorter than "
            f"data.prefix_fraction={config.data.prefix_fraction} of their solution: left out of this mix "
            f"({shown}{', ...' if len(schedule.not_guidable) > 10 else ''})"
        )
    printer(f"data: each learner step holds {schedule.quota}{' (paired)' if schedule.paired else ''}")
    model_path = str(resolve_model_path(config.model.path, config.model.cache_dir, config.run.seed))
    eval_sets = load_eval_sets(config) if config.eval.every_steps else {}
    for name, problems in eval_sets.items():
        printer(f"eval: set {name}, {len(problems)} problems, n={config.eval.n}, k={config.eval.k}")
    return schedule, easy, model_path, eval_sets


def _stage_model(config: PopeConfig, model_path: str, client, run_id: str, printer) -> ModelFolder:
    """A small built-in model travels with its files, staged in Redis for nodes that cannot see the
    driver's folder; a large one (or a user's folder) must be on storage every node sees."""
    model = ModelFolder(model_path)
    if not config.model.path.startswith("builtin:"):
        return model
    size = ModelFolder.size(model_path)
    if size > MAX_STAGED_BYTES:
        printer(
            f"model {config.model.path}: {size / 2**20:.0f} MiB, not staged for other nodes "
            f"(limit {MAX_STAGED_BYTES >> 20} MiB): on a cluster, {model_path} must be on storage every node sees"
        )
        return model
    files = ModelFolder.read_files(model_path)
    return ModelFolder(model_path, stage_files(client, run_id, f"model:{ModelFolder.digest(files)}", files))


def train(config: PopeConfig, printer=print, resume: bool = False) -> dict:
    """Run one training job to ``learner.steps`` steps; returns the summary (also in summary.json).

    ``resume``: continue the run of ``config.run.run_id`` from its last checkpoint, with the streams
    as the persisted Redis kept them (pending entries are replayed, nothing trained twice)."""
    import ray

    config = config.with_run_id()
    run_id = config.run.run_id
    run_dir = (config.run.output_dir / run_id).resolve()
    if resume and not (run_dir / "checkpoints" / "latest").is_file():
        raise ComponentFailed(f"cannot resume {run_dir}: no checkpoint there (checkpoint.every > 0?)")
    run_dir.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    t_start = time.monotonic()

    phases = Phases()
    with ExitStack() as stack:
        stack.enter_context(_RunDirLock(run_dir))
        (run_dir / ("config.resumed.yaml" if resume else "config.yaml")).write_text(dump_config(config))
        with phases.time("redis"):
            redis_url, client, upkeep, control, metrics = _open_broker(stack, config, run_dir, printer)
        with phases.time("model"):
            schedule, easy, model_path, eval_sets = _resolve_inputs(config, printer)
            printer(f"run {run_id}: model {model_path}\nrun dir {run_dir}")
            # staged before Ray starts: under ray job submit, joining the cluster may unpack the job's working
            # directory again, and a built-in model built inside it is gone (other nodes fetch the staged copy)
            model = _stage_model(config, model_path, client, run_id, printer)

        with phases.time("ray"):
            started_ray = _start_ray(config)
        if started_ray:
            stack.callback(ray.shutdown)
        log_filter = _install_log_filter(stack, config, run_dir, printer)
        # problems go by value: Ray keeps them with each actor's creation task, so a restarted actor
        # gets them again (an object put here was not always retrievable at the restart)
        pools = Pools(config, model, redis_url, _process_env(config, 1), schedule.hard, easy)
        stack.callback(_kill_all, pools.all_handles)
        _write_connection(run_dir, run_id, redis_url)

        lcfg = config.learner
        with phases.time("members"):
            learner = _start_members(pools, config, run_dir, len(schedule.hard), phases)
        first_step = 0
        if resume:
            first_step = step = ray.get(learner.resume.remote())
            printer(f"resumed from the checkpoint of step {step}")
        # the weight group, then a first broadcast: every actor starts from the learner's exact weights
        with phases.time("weight group"):
            _wait_all(
                {learner.regroup.remote([m.handle for m in pools.actors]): "learner"},
                "forming the weight group",
            )
        # before any update: the engines decode with exactly the learner's weights
        with phases.time("probe"):
            probe_prompt = ray.get(pools.actors[0].handle.encode.remote("Compute 1 + 2."))
            initial_probe_diffs = _probe(pools, learner, probe_prompt)
        wall["setup_s"] = time.monotonic() - t_start
        wall["setup_phases"] = {**phases.seconds, "members_up": phases.parts.get("members", {})}
        printer(f"{pools.sizes} and 1 learner up; " + phases.line(wall["setup_s"]))
        evaluator = None
        if eval_sets:  # the baseline, before any step: the loops do not run yet
            evaluator = TrainingEval(
                config,
                eval_sets,
                lambda: [m.handle for m in pools.actors],
                learner,
                metrics,
                run_dir,
                printer,
            )
            stack.callback(evaluator.close)
            _evaluate_now(evaluator, first_step)

        t_loop = time.monotonic()
        learner_ref = learner.run.remote(lcfg.steps)
        for m in pools.workers + pools.actors:
            m.loop_ref = m.handle.run.remote()
        _monitor(
            pools, learner_ref, control, client, metrics, run_id, config, t_loop, printer, upkeep, evaluator
        )
        try:
            learner_result = ray.get(learner_ref)
        except Exception as exc:
            raise ComponentFailed(f"learner failed: {exc}") from exc
        if evaluator is not None:  # the rounds the monitor queued need the loops (continuous generation)
            try:
                evaluator.finish()
            except RuntimeError as exc:
                raise ComponentFailed(str(exc)) from exc
        wall["train_loop_s"] = time.monotonic() - t_loop

        actors = [m.handle for m in pools.actors]
        stats = _stop_loops(pools)
        if evaluator is not None:  # the final weights, every actor holding them
            _evaluate_now(evaluator, learner_result["steps"])
        # Every actor now holds the final weights: check it on the same fixed prompt.
        probe_diffs = _probe(pools, learner, probe_prompt)
        actor_versions = ray.get([a.policy_version.remote() for a in actors])

        checkpoint = None
        if config.checkpoint.save_final:
            checkpoint = ray.get(learner.save_hf.remote(str(run_dir / "checkpoint")))

        upkeep.check()
        upkeep.trim(force=True)  # the accounting below must not need an acknowledged entry
        summary = _account(
            client, run_id, learner_result, stats, wall, actor_versions, probe_diffs, checkpoint
        )
        summary.update(upkeep.summary())
        summary.update(_run_facts(pools, schedule, initial_probe_diffs))
        # logging.trackers: started, failed, turned off (closed after the last evaluation reached them)
        summary["tracking"] = ray.get(learner.end_tracking.remote())
        if evaluator is not None:
            summary["eval"] = evaluator.summary()
        if metrics is not None:
            for report in control.poll():
                metrics.observe(report)
            metrics.refresh(pools.sizes)
            summary["metrics_export_errors"] = metrics.export_errors
        summary["control_entries_set_aside"] = control.set_aside
        for m in pools.actors + pools.workers:
            ray.get(m.handle.close.remote())
        ray.get(learner.close.remote())
        wall["total_s"] = time.monotonic() - t_start
        summary["wall_s"] = wall
        if log_filter is not None:  # so far: a line Ray forwards later still goes to the file
            summary["engine_notices_filtered"] = log_filter.filtered
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        table = what_changed(run_dir)
        if table:
            printer("what changed, first steps against last (metrics.jsonl, eval.jsonl):\n" + table)
        report_after_run(run_dir, printer)
        if log_filter is not None:
            printer(f"{log_filter.filtered} known-harmless engine notices filtered: {log_filter.path}")
        summary["run_dir"] = str(run_dir)
        return summary


def _evaluate_now(evaluator: TrainingEval, step: int) -> None:
    """One evaluation round on this thread (no loop runs: the engines generate at once)."""
    try:
        evaluator.run_round(step)
    except Exception as exc:  # an actor or the verifier failed: the run stops naming it
        raise ComponentFailed(f"evaluation of step {step} failed: {exc}") from exc


def _install_log_filter(stack: ExitStack, config: PopeConfig, run_dir: Path, printer) -> LogFilter | None:
    """``run.filter_known_logs``: the engines' known-harmless notices go to a file, not the screen."""
    if not config.run.filter_known_logs:
        return None
    log_filter = LogFilter(run_dir / "engine_notices.log")
    if not log_filter.install():
        printer(
            "run.filter_known_logs: this Ray has no driver-side log hook; engine notices are shown unfiltered"
        )
        return None
    stack.callback(log_filter.uninstall)
    return log_filter


def _start_members(pools: Pools, config: PopeConfig, run_dir, num_hard: int, phases: Phases | None = None):
    """The actors, workers and learner of the config, up and placed; returns the learner.
    ``phases`` gets, per kind of member, the time until the last one of that kind was up."""
    import ray

    t0 = time.monotonic()
    pools.actors = [pools.new_actor() for _ in range(config.actors.num_actors)]
    pools.workers = [pools.new_worker() for _ in range(config.preprocess.num_workers)]
    learner = pools.new_learner(str(run_dir), num_hard)
    names = {m.handle.__ray_ready__.remote(): m.name for m in pools.actors + pools.workers}
    names[learner.__ray_ready__.remote()] = "learner"
    if phases is not None:  # members start in parallel: each kind's time until its last one is up
        pending = list(names)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=900)
            if not ready:
                break
            kind = names[ready[0]].rstrip("0123456789")
            phases.parts.setdefault("members", {})[f"{kind} up"] = time.monotonic() - t0
    _wait_all(names, "starting")
    for m in pools.actors + pools.workers:
        pools.record_node(m.name, m.handle)
    pools.record_node("learner", learner)
    return learner


def _stop_loops(pools: Pools) -> dict:
    """Stop every actor's and worker's loop; their stats by name (members resized away included)."""
    for m in pools.actors + pools.workers:
        m.handle.stop.remote()
    stop_refs = pools.loop_refs()
    stats = dict(pools.finished_stats)
    stats.update(zip(stop_refs.values(), _wait_all(stop_refs, "stopping"), strict=True))
    return stats


def _run_facts(pools: Pools, schedule: PromptSchedule, initial_probe_diffs: list[float]) -> dict:
    return {
        "pool_sizes": pools.sizes,
        "problems": len(schedule.hard) + len(schedule.not_guidable),
        "problems_not_guidable": [p.problem_id for p in schedule.not_guidable],
        "step_mix": schedule.quota,
        "weight_sync_initial_max_abs_logprob_diff": initial_probe_diffs,
        "placement": pools.placement,  # every member the run had, resized ones included
    }


def _probe(pools, learner, prompt: list[int]) -> list[float]:
    """Per actor: the largest gap between its engine's logprobs of its greedy continuation of
    ``prompt`` and the learner's logprobs of the same tokens (same weights, float32: about 1e-6 on CPU)."""
    import ray

    gaps = []
    for member in pools.actors:
        ids, actor_lp = ray.get(member.handle.probe.remote(prompt, PROBE_TOKENS))
        learner_lp = ray.get(learner.logprobs_of.remote(prompt, ids))
        gaps.append(max(abs(x - y) for x, y in zip(actor_lp, learner_lp, strict=True)))
    return gaps


def _write_connection(run_dir, run_id: str, redis_url: str) -> None:
    """Where ``pope scale`` finds the run: its id and Redis URL (it holds the password: mode 0600)."""
    path = run_dir / "connection.json"
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(json.dumps({"run_id": run_id, "redis_url": redis_url}))


def _monitor(
    pools, learner_ref, control, client, metrics, run_id, config, t_loop, printer, upkeep, evaluator=None
) -> None:
    """Until the learner finishes: progress lines, metrics, resize requests, restarts of components
    Ray brought back, heartbeats, and evaluation rounds every ``eval.every_steps`` steps (queued: the
    training goes on while they run); a component that dies for good or goes silent fails the run
    with its name."""
    import ray

    steps = config.learner.steps
    last_refresh = 0.0
    heard = {m.name: time.monotonic() for m in pools.actors + pools.workers}
    heard["learner"] = time.monotonic()
    scaler = (
        LagAutoscaler(config.autoscale, config.broker.max_groups_in_flight)
        if config.autoscale.enabled
        else None
    )
    while True:
        loop_refs = pools.loop_refs()
        ready, _ = ray.wait([learner_ref, *loop_refs], num_returns=1, timeout=0.5)
        upkeep.check()
        upkeep.trim()
        if evaluator is not None:
            try:
                evaluator.check()
            except RuntimeError as exc:
                raise ComponentFailed(str(exc)) from exc
        if time.monotonic() - last_refresh > 1.0:
            if metrics is not None:
                metrics.refresh(pools.sizes)
            if scaler is not None:  # one buffer sample a second; a decision when a window is full
                scaler.observe(time.monotonic(), *upkeep.waiting())
                decision = scaler.decide(time.monotonic(), len(pools.actors), len(pools.workers))
                if decision is not None:
                    resized = pools.resize(decision.pool, decision.size, _wait_all)
                    printer(f"autoscale {decision.pool} to {decision.size} ({decision.reason}): {resized}")
            last_refresh = time.monotonic()
        for message in control.poll():
            if metrics is not None:
                metrics.observe(message)
            if isinstance(message, Progress):
                heard[message.component] = time.monotonic()
            elif isinstance(message, StepReport):
                printer(progress_line(message, steps, time.monotonic() - t_loop, upkeep.waiting()[0]))
                every = config.eval.every_steps
                if evaluator is not None and message.step % every == 0 and message.step < steps:
                    evaluator.request(message.step)  # the last step's round runs after the loops stop
            elif isinstance(message, ScaleRequest):
                printer(
                    f"scale {message.pool} to {message.size}: "
                    + pools.resize(message.pool, message.size, _wait_all)
                )
            # members a resize added start with a fresh heartbeat
            heard.update(
                {m.name: time.monotonic() for m in pools.actors + pools.workers if m.name not in heard}
            )
        live = {m.name for m in pools.actors + pools.workers} | {"learner"}
        for name, when in heard.items():
            if name in live and time.monotonic() - when > config.metrics.heartbeat_timeout_s:
                raise ComponentFailed(
                    f"{name} sent no progress for {config.metrics.heartbeat_timeout_s:.0f}s (hung?)"
                )
        if ready and ready[0] is learner_ref:
            return
        if not ready:
            continue
        name = loop_refs[ready[0]]
        try:
            ray.get(ready[0])
        except ray.exceptions.RayActorError as exc:
            printer(f"{name} died ({type(exc).__name__}); waiting for Ray to restart it")
            try:
                printer(pools.restart(name, _wait_all))
            except RuntimeError as restart_error:
                raise ComponentFailed(f"{name} died and could not come back: {restart_error}") from exc
            heard[name] = time.monotonic()
            continue
        except Exception as exc:
            raise ComponentFailed(f"{name} failed: {exc}") from exc
        raise ComponentFailed(f"{name} stopped before the learner finished")


def _wait_all(refs: dict, what: str, timeout_s: float = 900.0) -> list:
    """ray.get every ref, naming the component whose call failed or hung."""
    import ray

    pending = dict(refs)
    results = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise ComponentFailed(
                f"{', '.join(pending.values())}: no answer within {timeout_s:.0f}s while {what}"
            )
        name = pending.pop(ready[0])
        try:
            results[ready[0]] = ray.get(ready[0])
        except Exception as exc:
            raise ComponentFailed(f"{name} failed while {what}: {exc}") from exc
    return [results[ref] for ref in refs]


def _kill_all(handles: list) -> None:
    import ray

    for handle in handles:
        try:
            ray.kill(handle)
        except ValueError:  # already gone
            continue


def _account(client, run_id, learner_result, stats, wall, actor_versions, probe_diffs, checkpoint) -> dict:
    """The run's summary: where every group ended (``broker.accounting``), and what it cost."""
    written = {gid for name, stat in stats.items() if name.startswith("actor") for gid in stat.group_ids}
    trained = learner_result["trained_group_ids"]
    book = account_groups(client, run_id, trained, learner_result["skipped_group_ids"], written)
    counts = book.counts()

    actor_stats = [s for n, s in stats.items() if n.startswith("actor")]
    pre_stats = [s for n, s in stats.items() if n.startswith("preprocess")]
    completions = sum(s.completions for s in actor_stats)
    tokens = sum(s.completion_tokens for s in actor_stats)
    loop_s = wall["train_loop_s"]
    verdicts: dict[str, int] = {}
    for s in pre_stats:
        for k, v in s.verdicts.items():
            verdicts[k] = verdicts.get(k, 0) + v
    wall.update(
        generate_s=sum(s.generate_s for s in actor_stats),
        weight_load_s=sum(s.weight_load_s for s in actor_stats),
        actor_backpressure_wait_s=sum(s.backpressure_wait_s for s in actor_stats),
        score_s=sum(s.score_s for s in pre_stats),
        learner_data_wait_s=learner_result["data_wait_s"],
        learner_forward_backward_s=learner_result["forward_backward_s"],
        learner_optimizer_s=learner_result["optimizer_s"],
        learner_broadcast_s=learner_result["broadcast_s"],
    )
    return {
        "run_id": run_id,
        "steps": learner_result["steps"],
        "groups_generated": len(book.generated),
        "groups_trained": counts["trained"],
        "groups_duplicated": book.trained_copies,
        "groups_lost": counts["lost"],
        "groups_in_flight_at_stop": counts["in_flight"],
        "groups_skipped": {reason: len(ids) for reason, ids in learner_result["skipped_group_ids"].items()},
        "groups_dead_lettered": counts["dead_lettered"],
        # entries a preprocess worker took over from another that had held them past claim_idle_s
        "groups_claimed": sum(s.claimed for s in pre_stats),
        "rollouts_reasoning_unclosed": sum(s.reasoning_unclosed for s in pre_stats),
        "group_outcomes": counts,
        "dead_letters": {"by_reason": book.letters, "without_group_id": book.letters_without_group},
        "learner_version": learner_result["learner_version"],
        "actor_versions": actor_versions,
        "completions_generated": completions,
        "completion_tokens_generated": tokens,
        "completions_per_s": completions / loop_s if loop_s else 0.0,
        "tokens_per_s": tokens / loop_s if loop_s else 0.0,
        "reward_mean": {k: total / n for k, (total, n) in sorted(learner_result["reward_sums"].items()) if n},
        "verdicts": verdicts,
        "weight_sync_max_abs_logprob_diff": probe_diffs,
        "checkpoint": checkpoint,
        "trained_group_ids": sorted(trained),
        "in_flight_group_ids": book.ids("in_flight"),
        "lost_group_ids": book.ids("lost"),
        "dead_lettered_group_ids": book.by_reason("dead_lettered"),
        "skipped_group_ids": {
            reason: sorted(ids) for reason, ids in learner_result["skipped_group_ids"].items()
        },
    }
