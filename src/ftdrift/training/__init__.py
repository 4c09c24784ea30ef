"""One fine-tuning job: the recipe (stages: data, model, trainer, train, evaluate, save), its
monitor, its resumable work folder, and the prediction path shared with the validator."""
