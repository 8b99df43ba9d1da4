"""Knowledge distillation: losses, the `stage=distill` teacher -> student stage, model profiles."""
