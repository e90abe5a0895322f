"""`python -m experiments.train model=s seed=1`: train one embedded model (the code is `embedded.train`)."""

from embedded.train import main

if __name__ == "__main__":
    main()
