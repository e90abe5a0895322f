"""Run in a subprocess by the scan tests: a deterministic scan of a tiny model into a given directory."""

import resource
import signal
import sys

import torch

from influence import InfluenceError, LanguageModelTask, fit_curvature
from influence.scan import scan

from .tiny import neox, query_batch, token_data


def setup(n=2400):
    torch.set_num_threads(1)
    model, task = neox(vocab=64, hidden=16, inter=32, dtype=torch.float32), LanguageModelTask()
    data = token_data(n, 24, vocab=64)
    curv = fit_curvature(model, task, {k: v[:64] for k, v in data.items()})
    return model, task, curv, query_batch(3, 5, 3, vocab=64), data


def run(out_dir, chunk_batches=2, **kw):
    model, task, curv, q, data = setup()
    return scan(model, task, curv, q, data, out_dir, batch_size=8, chunk_batches=chunk_batches, progress=False, **kw)


if __name__ == "__main__":
    out, mode = sys.argv[1], sys.argv[2]
    if mode == "fsize":  # a tiny file-size limit: writes fail with EFBIG instead of the default SIGXFSZ kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))  # the manifest fits, a 20-batch chunk does not
        try:
            run(out, chunk_batches=20)
        except InfluenceError as e:
            print(f"ERROR {e}")
            sys.exit(3)
    else:
        run(out)
