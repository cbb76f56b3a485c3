"""Noise-conditional classifiers for classifier guidance (Dhariwal & Nichol 2021, Sec. 4): `log p(y | x_t, t)`
learned on noisy inputs of any process, trained by `unifusion train` with `task: classifier`.

This module owns
* `NoiseClassifier`: a network that sees exactly what the diffusion model's network would see at that noise level
  (`parametrization.Denoiser.raw`: `x_t = alpha x~` and the process time for VP / VE processes, EDM's
  `c_in x~` and `c_noise` for `model.target: edm`), presented in VE coordinates as `C(x~, sigma~) -> logits [B, K]`
  (what `guidance.classifier` differentiates);
* `NoisyCrossEntropy`: its loss, the cross-entropy of the label given `x_t = alpha x0 + sigma eps` with `t` drawn
  by one of `losses.NOISE_SAMPLERS` (`CLASSIFIER_LOSSES`, the `loss:` section of a classifier config);
* `ClassifierTask` / `build_classifier_run(cfg)`: the task `unifusion.train.fit` trains;
* `load_classifier(path)`: the trained classifier of a checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import LOSS_FAMILIES, NOISE_SAMPLERS
from ..parametrization import Denoiser, _per_example
from ..utils import check_choice, coef, randn_like

__all__ = ["NoiseClassifier", "NoisyCrossEntropy", "CLASSIFIER_LOSSES", "ClassifierTask", "build_classifier_run",
           "load_classifier", "MODULE"]

MODULE = "classifier"   # the trainable module's name in checkpoints (not "net": `load_model` must not take it)


class NoiseClassifier(nn.Module):
    """`C(x~, sigma~) -> logits [B, K]` of a network trained on noisy data.

    Args:
        body:        a `Denoiser` used only for its input side: `body.raw(x_t, t)` calls the network at the
                     process's own `(x_t, t)` with the run's noise conditioning (its `target` matters only as
                     "edm" vs the rest: EDM's input scaling or the process's `x_t`).
        num_classes: K, the number of logits.
    """

    def __init__(self, body: Denoiser, num_classes: int):
        super().__init__()
        self.body, self.num_classes, self.process = body, int(num_classes), body.process

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = _per_example(sigma, x)
        if self.body.target == "edm":
            return self.body.raw(x, s)
        t = self.process._t_from_sigma_ve(s)
        return self.body.raw(coef(torch.exp(self.process._log_alpha(t)), x) * x, t)

    def logits_at(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Logits at the process's own `(x_t, t)` (for `target: edm`, `t` is sigma and `x_t = x0 + sigma eps`)."""
        return self.body.raw(x_t, t)


class NoisyCrossEntropy:
    """`loss(classifier, x0, labels, generator) -> [B]`: `CE(C(x_t, t), y)`, `t ~ noise`, `eps ~ N(0, I)`,
    `x_t = alpha(t) x0 + sigma(t) eps` (Dhariwal & Nichol 2021, Sec. 4: the classifier sees the diffusion
    model's noisy inputs)."""

    def __init__(self, noise):
        self.noise = noise

    def __call__(self, clf: NoiseClassifier, x0: torch.Tensor, labels: torch.Tensor, generator=None) -> torch.Tensor:
        edm = clf.body.target == "edm"
        t = self.noise(x0.shape[0], None if edm else clf.process, generator, x0.device)
        eps = randn_like(x0, generator)
        x_t = x0 + coef(t, x0) * eps if edm else clf.process.marginal_sample(x0, t, eps)
        return F.cross_entropy(clf.logits_at(x_t, t).float(), labels, reduction="none")

    def __repr__(self):
        return f"NoisyCrossEntropy(noise={self.noise!r})"


