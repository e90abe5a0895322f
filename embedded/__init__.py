"""The embedded world: a generated corpus, its tokenizer, small GPT models trained on it, the tabular tasks.

Nothing here knows about studies or the pipeline; `embedded.world.build_world(cfg)` is what they use.
"""
