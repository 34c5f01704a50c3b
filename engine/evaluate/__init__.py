"""Before/after on held-out rows: the split, the text metrics, and the scoring of base and adapter."""
