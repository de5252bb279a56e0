"""The training worker: one Ray actor per training device, hosting the megatron roles it was given (actor, reference,
critic) and, in colocated placement, a rollout engine: the hybrid engine, whose KV cache the rollout frees while
training (over HTTP, as with SGLang) and which takes the new weights in place after each update. Weight sync is one
object (rlpost.resharding.sync.WeightSync) the worker builds once and calls after each update.
"""

from __future__ import annotations

from pathlib import Path

from rlpost.batch import Batch
from rlpost.config import run_dir
from rlpost.config.derived import policy_loss_settings, value_loss_settings
from rlpost.config.schema import RLConfig
from rlpost.dtypes import torch_dtype
from rlpost.workers.base import Worker
from rlpost.workers.roles import CriticRole, PolicyRole


class TrainWorker(Worker):
    def __init__(self, rank: int, world: int, per_node: int, cfg: RLConfig, model_dirs: dict[str, str],
                 total_steps: int, roles: list[str]):
        super().__init__(rank, world, per_node, str(run_dir(cfg)))
        self.cfg, self.model_dirs, self.total_steps, self.roles = cfg, model_dirs, total_steps, set(roles)
        self.actor = self.ref = self.critic = self.engine_host = self.weight_sync = None

    def setup(self) -> dict:
        from rlpost.megatron.parallel import ranks, setup_model_parallel
        from rlpost.resharding.plan import make_plan

        cfg = self.cfg
        setup_model_parallel(cfg.actor.tp, cfg.actor.pp, cfg.trainer.seed)
        temperature = cfg.rollout.sampling.temperature or 1.0
        self.actor = PolicyRole(cfg.actor, self.model_dirs["actor"], total_steps=self.total_steps,
                                temperature=temperature, loss=policy_loss_settings(cfg))
        if "ref" in self.roles:
            self.ref = PolicyRole(cfg.actor, self.model_dirs["actor"], total_steps=self.total_steps,
                                  temperature=temperature)
        if "critic" in self.roles:
            self.critic = CriticRole(cfg.critic, self.model_dirs["critic"], total_steps=self.total_steps,
                                     loss=value_loss_settings(cfg))
        self._ranks = ranks()
        self.plan = make_plan(cfg.actor.tp, cfg.actor.pp, self._ranks["dp"], cfg.rollout.infer_tp)
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

        if self.plan.inference_position(self.rank)[1] == 0:
            self.engine_host = EngineHost(self.model_dirs["actor"], self.cfg.rollout, context_length,
                                          self.cfg.trainer.seed + self.rank)
            return self.engine_host.url
        return None

    def connect_rollout(self, server_urls: list[str] | None) -> None:
        """Builds the weight sync (collective: every rank calls it): into this worker's engine (colocated), or to
        the split servers (server_urls)."""
        import ray
        import torch

        from rlpost.protocol.weight_group import backend_for
        from rlpost.resharding.sync import WeightSync

        stage, rollout = self.actor.stage, self.cfg.rollout
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.weight_sync = WeightSync(
            self.plan, self.rank, dims=stage.dims, spec=stage.spec, dtype=torch_dtype(self.cfg.actor.dtype),
            bucket_bytes=rollout.update_weights_bucket_mb << 20,
            engine=self.engine_host.engine if self.engine_host is not None else None, server_urls=server_urls,
            address=ray.util.get_node_ip_address(), backend=backend_for(rollout.engine, device))

    def sync_weights(self, version: str) -> int:
        """Every rank must call it; returns the tensors this rank delivered."""
        return self.weight_sync.push(self.actor.named_parameters(), version)

    # ---- checkpoints --------------------------------------------------------------------------------------------

    def save(self, directory: str, extra: dict) -> None:
        """Distributed checkpoints of the trained roles, and the actor as an HF directory (`actor_hf`: what
        `rlpost eval` and inference servers load)."""
        from rlpost.megatron.dist_checkpoint import export_hf, save_checkpoint

        save_checkpoint(self.actor.stage, self.actor.optimizer, self.actor.scheduler, Path(directory) / "actor", extra)
        export_hf(self.actor.stage, Path(directory) / "actor_hf", self.model_dirs["actor"])
        if self.critic is not None:
            save_checkpoint(self.critic.stage, self.critic.optimizer, self.critic.scheduler,
                            Path(directory) / "critic", extra)

    def load(self, directory: str) -> dict:
        from rlpost.megatron.dist_checkpoint import load_checkpoint

        extra = load_checkpoint(self.actor.stage, self.actor.optimizer, self.actor.scheduler, Path(directory) / "actor")
        if self.critic is not None:
            load_checkpoint(self.critic.stage, self.critic.optimizer, self.critic.scheduler, Path(directory) / "critic")
        return extra

    def shutdown(self) -> None:
        """The weight sync first: its group's other end (split servers) is still up, shut down after this."""
        try:
            if self.weight_sync is not None:
                self.weight_sync.close()
        finally:
            if self.engine_host is not None:
                self.engine_host.stop()
