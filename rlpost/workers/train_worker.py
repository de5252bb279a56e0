"""The training worker: one Ray actor per training device, hosting the megatron roles it was given (actor, reference,
critic) and, in colocated placement, a rollout engine: the hybrid engine, which frees the engine's KV cache while
training and takes the new weights in place after each update.

Weight sync runs the resharder (rlpost.resharding): every rank builds its inference shard inside its micro-DP group;
with infer_tp > 1 an inference replica gathers full tensors (what a server loads). Colocated, each replica's first
rank loads them into its engine; split, replica 0's first rank broadcasts them to every rollout server.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlpost.batch import Batch
from rlpost.config.schema import RLConfig
from rlpost.net import free_port
from rlpost.workers.base import Worker
from rlpost.workers.roles import CriticRole, PolicyRole


class TrainWorker(Worker):
    def __init__(self, rank: int, world: int, per_node: int, cfg: RLConfig, model_dirs: dict[str, str],
                 total_steps: int, roles: list[str]):
        super().__init__(rank, world, per_node)
        self.cfg, self.model_dirs, self.total_steps, self.roles = cfg, model_dirs, total_steps, set(roles)
        self.actor = self.ref = self.critic = self.engine_host = self._broadcast = None
        self._sync = None

    def setup(self) -> dict:
        from rlpost.megatron.parallel import ranks, setup_model_parallel

        cfg = self.cfg
        setup_model_parallel(cfg.actor.tp, cfg.actor.pp, cfg.trainer.seed)
        temperature = cfg.rollout.sampling.temperature or 1.0
        self.actor = PolicyRole(cfg.actor, self.model_dirs["actor"], self.total_steps, temperature, trainable=True)
        if "ref" in self.roles:
            self.ref = PolicyRole(cfg.actor, self.model_dirs["actor"], self.total_steps, temperature, trainable=False)
        if "critic" in self.roles:
            self.critic = CriticRole(cfg.critic, self.model_dirs["critic"], self.total_steps)
        self._ranks = ranks()
        return self.layout()

    def layout(self) -> dict:
        from megatron.core import parallel_state as ps

        r = self._ranks
        return {"dp_rank": r["dp_rank"], "dp": r["dp"], "tp_rank": r["tp_rank"], "pp_rank": r["pp_rank"],
                "collects": r["tp_rank"] == 0 and ps.is_pipeline_last_stage()}

    # ---- per-sample computations (dispatched over DP) -----------------------------------------------------------

    def _answer(self, out: dict | None) -> Batch | None:
        return None if out is None or not self.layout()["collects"] else Batch(out)

    def old_log_probs(self, batch: Batch) -> Batch | None:
        a = self.cfg.actor
        out = self.actor.log_probs(batch, a.micro_batch_size, a.max_tokens_per_micro_batch, with_entropy=True)
        return self._answer(out and {"old_log_probs": out["log_probs"], "entropy": out["entropy"]})

    def ref_log_probs(self, batch: Batch) -> Batch | None:
        r = self.cfg.ref
        out = self.ref.log_probs(batch, r.micro_batch_size, r.max_tokens_per_micro_batch)
        return self._answer(out and {"ref_log_probs": out["log_probs"]})

    def values(self, batch: Batch) -> Batch | None:
        return self._answer(self.critic.values(batch))

    def update_actor(self, batch: Batch, n_mini_batches: int) -> dict:
        return self.actor.update(batch, n_mini_batches)

    def update_critic(self, batch: Batch, n_mini_batches: int) -> dict:
        return self.critic.update(batch, n_mini_batches)

    # ---- rollout engine and weight sync -------------------------------------------------------------------------

    def start_engine(self, context_length: int) -> str | None:
        """Colocated: the first rank of each inference replica hosts an engine; returns its URL (None elsewhere)."""
        from rlpost.workers.rollout import EngineHost

        if self._resharding()[0].inference_position(self.rank)[1] == 0:
            self.engine_host = EngineHost(self.model_dirs["actor"], self.cfg.rollout, context_length,
                                          self.cfg.trainer.seed + self.rank)
            return self.engine_host.url
        return None

    def engine_memory(self, release: bool) -> None:
        """Hybrid engine: give the KV cache back while training, take it again before generating."""
        if self.engine_host is not None:
            engine = self.engine_host.engine
            fn = engine.release_memory if release else engine.resume_memory
            engine.call(lambda: fn(["kv_cache"])).result()

    def _resharding(self):
        """(plan, micro-DP groups, replica groups), made once: group creation is collective over the world."""
        if self._sync is None:
            from rlpost.resharding.plan import make_plan
            from rlpost.resharding.transfer import make_groups

            plan = make_plan(self.cfg.actor.tp, self.cfg.actor.pp, self.world // (self.cfg.actor.tp * self.cfg.actor.pp),
                             self.cfg.rollout.infer_tp)
            self._sync = plan, make_groups(plan), make_groups(plan, replicas=True)
        return self._sync

    def sync_weights(self, version: str, server_urls: list[str] | None = None) -> int:
        """Push the actor's weights: into this worker's engine (colocated), or, from replica 0's first rank, to the
        split servers (server_urls). Every rank must call it. Returns the tensors this rank delivered."""
        from rlpost.resharding.transfer import full_buckets, inference_buckets
        from rlpost.resharding.transports import BroadcastTransport, EngineTransport, push_buckets

        plan, groups, replica_groups = self._resharding()
        stage = self.actor.stage
        dtype = getattr(torch, self.cfg.actor.dtype)
        bucket_bytes = self.cfg.rollout.update_weights_bucket_mb << 20
        buckets = inference_buckets(plan, self.rank, self.actor.named_parameters(), stage.dims, groups, bucket_bytes,
                                    dtype, spec=stage.spec)
        replica, position = plan.inference_position(self.rank)
        feeds = server_urls is None or replica == 0  # split: only replica 0 feeds the servers
        if feeds and plan.infer_tp > 1:
            buckets = full_buckets(plan, self.rank, buckets, stage.dims, replica_groups)
        if not feeds or position != 0:
            for _ in buckets:  # this rank's part in its groups' collectives
                pass
            return 0
        if self.engine_host is not None:
            return push_buckets(buckets, EngineTransport(self.engine_host.engine), version)
        if self._broadcast is None:  # the servers join one weight-update group for the whole run
            import ray

            self._broadcast = BroadcastTransport(server_urls, ray.util.get_node_ip_address(), free_port())
        return push_buckets(buckets, self._broadcast, version)

    # ---- checkpoints --------------------------------------------------------------------------------------------

    def save(self, directory: str, extra: dict) -> None:
        from rlpost.megatron.checkpoint import save_checkpoint

        save_checkpoint(self.actor.stage, self.actor.optimizer, self.actor.scheduler, Path(directory) / "actor", extra)
        if self.critic is not None:
            save_checkpoint(self.critic.stage, self.critic.optimizer, self.critic.scheduler,
                            Path(directory) / "critic", extra)

    def load(self, directory: str) -> dict:
        from rlpost.megatron.checkpoint import load_checkpoint

        extra = load_checkpoint(self.actor.stage, self.actor.optimizer, self.actor.scheduler, Path(directory) / "actor")
        if self.critic is not None:
            load_checkpoint(self.critic.stage, self.critic.optimizer, self.critic.scheduler, Path(directory) / "critic")
        return extra

    def shutdown(self) -> None:
        if self.engine_host is not None:
            self.engine_host.stop()
