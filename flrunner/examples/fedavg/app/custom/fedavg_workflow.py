"""The server side of the FedAvg sample: federated averaging of a linear regression model.

`FedAvg` is a workflow (NVIDIA FLARE's `Controller` shape). Each round it sends the task
``train`` with the current global model to every site of the job, averages the weights the
sites send back, weighted by each site's sample count, and keeps the result in `ModelState`, a
component whose state the engine snapshots every round. Because the round counter is part of
that state, a job restarted from its snapshot resumes with the first unfinished round and ends
with the same model as an uninterrupted run (the sites' training is deterministic too).

Plain Python and the standard library only.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from flrunner import Controller, FLComponent, ReturnCode, Shareable

#: Header of a failure reply that says what went wrong (as flrunner's own failure replies).
REASON_HEADER = "reason"


class FedAvgError(RuntimeError):
    """The workflow cannot go on (too few sites answered, no model to start from)."""


def weighted_average(contributions: Sequence[Tuple[Sequence[float], float]]) -> List[float]:
    """The average of weight vectors, each counted ``count`` times: ``sum(n_i * w_i) / sum(n_i)``.

    Sums are taken with `math.fsum` (correctly rounded), so the result does not depend on the
    order of ``contributions``: the same replies give the same bits, whatever order they came in.

    Args:
        contributions: ``(weights, count)`` pairs; all weight vectors have the same length and
            every count is positive.

    Raises:
        ValueError: no contributions, vectors of different lengths, or a count that is not positive.
    """
    if not contributions:
        raise ValueError("nothing to average")
    size = len(contributions[0][0])
    for weights, count in contributions:
        if len(weights) != size:
            raise ValueError(f"weight vectors differ in length ({len(weights)} != {size})")
        if not count > 0:
            raise ValueError(f"counts must be positive, got {count!r}")
    total = math.fsum(count for _, count in contributions)
    return [math.fsum(weights[j] * count for weights, count in contributions) / total for j in range(size)]


class ModelState(FLComponent):
    """The global model and how far training got; persisted by the engine, restorable.

    Attributes:
        round: the number of rounds completed (0 before the first).
        weights: the global model after ``round`` rounds (None until the workflow sets the
            initial model).
        history: one entry per completed round: ``{"round", "loss", "sites", "num_samples"}``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.round = 0
        self.weights: Optional[List[float]] = None
        self.history: List[Dict[str, Any]] = []

    def get_persist_state(self, fl_ctx) -> dict:
        return {"round": self.round, "weights": self.weights, "history": self.history}

    def restore(self, state: dict, fl_ctx) -> None:
        self.round = int(state["round"])
        self.weights = None if state["weights"] is None else [float(w) for w in state["weights"]]
        self.history = [dict(h) for h in state.get("history", [])]


def _usable(reply: Shareable, size: int) -> Tuple[Optional[Tuple[List[float], int, float]], str]:
    """``((weights, num_samples, loss), "")`` from a good reply, else ``(None, why it is not)``."""
    rc = reply.get_return_code()
    if rc != ReturnCode.OK:
        reason = reply.get_header(REASON_HEADER)
        return None, f"{rc}" + (f" ({reason})" if reason else "")
    weights, count, loss = reply.get("weights"), reply.get("num_samples"), reply.get("loss")
    if (not isinstance(weights, list) or len(weights) != size
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights)):
        return None, f"'weights' is not a list of {size} finite numbers"
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        return None, f"'num_samples' is not a positive integer: {count!r}"
    if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
        return None, f"'loss' is not a finite number: {loss!r}"
    return ([float(w) for w in weights], count, float(loss)), ""


