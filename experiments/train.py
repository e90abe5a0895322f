"""`python -m experiments.train model=s seed=1`: train one embedded model (the code is `embedded.train`).

The Hydra entry point is defined here rather than imported from `embedded.train`: Hydra resolves `config_path`
from the module that defines the decorated function, and run from this module it would look for a `conf` package."""

import hydra
from omegaconf import DictConfig

from embedded.train import train_and_print


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    train_and_print(cfg)


if __name__ == "__main__":
    main()
