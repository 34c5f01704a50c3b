"""Trained adapters at inference time: hosting them on one base, batching their requests, serving recipes.

Imports the top of `engine/` and engine/model; never jobs/ or ui/.
"""
