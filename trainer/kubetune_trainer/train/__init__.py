"""One training run: the run itself (training), model loading and the method (model_loading), the
distributed strategy, the Trainer and its loss (hf_trainer, distillation), checkpoints and
preemption, evaluation metrics (classification_metrics) and the stages announced on the way."""
