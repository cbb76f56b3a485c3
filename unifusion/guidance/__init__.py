"""Conditional generation and guidance: class labels steer any model through any sampler.

* `transforms`: classifier-free guidance (Ho & Salimans 2022) with an optional guidance interval (Kynkäänniemi
  et al. 2024) and classifier guidance (Dhariwal & Nichol 2021), each a transform that returns a VE-coordinate
  denoiser `D(x, sigma, class_labels=y)`, so samplers never know about guidance.
* `noise_classifier`: the noise-conditional classifier behind classifier guidance, its loss, its training task
  (`unifusion train` with `task: classifier`) and `load_classifier`.
* `options`: what `unifusion sample --class ... --guidance ...` and `unifusion distill --guidance` do with their
  flags (labels, the guided denoiser, one-line errors).

docs/guidance.md has the formulas in both coordinates and the measured results.
"""
from .noise_classifier import (CLASSIFIER_LOSSES, ClassifierTask, NoiseClassifier, NoisyCrossEntropy,
                               build_classifier_run, load_classifier)
from .transforms import (ClassifierFree, ClassifierGuided, check_interval, check_labels, check_scale, classifier,
                         classifier_free, num_classes)

__all__ = ["classifier_free", "classifier", "ClassifierFree", "ClassifierGuided", "num_classes", "check_labels",
           "check_scale",
           "check_interval", "NoiseClassifier", "NoisyCrossEntropy", "CLASSIFIER_LOSSES", "ClassifierTask",
           "build_classifier_run", "load_classifier"]
