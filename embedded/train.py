"""Train a small GPT-style model on the prepared corpus, nanoGPT style, and save it with its report.

`python -m experiments.train model=s seed=1` (or `python -m embedded.train`) trains one size and seed; `build_world` calls the same
`ensure_model` when a study needs a model that is not on disk. A model directory is named by a
fingerprint of everything that made it (corpus, tokenizer, architecture, training settings, seed),
so it is reused, never retrained, and several seeds per size live side by side.

Training survives a kill: every `model.train.checkpoint_every_s` seconds (default 60; 0: after every step; null:
never) the whole training state (weights, AdamW moments, step, tokens seen, loss EMA, curve so far, RNG, segment
timings) is written atomically, with its checksum, to `<model dir>.checkpoint/`, and the same command resumes from
it: the batch stream is deterministic per seed and epoch, so it is fast-forwarded to the step, and the final model
is bit-identical to an uninterrupted run's. The checkpoint is keyed by the model's fingerprint (its directory
name), removed once the model is saved, and ignored with a warning when it is corrupt or from another run.

After training, `embedded.doc_losses` scores every training document alone (loss per token) into
`doc_losses.csv` and training.json's `doc_losses` block: what the model did not learn.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from pathlib import Path

import hydra
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from influence.errors import InfluenceError
from influence.storage import (
    CorruptFileError,
    atomic_dir,
    atomic_write_text,
    check_dir,
    load_tensors,
    probe_writable,
    remove_stale_temporaries,
    save_tensors,
    write_failure,
)

from . import doc_losses, recall
from .corpus import quotes as quotes_mod
from .fingerprint import fingerprint
from .models import ARCH_KEYS, build_model, non_embedding_params
from .prepare import Prepared, output_root, prepare_data
from .sequences import packed_tensors, pad

log = logging.getLogger(__name__)

#: `model.train` keys that do not change the trained weights: left out of the model's fingerprint
UNFINGERPRINTED = ("checkpoint_every_s", "doc_loss_max_docs")
#: seconds between training checkpoints when `model.train.checkpoint_every_s` is not set
CHECKPOINT_EVERY_S = 60.0
#: the file in `<model dir>.checkpoint/` that holds the training state
CHECKPOINT_FILE = "state.safetensors"
#: the layout of that file (a checkpoint of another layout is not resumed)
CHECKPOINT_VERSION = 1
_RESTART = "training starts again from step 0"


def lr_at(step: int, total: int, tcfg: DictConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr (a small final step size, near an optimum)."""
    warm = max(1, int(tcfg.warmup * total))
    if step < warm:
        return tcfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return tcfg.lr * (tcfg.min_lr_ratio + (1 - tcfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def lm_loss(model, ids: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over real tokens (padding sits at row ends, so no attention mask is needed)."""
    logits = model(input_ids=ids).logits[:, :-1]
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction=reduction
    )


@torch.no_grad()
def eval_loss(model, rows: list[list[int]], pad_id: int, batch_size: int = 64) -> float:
    """Mean per-token loss over rows (each row scored on its own, from position 0)."""
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(rows), batch_size):
        ids, mask = pad(rows[s : s + batch_size], pad_id)
        total += lm_loss(model, ids, mask, reduction="sum").item()
        count += int(mask[:, 1:].sum())
    model.train()
    return total / max(count, 1)


def batches(prep: Prepared, seq_len: int, batch_size: int, pad_id: int, seed: int):
    """Endless stream of (ids, mask) batches: one freshly shuffled packing of the corpus per epoch."""
    epoch = 0
    while True:
        rng = random.Random(f"{seed}:epoch:{epoch}")
        if prep.mode == "documents":
            ids, mask = packed_tensors(prep.train_rows, seq_len, pad_id, rng)
        else:
            ids, mask = pad(prep.train_rows, pad_id, seq_len)
            perm = list(range(len(ids)))
            rng.shuffle(perm)
            ids, mask = ids[perm], mask[perm]
        for s in range(0, len(ids) - batch_size + 1, batch_size):
            yield epoch, ids[s : s + batch_size], mask[s : s + batch_size]
        epoch += 1


def _optimizer(model, tcfg: DictConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=tcfg.lr,
        betas=(0.9, 0.95),
    )


def train(
    model,
    prep: Prepared,
    tcfg: DictConfig,
    seq_len: int,
    seed: int,
    desc: str = "train",
    stop_when=None,
    checkpoint: Path | None = None,
    key: str = "",
) -> tuple[dict, pd.DataFrame]:
    """Train in place; returns the summary report and the loss curve.

    `stop_when(model) -> bool`, checked at each evaluation, ends training early (used by tests
    that train "until" the model can do something).

    With `checkpoint` (a directory), the training state is saved there every `tcfg.checkpoint_every_s` seconds
    (and after the last step, if that long has passed), and a state found there is resumed from: the model
    and AdamW state, step, tokens seen, EMA, curve, RNG and timings, with the batch stream fast-forwarded to the
    step. `key` names the run the checkpoint belongs to (a state saved under another key is not resumed).
    """
    pad_id = prep.tokenizer.pad_token_id
    steps = max(1, int(tcfg.tokens) // (tcfg.batch_size * seq_len))
    opt = _optimizer(model, tcfg)
    val = prep.val_rows[: int(tcfg.eval_docs)]
    eval_every = max(1, steps // int(tcfg.n_evals))
    every_s = tcfg.get("checkpoint_every_s", CHECKPOINT_EVERY_S)
    identity = {
        "version": CHECKPOINT_VERSION,
        "key": key,
        "steps": steps,
        "seq_len": int(seq_len),
        "batch_size": int(tcfg.batch_size),
        "seed": int(seed),
    }
    model.train()
    start, curve, seen, ema, prior_s, segments = 0, [], 0, None, 0.0, []
    if checkpoint is not None:
        state = _resume(Path(checkpoint), identity, model, tcfg)
        if state is not None:
            opt = state.pop("opt")
            start, curve, seen, ema = state["step"], state["curve"], state["seen"], state["ema"]
            prior_s, segments = state["seconds"], state["segments"]
    threads = torch.get_num_threads()
    stream = batches(prep, seq_len, int(tcfg.batch_size), pad_id, seed)
    for _ in range(start):  # deterministic per seed and epoch: skip the batches already trained on
        next(stream)
    t0 = last_save = time.perf_counter()
    bar = tqdm(range(start, steps), desc=desc, mininterval=2.0, initial=start, total=steps)
    for step in bar:
        epoch, ids, mask = next(stream)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, tcfg)
        loss = lm_loss(model, ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        seen += int(mask.sum())
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        elapsed = prior_s + time.perf_counter() - t0
        bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{seen / elapsed:.0f}", epoch=epoch)
        row = {
            "step": step + 1,
            "tokens": seen,
            "seconds": round(elapsed, 3),
            "lr": opt.param_groups[0]["lr"],
            "train_loss": loss.item(),
        }
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            row["val_loss"] = eval_loss(model, val, pad_id)
        curve.append(row)
        if "val_loss" in row and stop_when is not None:
            if stop_when(model):
                break
            model.train()
        if checkpoint is not None and _checkpoint_due(step + 1, time.perf_counter() - last_save, every_s):
            now = time.perf_counter()
            segment = {"from_step": start, "to_step": step + 1, "seconds": round(now - t0, 3), "threads": threads}
            state = {"step": step + 1, "curve": curve, "seen": seen, "ema": ema, "seconds": prior_s + now - t0}
            _save_checkpoint(Path(checkpoint), model, opt, identity | state | {"segments": segments + [segment]})
            last_save = time.perf_counter()
    seconds = prior_s + time.perf_counter() - t0
    segments = segments + [
        {"from_step": start, "to_step": len(curve), "seconds": round(time.perf_counter() - t0, 3), "threads": threads}
    ]
    model.eval()
    curve = pd.DataFrame(curve)
    evals = curve.dropna(subset=["val_loss"])
    late = evals[evals["step"] >= 0.8 * steps]
    tail_drop = float(late["val_loss"].iloc[0] - late["val_loss"].iloc[-1]) if len(late) > 1 else float("nan")
    report = {
        "steps": len(curve),
        "tokens_seen": seen,
        "epochs": round(seen / max(1, sum(map(len, prep.train_rows))), 3),
        "train_seconds": round(seconds, 1),
        "tokens_per_second": round(seen / seconds, 1),
        "final_train_loss_ema": round(ema, 4),
        "heldout_loss": round(float(evals["val_loss"].iloc[-1]), 4),
        "heldout_loss_drop_last_20pct": round(tail_drop, 4),
        "train_docs_loss": round(eval_loss(model, prep.train_rows[: int(tcfg.eval_docs)], pad_id), 4),
        "resumed_from_step": [s["from_step"] for s in segments[1:]],
        "segments": segments,
    }
    return report, curve


def checkpoint_dir_for(out: Path) -> Path:
    """Where the training state of the model to be saved in `out` is checkpointed (beside it, same fingerprint)."""
    return out.with_name(out.name + ".checkpoint")


def _checkpoint_due(step: int, since_last_s: float, every_s) -> bool:
    """Whether to checkpoint after `step` steps, `since_last_s` seconds after the last checkpoint (or the start)."""
    return every_s is not None and since_last_s >= float(every_s)


def _save_checkpoint(directory: Path, model, opt, state: dict) -> None:
    """The training state in one tensor file, written atomically with the checksum of everything it holds (the
    JSON part travels as bytes in a tensor, so the checksum covers it too). A failed write is a warning: training
    goes on and the previous checkpoint stays."""
    tensors = {f"model/{k}": v.detach().clone() for k, v in model.state_dict().items()}
    opt_sd = opt.state_dict()
    scalars = {}
    for i, entry in opt_sd["state"].items():
        for name, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"opt/{i}/{name}"] = v.detach().clone()
            else:
                scalars[f"{i}/{name}"] = v
    tensors["rng/torch"] = torch.get_rng_state()
    blob = json.dumps(state | {"param_groups": opt_sd["param_groups"], "opt_scalars": scalars}).encode()
    tensors["state/json"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / CHECKPOINT_FILE, tensors, {"step": state["step"], "key": state["key"]})
    except (InfluenceError, OSError) as e:
        log.warning("could not save the training checkpoint (%s): training goes on without it", e)


def _resume(directory: Path, identity: dict, model, tcfg: DictConfig) -> dict | None:
    """Restore the checkpoint in `directory` into `model` and return its state with the restored optimizer under
    "opt"; None (with a warning, the model untouched) when there is none, or it is corrupt or from another run."""
    path = directory / CHECKPOINT_FILE
    if directory.exists():
        remove_stale_temporaries(directory)  # checkpoint writes cut off by a kill
    if not path.exists():
        return None
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        tensors, _ = load_tensors(path, require_checksum=True, fix=_RESTART)
        state = json.loads(bytes(tensors.pop("state/json").numpy()).decode())
        other = {k: (state.get(k), v) for k, v in identity.items() if state.get(k) != v}
        if other:
            raise CorruptFileError(path, f"was written by another run (saved, expected: {other})", _RESTART)
        model.load_state_dict({k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")})
        entries: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt/"):
                _, i, name = k.split("/", 2)
                entries.setdefault(int(i), {})[name] = v
        for k, v in state.pop("opt_scalars").items():
            i, name = k.split("/", 1)
            entries.setdefault(int(i), {})[name] = v
        groups = state.pop("param_groups")
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        opt = _optimizer(model, tcfg)
        opt.load_state_dict({"state": entries, "param_groups": groups})
        torch.set_rng_state(tensors["rng/torch"])
    except (CorruptFileError, ValueError, KeyError, TypeError, RuntimeError) as e:
        model.load_state_dict(snapshot)
        reason = str(e) if isinstance(e, CorruptFileError) else f"{path} cannot be resumed ({e}): {_RESTART}"
        log.warning("%s", reason.splitlines()[0])
        path.unlink(missing_ok=True)
        return None
    threads = state["segments"][-1]["threads"] if state["segments"] else None
    if threads is not None and threads != torch.get_num_threads():
        log.warning(
            "%s was trained with %d threads and resumes with %d: the result may differ from an uninterrupted run "
            "in the last bits (set model.train.threads)",
            path,
            threads,
            torch.get_num_threads(),
        )
    log.info(
        "resuming %s from step %d of %d (%s)", identity["key"] or "training", state["step"], identity["steps"], path
    )
    return state | {"opt": opt}


def model_fingerprint(cfg: DictConfig, prep: Prepared) -> str:
    """Hash of what makes the weights: corpus, architecture, training settings (less UNFINGERPRINTED), seed."""
    arch = {k: cfg.model.get(k) for k in ARCH_KEYS}
    tcfg = OmegaConf.to_container(cfg.model.train, resolve=True)
    tcfg = {k: v for k, v in tcfg.items() if k not in UNFINGERPRINTED}
    return fingerprint(prep.fingerprint, arch, tcfg, int(cfg.data.seq_len), int(cfg.seed))


def model_dir_for(cfg: DictConfig, prep: Prepared) -> Path:
    return output_root(cfg) / "models" / f"{cfg.model.name}-{model_fingerprint(cfg, prep)}"


def checks(model, prep: Prepared) -> dict:
    """Memorization and fact-recall checks (embedded corpus only: they need its quotes and facts)."""
    if prep.facts is None:
        return {}
    m = prep.meta
    translated = m.loc[
        (m["category"] == "multilingual") & m.get("fact_id", pd.Series(index=m.index)).notna(), "fact_id"
    ]
    return {
        "quotes": recall.quote_check(model, prep.tokenizer, quotes_mod.QUOTES),
        "facts": recall.fact_recall(model, prep.tokenizer, prep.facts),
        "cross_lingual_facts": recall.cross_lingual_recall(model, prep.tokenizer, prep.facts, set(translated)),
    }


def train_and_save(cfg: DictConfig, prep: Prepared | None = None) -> Path:
    """Train the configured model unless its directory exists; return the directory.

    A checkpoint left by an interrupted run of the same configuration is resumed from (see the module's doc)."""
    prep = prep or prepare_data(cfg)
    out = model_dir_for(cfg, prep)
    ckpt = checkpoint_dir_for(out)
    if (out / "config.json").exists():
        if ckpt.exists():  # cut off between saving the model and removing its checkpoint
            shutil.rmtree(ckpt, ignore_errors=True)
        return out
    seq_len, mcfg = int(cfg.data.seq_len), cfg.model
    if seq_len > int(mcfg.max_length):
        raise InfluenceError(
            f"data.seq_len={seq_len} exceeds model.max_length={mcfg.max_length}: lower one or raise the other"
        )
    threads = mcfg.train.get("threads")
    if threads:
        torch.set_num_threads(int(threads))  # set before resuming too: a resumed run keeps the configured count
    tok = prep.tokenizer
    model = build_model(mcfg, len(tok), tok.eos_token_id, int(cfg.seed))
    checkpointing = mcfg.train.get("checkpoint_every_s", CHECKPOINT_EVERY_S) is not None
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # the model twice (weights + its temporary), and the checkpoint (weights + 2 AdamW moments) with its temporary
    check_room(out.parent, (2 + 6 * checkpointing) * weights + (16 << 20))
    report, curve = train(
        model,
        prep,
        mcfg.train,
        seq_len,
        int(cfg.seed),
        desc=f"{mcfg.name} seed={cfg.seed}",
        checkpoint=ckpt if checkpointing else None,
        key=out.name,
    )
    t = time.perf_counter()
    losses, doc_table = doc_losses.report(
        model, prep, mcfg.train.get("doc_loss_max_docs", doc_losses.DEFAULT_MAX_DOCS), int(cfg.seed)
    )
    losses["seconds"] = round(time.perf_counter() - t, 1)
    report = (
        {
            "name": out.name,
            "model": mcfg.name,
            "seed": int(cfg.seed),
            "non_embedding_params": non_embedding_params(model),
            "total_params": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads(),
            "train_rows": len(prep.train_rows),
            "corpus_tokens": sum(map(len, prep.train_rows)),
        }
        | report
        | checks(model, prep)
        | {"doc_losses": losses}
    )
    try:
        with atomic_dir(out) as tmp:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            curve.to_csv(tmp / "curve.csv", index=False)
            doc_table.to_csv(tmp / "doc_losses.csv", index=False)
            (tmp / "training.json").write_text(json.dumps(report, indent=2, default=str))
            (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["model", "data", "seed"])))
        append_summary(out.parent / "summary.jsonl", report)
    except OSError as e:
        raise write_failure(e.filename or out, e) from None
    shutil.rmtree(ckpt, ignore_errors=True)  # the model is saved: its checkpoint is no longer needed
    return out


def check_room(directory: Path, need: int) -> None:
    """Refuse to start work whose result cannot be saved: `directory` must be writable with `need` bytes free."""
    try:
        probe_writable(directory)
    except OSError as e:
        raise write_failure(directory, e) from None
    free = shutil.disk_usage(directory).free
    if free < need:
        raise InfluenceError(
            f"{directory} has {free / 2**20:.0f} MiB free but the trained model needs about {need / 2**20:.0f} MiB: "
            "free disk space or choose another paths.output_dir before training"
        )


def load_trained_model(out: Path):
    """The trained model saved in `out`, in eval mode, after checking its files against their checksums."""
    check_dir(out, f"delete {out} to train the model again")
    try:
        return AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).float().eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise InfluenceError(
            f"{out} holds no loadable model ({str(e).splitlines()[0]}): delete it to train the model again"
        ) from None


def append_summary(path: Path, report: dict) -> None:
    """One line per trained model, rewritten atomically so the summary is never half-written."""
    old = path.read_text() if path.exists() else ""
    atomic_write_text(
        path,
        old
        + json.dumps(
            {k: v for k, v in report.items() if not isinstance(v, dict) and k != "segments"}
            | {
                "quotes_memorized": report.get("quotes", {}).get("memorized"),
                "fact_recall": report.get("facts", {}).get("forward_accuracy"),
                "doc_loss_median": report.get("doc_losses", {}).get("overall", {}).get("q50"),
                "unlearned_docs": report.get("doc_losses", {}).get("unlearned_count"),
            }
        )
        + "\n",
    )


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    train_and_print(cfg)


def train_and_print(cfg: DictConfig) -> Path:
    """The training commands' work: train (or reuse) the configured model and print its report and directory."""
    out = train_and_save(cfg)
    print(json.dumps(json.loads((out / "training.json").read_text()), indent=2))
    print(f"model: {out}")
    return out


if __name__ == "__main__":
    main()
