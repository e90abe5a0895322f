"""The accuracy study's small tasks, with data that ships with scikit-learn (no downloads).

- `diabetes`: regression, 442 rows, features and target standardized on the training split;
  a 2-hidden-layer tanh MLP of 128 units (the paper's UCI Concrete/Energy architecture).
- `digits`: 8×8 digit classification, 1,797 rows (the MNIST stand-in); an MLP of 256 units with GELU,
  the smooth stand-in for the paper's ReLU (the PBRF's optimizer stalls at ReLU's kinks).

Models are trained in float64, full batch, with L-BFGS on mean loss + (weight_decay/2)‖θ‖² until
every gradient entry is below `grad_tol` (influence functions assume a converged optimum), and cached
under `<output_dir>/models/tabular/` by a fingerprint of data, architecture and training settings.

As a practitioner would: `weight_decay="auto"` chooses the weight decay on held-out loss before any influence is
computed (`select_weight_decay`: a seeded validation split of the *training* rows, one model per grid value, the
lowest validation loss wins; the test split takes no part), then trains on all training rows with it. A number
keeps that weight decay (the task defaults: digits' 1e-3 fits its training set almost exactly).

The linear datamodeling score's reference: `retrain_on_subsets` retrains the model from scratch on random subsets
of the training rows (same initialization, weight decay and optimizer) and measures f on the caller's query rows
(`analysis.lds` scores attributions against it).
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
from influence.storage import CorruptFileError, load_tensors, save_tensors, tensors_sha256

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
#: `weight_decay="auto"`'s candidates: 1e-5 … 1 in half-decades
WEIGHT_DECAY_GRID = tuple(float(f"{10 ** (k / 2):.3g}") for k in range(-10, 1))


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


def _train(
    model: MLP, task, data: dict, weight_decay: float, max_iter: int, grad_tol: float, require_converged: bool = True
) -> dict:
    """Full-batch L-BFGS on mean loss + (wd/2)‖θ‖², until every gradient entry is below `grad_tol`.

    Not converged within `max_iter` iterations: InfluenceError, or with `require_converged=False` the model as it
    stands and `converged: False` in the stats."""
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
    if grad_max > grad_tol and require_converged:
        raise InfluenceError(
            f"training did not converge (largest gradient entry {grad_max:.3g} > {grad_tol:g} after "
            f"{state['n_iter']} L-BFGS iterations): raise max_iter or grad_tol"
        )
    return {
        "objective": final,
        "grad_max": grad_max,
        "converged": grad_max <= grad_tol,
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
            "mse": float(((out - data["y"]) ** 2).mean()),
            "r2": float(1 - ((out - data["y"]) ** 2).sum() / ((data["y"] - data["y"].mean()) ** 2).sum()),
        }


def _task_for(kind: str):
    return ClassificationTask() if kind == "classification" else RegressionTask()


def _out_dim(kind: str, train: dict) -> int:
    return int(train["y"].max()) + 1 if kind == "classification" else 1


def _new_model(seed: int, in_dim: int, hidden: list[int], out_dim: int, activation: str) -> MLP:
    """The MLP's seeded initialization: one seed, one starting point (the final model, candidates and retrains)."""
    torch.manual_seed(seed)
    return MLP(in_dim, hidden, out_dim, activation).double()


