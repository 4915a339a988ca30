"""Training: the optimizer, the train and eval steps, checkpoints, the time budget, metrics and
the loop that ties them together (`training.trainer.train_and_evaluate`)."""
