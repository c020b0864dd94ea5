"""The site side of the FedAvg sample: local training of a linear regression model.

Each site owns a small synthetic data set, generated deterministically from the site's name (so a
site sees the same data in every run and on every machine), drawn from one linear model shared
by every site plus a little noise. The model is ``y = w[0]*x[0] + ... + w[d-1]*x[d-1] + w[d]``:
a list of ``d + 1`` floats whose last entry is the bias.

Plain Python and the standard library only.
"""

from __future__ import annotations

import math
import random
import zlib
from typing import List, Sequence, Tuple

from flrunner import FLComponent, ReturnCode, Shareable, make_reply

#: Header of a failure reply that says what went wrong (as flrunner's own failure replies).
REASON_HEADER = "reason"

Dataset = List[Tuple[List[float], float]]


def site_seed(site_name: str, seed: int = 0) -> int:
    """A seed that depends only on the site's name and ``seed``.

    ``zlib.crc32`` is stable across processes and Python versions; ``hash()`` is not (string
    hashing is randomised per process).
    """
    return zlib.crc32(f"{seed}:{site_name}".encode())


def make_site_data(site_name: str, true_weights: Sequence[float], min_samples: int = 60, max_samples: int = 140,
                   noise: float = 0.02, feature_shift: float = 0.5, seed: int = 0) -> Dataset:
    """The synthetic data set of one site: ``[(features, target), ...]``.

    Every site draws features from a uniform distribution on ``[-1, 1]`` shifted by a
    per-site offset of at most ``feature_shift`` (so the sites' data differ, as real sites'
    data do), and targets from the shared ``true_weights`` plus Gaussian noise of standard
    deviation ``noise``. The number of samples differs per site as well.
    """
    rng = random.Random(site_seed(site_name, seed))
    num_features = len(true_weights) - 1
    count = rng.randint(min_samples, max_samples)
    shift = [rng.uniform(-feature_shift, feature_shift) for _ in range(num_features)]
    data: Dataset = []
    for _ in range(count):
        x = [rng.uniform(-1.0, 1.0) + s for s in shift]
        data.append((x, predict(true_weights, x) + rng.gauss(0.0, noise)))
    return data


def predict(weights: Sequence[float], x: Sequence[float]) -> float:
    """``w . x + bias`` (the bias is the last weight)."""
    return math.fsum(w * xi for w, xi in zip(weights, x)) + weights[-1]


def mse(weights: Sequence[float], data: Dataset) -> float:
    """Mean squared error of ``weights`` on ``data``."""
    return math.fsum((predict(weights, x) - y) ** 2 for x, y in data) / len(data)


def gradient_step(weights: Sequence[float], data: Dataset, lr: float) -> List[float]:
    """One full-batch gradient-descent step on the mean squared error."""
    grad = [0.0] * len(weights)
    for x, y in data:
        err = predict(weights, x) - y
        for j, xj in enumerate(x):
            grad[j] += err * xj
        grad[-1] += err
    scale = 2.0 / len(data)
    return [w - lr * scale * g for w, g in zip(weights, grad)]


class LinearTrainer(FLComponent):
    """Executor for the ``train`` task: a few epochs of gradient descent on the site's data.

    The request carries ``weights`` (the global model) and ``round``. The reply carries the new
    ``weights``, ``num_samples`` (the weight of this site in the average) and ``loss`` (the mean
    squared error of the new weights on the local data), plus ``loss_before`` (that of the
    global model it received).

    Args:
        true_weights: the model every site's data is drawn from (the answer FedAvg should find).
        epochs: gradient-descent steps per round.
        lr: learning rate.
        noise: standard deviation of the noise added to the targets.
        min_samples, max_samples: range of a site's number of samples.
        seed: mixed with the site name to seed the data (same seed, same data).
        delay: seconds to wait before training (to make rounds slow in tests); an abort ends it.
    """

    def __init__(self, true_weights: Sequence[float], epochs: int = 10, lr: float = 0.2, noise: float = 0.02,
                 min_samples: int = 60, max_samples: int = 140, seed: int = 0, delay: float = 0.0) -> None:
        super().__init__()
        if len(true_weights) < 2:
            raise ValueError(f"true_weights needs at least one feature weight and a bias, got {list(true_weights)}")
        self.true_weights = [float(w) for w in true_weights]
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.noise = float(noise)
        self.min_samples = int(min_samples)
        self.max_samples = int(max_samples)
        self.seed = int(seed)
        self.delay = float(delay)
        self._data: dict[str, Dataset] = {}

    def data_for(self, site_name: str) -> Dataset:
        """This site's data set (generated once)."""
        if site_name not in self._data:
            self._data[site_name] = make_site_data(site_name, self.true_weights, self.min_samples, self.max_samples,
                                                   self.noise, seed=self.seed)
        return self._data[site_name]

    def execute(self, task_name: str, shareable: Shareable, fl_ctx, abort_signal) -> Shareable:
        if task_name != "train":
            return make_reply(ReturnCode.TASK_UNKNOWN, {REASON_HEADER: f"LinearTrainer cannot do task '{task_name}'"})
        weights = shareable.get("weights")
        if (not isinstance(weights, list) or len(weights) != len(self.true_weights)
                or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights)):
            return make_reply(ReturnCode.BAD_TASK_DATA,
                              {REASON_HEADER: f"'weights' must be a list of {len(self.true_weights)} finite numbers"})
        if self.delay > 0 and abort_signal.wait(self.delay):
            return make_reply(ReturnCode.TASK_ABORTED, {REASON_HEADER: "aborted"})
        data = self.data_for(fl_ctx.get_identity_name())
        new = [float(w) for w in weights]
        loss_before = mse(new, data)
        for _ in range(self.epochs):
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED, {REASON_HEADER: "aborted"})
            new = gradient_step(new, data, self.lr)
        self.log_info(fl_ctx, f"round {shareable.get('round')}: loss {loss_before:.6f} -> {mse(new, data):.6f} "
                              f"on {len(data)} samples")
        return Shareable({"weights": new, "num_samples": len(data), "loss": mse(new, data),
                          "loss_before": loss_before, "round": shareable.get("round")})
