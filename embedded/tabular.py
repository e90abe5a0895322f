"""The accuracy study's small tasks, with data that ships with scikit-learn (no downloads).

- `diabetes`: regression, 442 rows, features and target standardized on the training split;
  a 2-hidden-layer tanh MLP of 128 units (the paper's UCI Concrete/Energy architecture).
- `digits`: 8×8 digit classification, 1,797 rows (the MNIST stand-in); an MLP of 256 units with GELU,
  the smooth stand-in for the paper's ReLU (the PBRF's optimizer stalls at ReLU's kinks).

Models are trained in float64, full batch, with L-BFGS on mean loss + (weight_decay/2)‖θ‖² until
every gradient entry is below `grad_tol` (influence functions assume a converged optimum), and cached
under `<output_dir>/models/tabular/` by a fingerprint of data, architecture and training settings.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from influence import ClassificationTask, InfluenceError, RegressionTask, find_tracked_layers
from influence.storage import CorruptFileError, load_tensors, save_tensors

from .fingerprint import fingerprint

log = logging.getLogger(__name__)

#: defaults per task: the paper's architectures (App. C); weight decay small enough not to dominate the loss
TASKS = {
    "diabetes": {
        "kind": "regression",
        "hidden": [128, 128],
        "activation": "tanh",
        "weight_decay": 1e-2,
        "grad_tol": 1e-5,
    },
    # the paper's MNIST MLP is ReLU; GELU is its smooth stand-in: ReLU's kinks make the PBRF objective
    # non-smooth, and its optimizer then stalls (L-BFGS: gradient 0.07 × its start after 2,000 evaluations)
    "digits": {"kind": "classification", "hidden": [256], "activation": "gelu", "weight_decay": 1e-3, "grad_tol": 1e-5},
}
LAYER_PATTERN = r"^layers\.\d+$"  # every affine layer of the MLP is tracked


class MLP(nn.Module):
    """Affine layers `layers.0 … layers.k` with an activation between them."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, activation: str):
        super().__init__()
        acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
        if activation not in acts:
            raise InfluenceError(f"unknown activation {activation!r}: use one of {sorted(acts)}")
        dims = [in_dim, *hidden, out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = acts[activation]()

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


@dataclass
class TabularProblem:
    name: str
    task: object  # RegressionTask or ClassificationTask (f = loss on the query rows)
    model: MLP  # float64, eval mode
    train: dict[str, torch.Tensor]  # {"x", "y"}
    test: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)

    @property
    def layers(self):
        return find_tracked_layers(self.model, patterns=[LAYER_PATTERN])


def load_arrays(name: str, test_fraction: float, seed: int):
    """Seeded train/test split; features standardized with training statistics (and the regression target)."""
    from sklearn.datasets import load_diabetes, load_digits
    from sklearn.model_selection import train_test_split

    if name not in TASKS:
        raise InfluenceError(f"unknown tabular task {name!r}: choose from {sorted(TASKS)}")
    if not 0.0 < test_fraction < 1.0:
        raise InfluenceError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    ds = load_diabetes() if name == "diabetes" else load_digits()
    x = torch.as_tensor(ds.data, dtype=torch.float64)
    y = torch.as_tensor(ds.target)
    classification = TASKS[name]["kind"] == "classification"
    idx = torch.arange(len(x)).numpy()
    tr, te = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=y.numpy() if classification else None
    )
    tr, te = torch.as_tensor(sorted(tr)), torch.as_tensor(sorted(te))
    mu, sd = x[tr].mean(0), x[tr].std(0)
    sd[sd < 1e-8] = 1.0  # constant pixels of the digit images
    x = (x - mu) / sd
    if classification:
        y = y.long()
    else:
        y = y.double()
        y = ((y - y[tr].mean()) / y[tr].std()).unsqueeze(1)
    return {"x": x[tr], "y": y[tr]}, {"x": x[te], "y": y[te]}