def cross_entropy(process=None, noise: str = "lognormal", **noise_kwargs) -> NoisyCrossEntropy:
    """The classifier loss with noise levels from `losses.NOISE_SAMPLERS[noise](**noise_kwargs)` (default EDM's
    log-normal sigma; e.g. `p_mean`, `p_std`)."""
    check_choice(noise, "loss.noise", NOISE_SAMPLERS)
    return NoisyCrossEntropy(NOISE_SAMPLERS[noise](**noise_kwargs))


CLASSIFIER_LOSSES = {"cross_entropy": cross_entropy}
LOSS_FAMILIES["classifier"] = CLASSIFIER_LOSSES        # the `loss:` names of a config with `task: classifier`


class ClassifierTask:
    """The `fit` task of a noise-conditional classifier: one trainable module, the noisy cross-entropy."""

    def __init__(self, clf: NoiseClassifier, loss_fn):
        self.classifier, self.loss_fn = clf, loss_fn
        self.modules = {MODULE: clf.body.net}

    def loss(self, batch, generator):
        x, labels = batch
        return self.loss_fn(self.classifier, x, labels, generator)

    def to(self, device):
        self.classifier.to(device)
        return self


def _classes(cfg: dict, labels: torch.Tensor | None) -> int:
    """K from `net.out_dim`, checked against the data's labels."""
    k = cfg["net"].get("out_dim")
    if labels is None:
        raise ValueError(f"task 'classifier' needs a labelled data set; {cfg['data']['name']!r} has no labels")
    if not isinstance(k, int) or isinstance(k, bool) or k <= int(labels.max()):
        raise ValueError(f"task 'classifier' needs net.out_dim = the number of classes (> {int(labels.max())}, "
                         f"the largest label), got {k!r}")
    return k


def build_classifier_run(cfg: dict):
    """`(task, data, labels)` of a checked config with `task: classifier`: the data set's labels are the targets,
    the `process` / `model` sections say what the network sees, `net.out_dim` is the number of classes and the
    `loss` section names a `CLASSIFIER_LOSSES` entry."""
    from ..data import get_dataset
    from ..train.config import check_config
    from ..train.task import _build, _section, build_denoiser, data_source

    check_config(cfg)
    name, kwargs = data_source(cfg)
    data, labels = get_dataset(name, **kwargs)
    k = _classes(cfg, labels)
    torch.manual_seed(cfg["seed"])
    clf = NoiseClassifier(build_denoiser(cfg, data.shape[1:]), k)
    lname, lkw = _section(cfg, "loss", "name")
    check_choice(lname, "loss.name of a classifier", CLASSIFIER_LOSSES)
    loss = _build("loss", CLASSIFIER_LOSSES[lname], **lkw)
    return ClassifierTask(clf, loss), data.float(), labels


def load_classifier(path, ema: bool = True, device="cpu") -> NoiseClassifier:
    """The trained `NoiseClassifier` of a `task: classifier` checkpoint (file or run folder), in eval mode without
    gradients on its weights (gradients in `x` still flow). `ema`: the first EMA decay's weights (True) or the raw
    ones. Another kind of checkpoint raises `ValueError`."""
    from ..train import CHECKPOINT_NAME, CheckpointError, read_checkpoint
    from ..train.config import DEFAULTS, merge
    from ..train.task import build_denoiser

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    tensors, info = read_checkpoint(path)
    if info.get("modules") != [MODULE] or "data_shape" not in info:
        raise CheckpointError(f"{path} is not a classifier checkpoint (train one with a config with task: classifier)")
    cfg = merge(DEFAULTS, info["config"])
    prefix = ("ema0." if ema and info.get("ema_decays") else "model.") + MODULE + "."
    try:
        clf = NoiseClassifier(build_denoiser(cfg, info["data_shape"]), cfg["net"]["out_dim"])
        clf.body.net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except (RuntimeError, TypeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not match its config: {str(e).splitlines()[0]}") from None
    clf.config, clf.checkpoint_step = cfg, int(info["step"])
    return clf.to(device).eval().requires_grad_(False)
