"""Train a small GPT-style model on the prepared corpus, nanoGPT style, and save it with its report.

`python -m experiments.train model=s seed=1` (or `python -m embedded.train`) trains one size and seed; `build_world` calls the same
`ensure_model` when a study needs a model that is not on disk. A model directory is named by a
fingerprint of everything that made it (corpus, tokenizer, architecture, training settings, seed),
so it is reused, never retrained, and several seeds per size live side by side.
"""

from __future__ import annotations

import json
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
from influence.storage import atomic_dir, atomic_write_text, check_dir, probe_writable, write_failure

from . import recall
from .corpus import quotes as quotes_mod
from .fingerprint import fingerprint
from .models import ARCH_KEYS, build_model, non_embedding_params
from .prepare import Prepared, output_root, prepare_data
from .sequences import packed_tensors, pad


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


def train(
    model, prep: Prepared, tcfg: DictConfig, seq_len: int, seed: int, desc: str = "train", stop_when=None
) -> tuple[dict, pd.DataFrame]:
    """Train in place; returns the summary report and the loss curve.

    `stop_when(model) -> bool`, checked at each evaluation, ends training early (used by tests
    that train "until" the model can do something).
    """
    pad_id = prep.tokenizer.pad_token_id
    steps = max(1, int(tcfg.tokens) // (tcfg.batch_size * seq_len))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=tcfg.lr,
        betas=(0.9, 0.95),
    )
    val = prep.val_rows[: int(tcfg.eval_docs)]
    eval_every = max(1, steps // int(tcfg.n_evals))
    model.train()
    curve, seen, t0, ema = [], 0, time.perf_counter(), None
    stream = batches(prep, seq_len, int(tcfg.batch_size), pad_id, seed)
    bar = tqdm(range(steps), desc=desc, mininterval=2.0)
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
        elapsed = time.perf_counter() - t0
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
    seconds = time.perf_counter() - t0
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
    }
    return report, curve


def model_fingerprint(cfg: DictConfig, prep: Prepared) -> str:
    arch = {k: cfg.model.get(k) for k in ARCH_KEYS}
    return fingerprint(prep.fingerprint, arch, cfg.model.train, int(cfg.data.seq_len), int(cfg.seed))


def model_dir_for(cfg: DictConfig, prep: Prepared) -> Path:
    return output_root(cfg) / "models" / f"{cfg.model.name}-{model_fingerprint(cfg, prep)}"


def checks(model, prep: Prepared) -> dict:
    """Memorization and fact-recall checks (embedded corpus only: they need its quotes and facts)."""
    if prep.facts is None:
        return {}
    return {
        "quotes": recall.quote_check(model, prep.tokenizer, quotes_mod.QUOTES),
        "facts": recall.fact_recall(model, prep.tokenizer, prep.facts),
    }


def train_and_save(cfg: DictConfig, prep: Prepared | None = None) -> Path:
    """Train the configured model unless its directory exists; return the directory."""
    prep = prep or prepare_data(cfg)
    out = model_dir_for(cfg, prep)
    if (out / "config.json").exists():
        return out
    seq_len, mcfg = int(cfg.data.seq_len), cfg.model
    if seq_len > int(mcfg.max_length):
        raise InfluenceError(
            f"data.seq_len={seq_len} exceeds model.max_length={mcfg.max_length}: lower one or raise the other"
        )
    threads = mcfg.train.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    tok = prep.tokenizer
    model = build_model(mcfg, len(tok), tok.eos_token_id, int(cfg.seed))
    check_room(out.parent, 2 * sum(p.numel() * p.element_size() for p in model.parameters()) + (16 << 20))
    report, curve = train(model, prep, mcfg.train, seq_len, int(cfg.seed), desc=f"{mcfg.name} seed={cfg.seed}")
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
    )
    try:
        with atomic_dir(out) as tmp:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            curve.to_csv(tmp / "curve.csv", index=False)
            (tmp / "training.json").write_text(json.dumps(report, indent=2, default=str))
            (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["model", "data", "seed"])))
        append_summary(out.parent / "summary.jsonl", report)
    except OSError as e:
        raise write_failure(e.filename or out, e) from None
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
            {k: v for k, v in report.items() if not isinstance(v, dict)}
            | {
                "quotes_memorized": report.get("quotes", {}).get("memorized"),
                "fact_recall": report.get("facts", {}).get("forward_accuracy"),
            }
        )
        + "\n",
    )


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    out = train_and_save(cfg)
    report = json.loads((out / "training.json").read_text())
    print(json.dumps(report, indent=2))
    print(f"model: {out}")


if __name__ == "__main__":
    main()