class FedAvg(Controller):
    """Federated averaging over every site of the job.

    Args:
        num_rounds: rounds to train.
        min_clients: fewest good replies a round needs; with fewer the job fails (an execution
            exception naming each site and why its reply was not used).
        train_timeout: seconds each round waits for the sites' replies.
        initial_weights: the model of round 1 (unless a restored `ModelState` has one).
        model_state_id: the id of the `ModelState` component.
        task_name: the task sent to the sites.
        final_model_file: written to the job's run dir when the last round is done.
        secure: send the model to the sites and back end to end encrypted (``secure=True`` aux:
            the parent routes what it cannot read; needs sites started with their kits).
    """

    def __init__(self, num_rounds: int = 10, min_clients: int = 2, train_timeout: float = 30.0,
                 initial_weights: Sequence[float] = (0.0, 0.0, 0.0, 0.0), model_state_id: str = "model_state",
                 task_name: str = "train", final_model_file: str = "final_model.json", secure: bool = False) -> None:
        super().__init__()
        if int(num_rounds) < 1:
            raise ValueError(f"num_rounds must be at least 1, got {num_rounds!r}")
        if int(min_clients) < 1:
            raise ValueError(f"min_clients must be at least 1, got {min_clients!r}")
        self.num_rounds = int(num_rounds)
        self.min_clients = int(min_clients)
        self.train_timeout = float(train_timeout)
        self.initial_weights = [float(w) for w in initial_weights]
        self.model_state_id = model_state_id
        self.task_name = task_name
        self.final_model_file = final_model_file
        self.secure = bool(secure)
        self.state: Optional[ModelState] = None

    def start_controller(self, fl_ctx) -> None:
        state = fl_ctx.get_engine().get_component(self.model_state_id)
        if not isinstance(state, ModelState):
            raise FedAvgError(f"component '{self.model_state_id}' must be a ModelState, got {type(state).__name__}")
        self.state = state

    def _model_state(self) -> ModelState:
        if self.state is None:
            raise FedAvgError("the workflow has not started (start_controller was not called)")
        return self.state

    def control_flow(self, abort_signal, fl_ctx) -> None:
        engine = fl_ctx.get_engine()
        state = self._model_state()
        if state.weights is None:
            state.weights = list(self.initial_weights)
        elif state.round:
            self.log_info(fl_ctx, f"resuming after round {state.round}/{self.num_rounds}")
        for k in range(state.round + 1, self.num_rounds + 1):
            if abort_signal.triggered:
                self.log_info(fl_ctx, f"aborted before round {k}/{self.num_rounds}")
                return
            outcome = self.run_round(k, state.weights, abort_signal, fl_ctx)
            if outcome is None:  # aborted while the sites trained: the round does not count
                self.log_info(fl_ctx, f"aborted during round {k}/{self.num_rounds}")
                return
            state.weights, entry = outcome
            state.round = k
            state.history.append(entry)
            # Durable first, then reported: once "round k" shows, a restart resumes after it.
            engine.persist_components(fl_ctx, completed=False)
            engine.set_run_progress({"message": f"round {k}/{self.num_rounds}: loss {entry['loss']:.6f}",
                                     "round": k, "num_rounds": self.num_rounds, "loss": entry["loss"],
                                     "sites": entry["sites"]})
            engine.update_job_run_status()
        self.write_final_model(fl_ctx)
        engine.persist_components(fl_ctx, completed=True)

    def run_round(self, k: int, weights: List[float], abort_signal, fl_ctx
                  ) -> Optional[Tuple[List[float], Dict[str, Any]]]:
        """Send ``train`` to every site and average the good replies.

        Returns:
            (the new global model, this round's history entry), or None if the job was aborted
            while the sites trained.

        Raises:
            FedAvgError: fewer than ``min_clients`` good replies.
        """
        engine = fl_ctx.get_engine()
        request = Shareable({"weights": list(weights), "round": k, "num_rounds": self.num_rounds})
        replies = engine.send_aux_request(None, self.task_name, request, self.train_timeout, fl_ctx, secure=self.secure)
        if abort_signal.triggered:
            return None
        good: Dict[str, Tuple[List[float], int, float]] = {}
        failed: Dict[str, str] = {}
        for site in sorted(replies):
            usable, why = _usable(replies[site], len(weights))
            if usable is None:
                failed[site] = why
                self.log_warning(fl_ctx, f"round {k}/{self.num_rounds}: ignoring the reply of {site}: {why}")
            else:
                good[site] = usable
        if len(good) < self.min_clients:
            if failed:
                detail = "; ".join(f"{site}: {why}" for site, why in failed.items())
            else:
                detail = "no site of the job answered" if not replies else f"the job has {len(replies)} site(s)"
            raise FedAvgError(f"round {k}/{self.num_rounds}: {len(good)} good repl{'y' if len(good) == 1 else 'ies'} "
                              f"from {len(replies)} site(s), min_clients is {self.min_clients} ({detail})")
        new_weights = weighted_average([(w, n) for w, n, _ in good.values()])
        loss = weighted_average([([loss], n) for _, n, loss in good.values()])[0]
        entry = {"round": k, "loss": loss, "sites": sorted(good), "failed": failed,
                 "num_samples": {site: n for site, (_, n, _) in good.items()}}
        self.log_info(fl_ctx, f"round {k}/{self.num_rounds}: loss {loss:.6f} from {sorted(good)}")
        return new_weights, entry

    def write_final_model(self, fl_ctx) -> str:
        """Write the model and its history to the job's run dir (atomically); returns the path."""
        engine = fl_ctx.get_engine()
        path = os.path.join(engine.get_workspace().get_run_dir(fl_ctx.get_job_id()), self.final_model_file)
        state = self._model_state()
        doc = {"weights": state.weights, "rounds": state.round, "num_rounds": self.num_rounds,
               "loss": state.history[-1]["loss"] if state.history else None, "history": state.history}
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
        self.log_info(fl_ctx, f"final model after {state.round} round(s) written to {path}: {state.weights}")
        return path