def validation_split(kind: str, train: dict, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of the *training* rows into (fit rows, validation rows), stratified by class for classification.

    Only the training split is split: the test split never takes part in choosing a setting."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise InfluenceError(f"validation_fraction must lie in (0, 1), got {fraction}")
    idx = torch.arange(train["x"].shape[0]).numpy()
    strat = train["y"].numpy() if kind == "classification" else None
    fit, val = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
    return torch.as_tensor(sorted(fit)), torch.as_tensor(sorted(val))


def select_weight_decay(
    kind: str,
    train: dict,
    grid=WEIGHT_DECAY_GRID,
    *,
    hidden: list[int],
    activation: str,
    seed: int = 0,
    validation_fraction: float = 0.2,
    max_iter: int = 5000,
    grad_tol: float = 1e-5,
) -> dict:
    """The weight decay of `grid` with the lowest validation loss, the validation rows carved from `train` only.

    Each candidate is trained from the same seeded initialization as the final model, on the fit rows, with the
    final model's optimizer settings, and scored by its mean loss on the validation rows. A candidate that does not
    reach `grad_tol` within `max_iter` iterations is recorded (`converged` False, its loss where L-BFGS stopped) but
    not chosen: its loss is not that of its weight decay's optimum, and the final model must converge. Returns the
    grid, each candidate's validation loss and metrics, iterations and convergence, the chosen value and index,
    whether it lies on the grid's edge, the row counts and the seconds taken."""
    grid = [float(w) for w in grid]
    if not grid or any(not w >= 0 for w in grid):
        raise InfluenceError(f"weight_decay_grid must be non-empty and non-negative, got {grid}")
    t0 = time.perf_counter()
    task = _task_for(kind)
    fit_rows, val_rows = validation_split(kind, train, validation_fraction, seed)
    fit = {k: v[fit_rows] for k, v in train.items()}
    val = {k: v[val_rows] for k, v in train.items()}
    losses, metrics, converged, iterations = [], [], [], []
    for wd in grid:
        model = _new_model(seed, train["x"].shape[1], hidden, _out_dim(kind, train), activation)
        stats = _train(model, task, fit, wd, max_iter, grad_tol, require_converged=False)
        m = _metrics(kind, model, task, val)
        losses.append(m["loss"])
        metrics.append(m)
        converged.append(bool(stats["converged"]))
        iterations.append(stats["iterations"])
        log.info(
            "weight decay %g: validation %s (%d iterations, converged %s)", wd, m, stats["iterations"], converged[-1]
        )
    eligible = [i for i in range(len(grid)) if converged[i]]
    if not eligible:
        raise InfluenceError(
            f"no weight decay of {grid} converged (largest gradient entry <= {grad_tol:g}) within {max_iter} "
            "iterations on the fit rows: raise max_iter or grad_tol"
        )
    best = min(eligible, key=lambda i: losses[i])
    if min(range(len(grid)), key=lambda i: losses[i]) != best:
        log.warning("an unconverged weight decay had a lower validation loss than the chosen one: raise max_iter")
    at_edge = best in (grid.index(min(grid)), grid.index(max(grid))) and len(grid) > 1
    if at_edge:
        log.warning("the chosen weight decay %g lies on the grid's edge %s: widen the grid", grid[best], grid)
    return {
        "grid": grid,
        "validation_loss": losses,
        "validation_metrics": metrics,
        "converged": converged,
        "iterations": iterations,
        "chosen": grid[best],
        "chosen_index": best,
        "at_grid_edge": bool(at_edge),
        "validation_fraction": float(validation_fraction),
        "n_fit": int(len(fit_rows)),
        "n_validation": int(len(val_rows)),
        "seconds": time.perf_counter() - t0,
    }


def _cached_model(path: Path, model, selection: bool = False) -> dict | None:
    """Load the model saved at `path` into `model` and return its training stats and, with `selection`, the weight
    decay selection's record ({"training", "weight_decay_selection"}); None (retrain) if it is corrupt."""
    try:
        tensors, meta = load_tensors(path, require_checksum=True, fix="the model is retrained")
    except CorruptFileError as e:
        log.warning("%s", e)
        return None
    if selection and "weight_decay_selection" not in meta:
        log.warning("%s carries no weight decay selection: the model is retrained", path)
        return None
    model.load_state_dict(tensors)
    log.info("reusing tabular model %s", path)
    return {k: json.loads(meta[k]) for k in ("training", "weight_decay_selection") if k in meta}


def is_auto_weight_decay(weight_decay) -> bool:
    """True for "auto" (chosen on held-out loss); False for a number; InfluenceError for anything else."""
    if isinstance(weight_decay, str) and weight_decay.strip().lower() == "auto":
        return True
    try:
        float(weight_decay)
    except (TypeError, ValueError):
        raise InfluenceError(f"weight_decay must be a number or 'auto', got {weight_decay!r}") from None
    return False


def build_tabular(
    name: str,
    output_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    hidden: list[int] | None = None,
    activation: str | None = None,
    weight_decay: float | str | None = None,
    max_iter: int = 5000,
    grad_tol: float | None = None,
    weight_decay_grid: list[float] | None = None,
    validation_fraction: float = 0.2,
) -> TabularProblem:
    """Data, task and trained float64 model for `name` (reused from the cache when its fingerprint matches).

    `weight_decay="auto"`: chosen by `select_weight_decay` on a seeded `validation_fraction` of the training rows
    over `weight_decay_grid` (default `WEIGHT_DECAY_GRID`), then the model is trained on all training rows with it;
    `info["weight_decay"]` is the chosen value and `info["weight_decay_selection"]` the record. A number (or None,
    the task's default) trains with that weight decay, as before."""
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
    auto = is_auto_weight_decay(spec["weight_decay"])
    train, test = load_arrays(name, test_fraction, seed)
    kind = spec["kind"]
    task = _task_for(kind)
    settings = {
        "name": name,
        "hidden": hidden,
        "activation": spec["activation"],
        "weight_decay": "auto" if auto else float(spec["weight_decay"]),
        "seed": seed,
        "test_fraction": test_fraction,
        "max_iter": max_iter,
        "grad_tol": grad_tol,
        "n_train": int(train["x"].shape[0]),
        "format": 1,
    }
    if auto:  # only then: the fingerprints of fixed weight decays (and their cached models) are unchanged
        grid = [float(w) for w in (WEIGHT_DECAY_GRID if weight_decay_grid is None else weight_decay_grid)]
        settings.update({"weight_decay_grid": grid, "validation_fraction": float(validation_fraction)})
    key = fingerprint(settings)
    model = _new_model(seed, train["x"].shape[1], hidden, _out_dim(kind, train), spec["activation"])
    path = Path(output_dir) / "models" / "tabular" / f"{name}-{key}.safetensors" if output_dir is not None else None
    cached = _cached_model(path, model, selection=auto) if path is not None and path.exists() else None
    if cached is None:
        cached = _fit(name, kind, task, model, train, spec, settings, path)
    stats, selection = cached["training"], cached.get("weight_decay_selection")
    model.eval()
    info = {
        **settings,
        "weight_decay": selection["chosen"] if auto else settings["weight_decay"],
        "training": stats,
        "train_metrics": _metrics(kind, model, task, train),
        "test_metrics": _metrics(kind, model, task, test),
        "fingerprint": key,
    }
    if auto:
        info["weight_decay_selection"] = selection
    return TabularProblem(name=name, task=task, model=model, train=train, test=test, info=info)


def _fit(name: str, kind: str, task, model: MLP, train: dict, spec: dict, settings: dict, path: Path | None) -> dict:
    """Train `model` (choosing its weight decay first when the settings say "auto") and save it to `path`."""
    selection = None
    if settings["weight_decay"] == "auto":
        selection = select_weight_decay(
            kind,
            train,
            settings["weight_decay_grid"],
            hidden=settings["hidden"],
            activation=settings["activation"],
            seed=settings["seed"],
            validation_fraction=settings["validation_fraction"],
            max_iter=settings["max_iter"],
            grad_tol=settings["grad_tol"],
        )
        log.info(
            "%s: weight decay %g chosen on held-out loss over %s in %.1fs",
            name,
            selection["chosen"],
            selection["grid"],
            selection["seconds"],
        )
    wd = selection["chosen"] if selection else float(settings["weight_decay"])
    stats = _train(model, task, train, wd, settings["max_iter"], settings["grad_tol"])
    log.info(
        "trained %s MLP %s in %.1fs (%d iterations, largest gradient entry %.2g)",
        name,
        settings["hidden"],
        stats["seconds"],
        stats["iterations"],
        stats["grad_max"],
    )
    meta = {"training": json.dumps(stats), "settings": json.dumps(settings)}
    if selection:
        meta["weight_decay_selection"] = json.dumps(selection)
    if path is not None:
        save_tensors(path, model.state_dict(), meta)
    out = {"training": stats}
    if selection:
        out["weight_decay_selection"] = selection
    return out


def measurements(model: MLP, task, queries: dict) -> torch.Tensor:
    """(Q,) the measurement f on each query row separately: the accuracy study's f, the task's loss on the point."""
    with torch.no_grad():
        out = model(queries["x"])
        return torch.stack(
            [task.measurement(out[j : j + 1], {k: v[j : j + 1] for k, v in queries.items()}) for j in range(len(out))]
        ).double()


def subset_masks(n_rows: int, n_subsets: int, fraction: float, seed: int) -> torch.Tensor:
    """(S, N) bool: each row marks round(fraction·N) training rows drawn without replacement (seeded)."""
    k = round(fraction * n_rows)
    if not 0.0 < fraction <= 1.0 or k < 1:
        raise InfluenceError(f"fraction must lie in (0, 1] and keep at least one of {n_rows} rows, got {fraction}")
    if n_subsets < 1:
        raise InfluenceError(f"n_subsets must be >= 1, got {n_subsets}")
    g = torch.Generator().manual_seed(int(seed))
    masks = torch.zeros(n_subsets, n_rows, dtype=torch.bool)
    for s in range(n_subsets):
        masks[s, torch.randperm(n_rows, generator=g)[:k]] = True
    return masks


def retrain_on_subsets(
    problem: TabularProblem | str,
    n_subsets: int,
    fraction: float = 0.5,
    seed: int = 0,
    queries: dict | None = None,
    *,
    output_dir: str | Path | None = None,
    vary_init: bool = False,
    record: dict | None = None,
    **build_options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LDS's retraining reference: (masks (S, N_train) bool, outputs (S, Q) float64).

    Model s is retrained from scratch on the training rows `masks[s]` (`subset_masks`: round(fraction·N) rows,
    seeded by `seed`) with the problem's architecture, weight decay (the chosen one under "auto") and optimizer
    settings, to the same `grad_tol` (InfluenceError otherwise), from the original model's seeded initialization
    (`vary_init`: seed + 1 + s instead); outputs[s, q] is its f on query row q (`measurements`: the loss on the
    point). `queries` ({"x", "y"} rows; default every test row) is the caller's choice. `problem` is a built
    TabularProblem, or a task name built by `build_tabular(name, output_dir=output_dir, **build_options)`.
    With `output_dir` the result is cached under `<output_dir>/models/tabular/retrain/` by a fingerprint of the
    model, its training rows, the queries and these settings. `record`, if given, is filled with the per-subset
    seconds, iterations and largest gradient entries, the subset size and whether the cache was used."""
    if isinstance(problem, str):
        problem = build_tabular(problem, output_dir=output_dir, **build_options)
    elif build_options:
        raise InfluenceError(f"build options {sorted(build_options)} apply to a task name, not a built problem")
    queries = problem.test if queries is None else queries
    info = problem.info
    n = problem.train["x"].shape[0]
    masks = subset_masks(n, n_subsets, fraction, seed)
    settings = {
        "model": info["fingerprint"],
        "train": tensors_sha256(problem.train),
        "queries": tensors_sha256({k: queries[k] for k in ("x", "y")}),
        "n_subsets": int(n_subsets),
        "fraction": float(fraction),
        "seed": int(seed),
        "vary_init": bool(vary_init),
        "format": 1,
    }
    path = None
    if output_dir is not None:
        path = (
            Path(output_dir) / "models" / "tabular" / "retrain" / f"{problem.name}-{fingerprint(settings)}.safetensors"
        )
    cached = _cached_retrains(path, masks) if path is not None and path.exists() else None
    if cached is not None:
        outputs, stats = cached
    else:
        outputs, stats = _retrain(problem, masks, queries, vary_init)
        if path is not None:
            save_tensors(
                path,
                {"masks": masks.to(torch.uint8), "outputs": outputs},
                {"stats": json.dumps(stats), "settings": json.dumps(settings)},
            )
    if record is not None:
        record.update(stats, subset_size=int(masks[0].sum()), cached=cached is not None)
    return masks, outputs


def _retrain(problem: TabularProblem, masks: torch.Tensor, queries: dict, vary_init: bool):
    info, kind = problem.info, TASKS[problem.name]["kind"]
    stats = {"seconds": [], "iterations": [], "grad_max": []}
    outputs = torch.empty(masks.shape[0], queries["x"].shape[0], dtype=torch.float64)
    t0 = time.perf_counter()
    for s, mask in enumerate(masks):
        subset = {k: v[mask] for k, v in problem.train.items()}
        init = int(info["seed"]) + (1 + s if vary_init else 0)
        model = _new_model(
            init, subset["x"].shape[1], info["hidden"], _out_dim(kind, problem.train), info["activation"]
        )
        st = _train(model, problem.task, subset, float(info["weight_decay"]), int(info["max_iter"]), info["grad_tol"])
        outputs[s] = measurements(model, problem.task, queries)
        for k in stats:
            stats[k].append(st[k])
    log.info(
        "%s: retrained on %d subsets of %d rows in %.1fs (%.2fs each)",
        problem.name,
        len(masks),
        int(masks[0].sum()),
        time.perf_counter() - t0,
        (time.perf_counter() - t0) / len(masks),
    )
    return outputs, stats


def _cached_retrains(path: Path, masks: torch.Tensor):
    """(outputs, stats) saved at `path`; None (retrain) if the file is corrupt or its masks differ."""
    try:
        tensors, meta = load_tensors(path, require_checksum=True, fix="the subsets are retrained")
    except CorruptFileError as e:
        log.warning("%s", e)
        return None
    if not torch.equal(tensors["masks"].bool(), masks):
        log.warning("%s holds other subsets: they are retrained", path)
        return None
    log.info("reusing retrained subsets %s", path)
    return tensors["outputs"], json.loads(meta["stats"])
