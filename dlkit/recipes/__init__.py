"""Recipes: the frozen dataclass, its registry and presets, and precision rules; pure Python."""
