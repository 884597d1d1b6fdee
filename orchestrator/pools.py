"""The run's Ray actors: the learner, the actor pool and the preprocess pool, resizable while the
run goes on (``pope scale``).

Resizing rules (nothing lost, nothing trained twice):
- an added preprocess worker joins the consumer group and reads; a removed one finishes its
  current batch (its outputs written, its inputs acknowledged) and stops; entries it left
  pending are claimed by the others after the idle timeout;
- an added actor starts from the model folder, joins a new weight-broadcast group formed by the
  learner with every actor, receives the current weights, and only then generates;
- a removed actor finishes the engine call it is in (its groups are written), stops, and the
  learner regroups without it before it is killed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pope.config import PopeConfig


@dataclass
class Member:
    name: str
    handle: object
    loop_ref: object | None = None


@dataclass
class Pools:
    config: PopeConfig
    model: object  # pope.models.folder.ModelFolder, resolved once by the launcher
    redis_url: str
    env: dict
    problems: list | None = None  # the run's validated problems (the sampler's hard ones), and the easy ones
    easy: list | None = None
    learner: object = None
    actors: list[Member] = field(default_factory=list)
    workers: list[Member] = field(default_factory=list)
    finished_stats: dict = field(default_factory=dict)  # name -> stats of members already stopped
    placement: dict = field(default_factory=dict)  # name -> Ray node id, of every member the run had
    all_handles: list = field(default_factory=list)
    _next_actor: int = 0
    _next_worker: int = 0

    def _options(
        self,
        name: str,
        num_cpus: float,
        num_gpus: float,
        resources: dict,
        threads: int,
        concurrency: int,
        restarts: int = 0,
    ):
        env = dict(self.env, OMP_NUM_THREADS=str(threads))
        return {
            "name": f"pope-{self.config.run.run_id}-{name}",
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "resources": resources or None,
            "max_concurrency": concurrency,
            "max_restarts": restarts,
            "runtime_env": {"env_vars": env},
        }

    def new_actor(self) -> Member:
        import ray

        from actors.actor import RolloutActor

        acfg = self.config.actors
        name = f"actor{self._next_actor}"
        opts = self._options(
            name, acfg.num_cpus, acfg.num_gpus, acfg.resources, acfg.torch_threads, 4, acfg.max_restarts
        )
        handle = (
            ray.remote(RolloutActor)
            .options(**opts)
            .remote(
                self.config.for_actors(),
                self._next_actor,
                self.model,
                self.redis_url,
                self.problems,
                self.easy,
            )
        )
        self._next_actor += 1
        self.all_handles.append(handle)
        return Member(name, handle)

    def new_worker(self) -> Member:
        import ray

        from preprocess.worker import PreprocessWorker

        name = f"preprocess{self._next_worker}"
        opts = self._options(
            name, self.config.preprocess.num_cpus, 0, {}, 1, 2, self.config.preprocess.max_restarts
        )
        handle = (
            ray.remote(PreprocessWorker)
            .options(**opts)
            .remote(self.config.for_preprocess(), self._next_worker, self.redis_url)
        )
        self._next_worker += 1
        self.all_handles.append(handle)
        return Member(name, handle)

    def new_learner(self, run_dir: str, num_hard_problems: int) -> object:
        import ray

        from learner.trainer import Learner

        lcfg = self.config.learner
        opts = self._options("learner", lcfg.num_cpus, lcfg.num_gpus, lcfg.resources, lcfg.torch_threads, 3)
        handles = [m.handle for m in self.actors]
        self.learner = (
            ray.remote(Learner)
            .options(**opts)
            .remote(
                self.config.for_learner(), self.model, self.redis_url, run_dir, handles, num_hard_problems
            )
        )
        self.all_handles.append(self.learner)
        return self.learner

    def record_node(self, name: str, handle) -> None:
        """Note the node ``name`` runs on (it must be up); a restart may move it: call again."""
        import ray

        def node_id(actor) -> str:  # runs inside the actor
            return ray.get_runtime_context().get_node_id()

        self.placement[name] = ray.get(handle.__ray_call__.remote(node_id))

    def loop_refs(self) -> dict:
        return {m.loop_ref: m.name for m in self.actors + self.workers if m.loop_ref is not None}

    @property
    def sizes(self) -> dict[str, int]:
        return {"actors": len(self.actors), "preprocess": len(self.workers)}

    # -- resizing while the learner runs -----------------------------------------------------------
    def resize(self, pool: str, size: int, wait_all) -> str:
        import ray

        if pool == "preprocess":
            while len(self.workers) < size:
                member = self.new_worker()
                wait_all({member.handle.__ray_ready__.remote(): member.name}, "starting")
                self.record_node(member.name, member.handle)
                member.loop_ref = member.handle.run.remote()
                self.workers.append(member)
            while len(self.workers) > size:
                self._retire(self.workers.pop(), wait_all)
            return f"preprocess pool at {len(self.workers)}"
        added = []
        while len(self.actors) < size:
            member = self.new_actor()
            wait_all({member.handle.__ray_ready__.remote(): member.name}, "starting")
            self.record_node(member.name, member.handle)
            self.actors.append(member)
            added.append(member)
        removed = []
        while len(self.actors) > size:
            member = self.actors.pop()
            member.handle.stop.remote()
            removed.append(member)
        for member in removed:  # they finish the engine call they are in, write it, and stop
            self.finished_stats[member.name] = wait_all({member.loop_ref: member.name}, "stopping")[0]
        start = time.monotonic()
        wait_all({self.learner.regroup.remote([m.handle for m in self.actors]): "learner"}, "regrouping")
        for member in added:  # current weights loaded: now they may generate
            member.loop_ref = member.handle.run.remote()
        for member in removed:
            ray.get(member.handle.close.remote())
            ray.kill(member.handle)
        return f"actor pool at {len(self.actors)} (regrouped in {time.monotonic() - start:.1f}s)"

    def restart(self, name: str, wait_all) -> str:
        """Ray restarted ``name`` (max_restarts): wait until it is back; an actor first rejoins the
        weight group (the learner regroups and sends the current weights); then its loop restarts."""
        import ray

        member = next(m for m in self.actors + self.workers if m.name == name)
        deadline = time.monotonic() + 600
        while True:  # calls fail with ActorUnavailableError while Ray restarts it
            try:
                ray.get(member.handle.__ray_ready__.remote(), timeout=60)
                break
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
            except ray.exceptions.ActorDiedError as exc:
                raise RuntimeError(f"{name} is gone for good (no restarts left?): {exc}") from exc
        self.record_node(name, member.handle)
        if member in self.actors:
            wait_all({self.learner.regroup.remote([m.handle for m in self.actors]): "learner"}, "regrouping")
        member.loop_ref = member.handle.run.remote()
        return f"{name} restarted and back in the run"

    def _retire(self, member: Member, wait_all) -> None:
        import ray

        member.handle.stop.remote()
        self.finished_stats[member.name] = wait_all({member.loop_ref: member.name}, "stopping")[0]
        ray.get(member.handle.close.remote())
        ray.kill(member.handle)
