"""Prompt work (pure PyTorch + transformers/diffusers): BERT-PMI prompt debiasing (D-SDS) and
diffusion-negative sampling / prompting with a captioner."""
