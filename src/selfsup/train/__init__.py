"""Training building blocks: learning-rate and momentum schedules (:mod:`.schedules`), optimizers
with LARS and no weight decay on norms/biases (:mod:`.optim`), and pickle-free checkpoints
(:mod:`.checkpoint`). The loop itself lives in :mod:`.loop`; nothing is imported here so that
importing one building block never pulls in the others.
"""
