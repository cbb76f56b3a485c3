"""Sample-quality metrics, each reported next to its noise floor. Three modules, one concern each:

* `distances`: sliced Wasserstein-2, MMD, Frechet distance between sample or feature sets; `vector_report`;
* `floors`: the value each metric takes for a perfect model (`vector_floor`, `fd_floor`, `class_count_weights`);
* `digits`: the shipped digits classifier and the digits metrics and report (`digits_fd`, `confident_fraction`,
  `nearest_neighbour_ratio`, `copy_fraction`, `digits_report`, `digits_class_report`).

Every public name is importable from `unifusion.metrics` itself. The functions run on the calling thread
settings: the kernels are small (cdist of a few thousand rows, eigh of 64 x 64), so on a loaded machine
`torch.set_num_threads(1)` in the caller (the CLI's `--threads`) is usually fastest.
"""
from .digits import (CLASSIFIER_PATH, FD_COUNT, IID_FLOOR_REPEATS, MEMORIZATION_THRESHOLD, DigitsClassifier,
                     confident_fraction, copy_fraction, digits_class_report, digits_fd, digits_report,
                     nearest_neighbour_ratio)
from .distances import (MMD_KERNELS, frechet_distance, frechet_distance_from_stats, gaussian_stats, median_bandwidth,
                        mmd, sliced_wasserstein, vector_report)
from .floors import FLOOR_FIT_COUNTS, class_count_weights, fd_floor, vector_floor

__all__ = [
    "sliced_wasserstein", "mmd", "median_bandwidth", "MMD_KERNELS", "frechet_distance", "frechet_distance_from_stats",
    "gaussian_stats", "vector_report",
    "vector_floor", "fd_floor", "class_count_weights", "FLOOR_FIT_COUNTS",
    "DigitsClassifier", "CLASSIFIER_PATH", "FD_COUNT", "MEMORIZATION_THRESHOLD", "IID_FLOOR_REPEATS", "digits_fd",
    "confident_fraction", "nearest_neighbour_ratio", "copy_fraction", "digits_report", "digits_class_report",
]
