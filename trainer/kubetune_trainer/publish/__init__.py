"""Publishing a model version: its directory and manifest (artifacts), the model card (model_card)
and the loss plot (loss_plot)."""
