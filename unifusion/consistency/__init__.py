"""Consistency models (Song et al. 2023, "Consistency Models"; Song & Dhariwal 2023, "Improved Techniques for
Training Consistency Models"): 1-step and few-step generation from any diffusion model of either formulation.

* `model`:  the consistency function with the App. C boundary parametrization over any VE denoiser, the Karras
            discretization of the training levels, multistep sampling (Algorithm 1).
* `losses`: distances (L2, L1, pseudo-Huber), the EMA target, consistency distillation (Algorithm 2) and the
            improved consistency training recipe.
* `task`:   CD / CT as a task of `unifusion.train.fit`, distill configs, `load_consistency`.
* `cli`:    `unifusion distill`; `demo`: the rows of `unifusion demo`.
"""
from .losses import (DISTANCES, cd_loss, ct_loss, ema_update, get_distance, ict_num_scales, l1, l2,
                     lognormal_index_probs, pseudo_huber, teacher_step)
from .model import ConsistencyFunction, consistency_scalings, consistency_sigmas, karras_sigmas, sample_consistency
from .task import ConsistencyTask, distill_config, distill_from_config, load_consistency

__all__ = [
    "ConsistencyFunction", "consistency_scalings", "karras_sigmas", "consistency_sigmas", "sample_consistency",
    "l2", "l1", "pseudo_huber", "DISTANCES", "get_distance", "ema_update", "teacher_step", "cd_loss",
    "ict_num_scales", "lognormal_index_probs", "ct_loss",
    "ConsistencyTask", "distill_config", "distill_from_config", "load_consistency",
]
