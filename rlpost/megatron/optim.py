"""megatron DDP + (distributed) optimizer + LR scheduler for one trained role (actor or critic)."""

from __future__ import annotations

from rlpost.config.schema import OptimConfig
from rlpost.dtypes import torch_dtype
from rlpost.megatron.model import StageModel


def wrap_ddp(stage: StageModel, use_distributed_optimizer: bool = True):
    """megatron's optimizer needs DDP-wrapped chunks even at DP=1; gradient buffers live in the wrapper."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=use_distributed_optimizer, overlap_grad_reduce=False,
    )
    stage.module = DistributedDataParallel(stage.module.config, ddp_config, stage.module)
    return stage.module


def build_optimizer(ddp_module, optim: OptimConfig, total_steps: int, dtype: str = "float32",
                    use_distributed_optimizer: bool = True):
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    config = OptimizerConfig(
        optimizer="adam", lr=optim.lr, min_lr=optim.lr * optim.min_lr_ratio, weight_decay=optim.weight_decay,
        adam_beta1=optim.betas[0], adam_beta2=optim.betas[1], adam_eps=optim.eps, clip_grad=optim.clip_grad,
        bf16=dtype == "bfloat16", fp16=dtype == "float16", params_dtype=torch_dtype(dtype),
        use_distributed_optimizer=use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(config, [ddp_module])
    steps = optim.lr_warmup_steps or int(optim.lr_warmup_steps_ratio * total_steps)  # verl's rule: steps win
    warmup = min(steps, max(total_steps - 1, 0))
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if warmup else optim.lr, max_lr=optim.lr, min_lr=optim.lr * optim.min_lr_ratio,
        lr_warmup_steps=warmup, lr_decay_steps=max(total_steps, warmup + 1), lr_decay_style=optim.lr_schedule,
        start_wd=optim.weight_decay, end_wd=optim.weight_decay, wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant",
    )
    model_config = ddp_module.config
    model_config.no_sync_func = ddp_module.no_sync
    model_config.finalize_model_grads_func = finalize_model_grads
    model_config.grad_scale_func = optimizer.scale_loss
    return optimizer, scheduler
