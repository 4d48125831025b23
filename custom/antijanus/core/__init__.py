"""The guidance core (pure PyTorch): Perp-Neg, view regions, SDS, D-SDS score clipping and the
one score-distillation guidance path that combines them over a backbone."""
