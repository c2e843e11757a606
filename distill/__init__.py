"""Consistent ensemble distillation: data, seeded augmentation, logit store, training."""
