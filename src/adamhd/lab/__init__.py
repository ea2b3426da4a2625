"""The lab: an honest, reproducible test of AdamHD's claims on language-model pre-training.

One job per module:
  data        corpora, the split by works, tokenisers, caching, batches
  model       the GPT-2-style decoder
  optimizers  the registry of entrants and the CLI's `name:key=value` specs
  train       one run (schedule, clipping, evaluation, metrics, checkpoints, resume)
  evaluate    loss / perplexity, weight statistics, magnitude pruning
  stats       mean and 95% t-interval over seeds, paired differences, verdicts
  claims      the paper's four claims measured on saved runs
  report      report.md / report.html and their PNG figures
  compare     `adamhd compare`: every entrant on every seed, then the report
  sweep       `adamhd sweep`: a hyperparameter grid
"""