def _train(model: MLP, task, data: dict, weight_decay: float, max_iter: int, grad_tol: float) -> dict:
    """Full-batch L-BFGS on mean loss + (wd/2)‖θ‖², until every gradient entry is below `grad_tol`."""
    params = list(model.parameters())
    n = data["x"].shape[0]
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        history_size=50,
        tolerance_grad=grad_tol,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def objective():
        opt.zero_grad()
        loss = task.loss(model(data["x"]), data) / n + 0.5 * weight_decay * sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    t0 = time.perf_counter()
    model.train()
    opt.step(objective)
    model.eval()
    final = float(objective().detach())
    grad_max = float(max(p.grad.abs().max() for p in params))  # L-BFGS's own criterion: the largest entry
    state = opt.state[opt._params[0]]
    if grad_max > grad_tol:
        raise InfluenceError(
            f"training did not converge (largest gradient entry {grad_max:.3g} > {grad_tol:g} after "
            f"{state['n_iter']} L-BFGS iterations): raise max_iter or grad_tol"
        )
    return {
        "objective": final,
        "grad_max": grad_max,
        "iterations": int(state["n_iter"]),
        "seconds": time.perf_counter() - t0,
    }


def _metrics(problem_kind: str, model: MLP, task, data: dict) -> dict:
    with torch.no_grad():
        out = model(data["x"])
        loss = float(task.loss(out, data)) / data["x"].shape[0]
        if problem_kind == "classification":
            return {"loss": loss, "accuracy": float((out.argmax(-1) == data["y"]).double().mean())}
        return {
            "loss": loss,
            "r2": float(1 - ((out - data["y"]) ** 2).sum() / ((data["y"] - data["y"].mean()) ** 2).sum()),
        }


def _cached_model(path: Path, model) -> dict | None:
    """Load the model saved at `path` into `model` and return its training stats; None (retrain) if it is corrupt."""
    try:
        tensors, meta = load_tensors(path, require_checksum=True, fix="the model is retrained")
    except CorruptFileError as e:
        log.warning("%s", e)
        return None
    model.load_state_dict(tensors)
    log.info("reusing tabular model %s", path)
    return json.loads(meta["training"])


def build_tabular(
    name: str,
    output_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    hidden: list[int] | None = None,
    activation: str | None = None,
    weight_decay: float | None = None,
    max_iter: int = 5000,
    grad_tol: float | None = None,
) -> TabularProblem:
    """Data, task and trained float64 model for `name` (reused from the cache when its fingerprint matches)."""
    spec = dict(TASKS.get(name) or {})
    if not spec:
        raise InfluenceError(f"unknown tabular task {name!r}: choose from {sorted(TASKS)}")
    spec.update(
        {
            k: v
            for k, v in {
                "hidden": hidden,
                "activation": activation,
                "weight_decay": weight_decay,
                "grad_tol": grad_tol,
            }.items()
            if v is not None
        }
    )
    grad_tol = float(spec["grad_tol"])
    hidden = [int(h) for h in spec["hidden"]]
    train, test = load_arrays(name, test_fraction, seed)
    classification = spec["kind"] == "classification"
    task = ClassificationTask() if classification else RegressionTask()
    out_dim = int(train["y"].max()) + 1 if classification else 1
    settings = {
        "name": name,
        "hidden": hidden,
        "activation": spec["activation"],
        "weight_decay": float(spec["weight_decay"]),
        "seed": seed,
        "test_fraction": test_fraction,
        "max_iter": max_iter,
        "grad_tol": grad_tol,
        "n_train": int(train["x"].shape[0]),
        "format": 1,
    }
    key = fingerprint(settings)
    torch.manual_seed(seed)
    model = MLP(train["x"].shape[1], hidden, out_dim, spec["activation"]).double()
    path = Path(output_dir) / "models" / "tabular" / f"{name}-{key}.safetensors" if output_dir is not None else None
    stats = _cached_model(path, model) if path is not None and path.exists() else None
    if stats is None:
        stats = _train(model, task, train, float(spec["weight_decay"]), max_iter, grad_tol)
        log.info(
            "trained %s MLP %s in %.1fs (%d iterations, largest gradient entry %.2g)",
            name,
            hidden,
            stats["seconds"],
            stats["iterations"],
            stats["grad_max"],
        )
        if path is not None:
            save_tensors(path, model.state_dict(), {"training": json.dumps(stats), "settings": json.dumps(settings)})
    model.eval()
    info = {
        **settings,
        "training": stats,
        "train_metrics": _metrics(spec["kind"], model, task, train),
        "test_metrics": _metrics(spec["kind"], model, task, test),
        "fingerprint": key,
    }
    return TabularProblem(name=name, task=task, model=model, train=train, test=test, info=info)
