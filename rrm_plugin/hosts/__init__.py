"""Adapters for host frameworks (ViT-Prisma, TransformerLens)."""

